"""Certification maths (evaluators.risk) on draws where the truth is known."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from numpy.typing import NDArray
from scipy.stats import binom

from evaluators.eenn import METRICS, EENNConfig, ExitChoice
from evaluators.predictions import SplitPredictions
from evaluators.proxy import ConfigBatch, ConstraintSpec, ProxyEvaluator
from evaluators.risk import (
    GuaranteeSpec,
    calibration_split,
    certifiable_epsilon,
    certification_path,
    certify,
    loss_counts,
    needed_calibration,
)
from evaluators.settings import ConfigError
from tests._synthetic import synthetic_costs, synthetic_platform, synthetic_split

C, H = 5, 2


def _per_sample_loss(split: SplitPredictions, cfg: EENNConfig) -> NDArray[np.bool_]:
    """1 where the backbone is right and the EENN wrong (the EENN simulated sample by sample)."""
    conf = split.head_conf[METRICS.index(cfg.metric)]
    ok = split.final_correct.copy()
    left = np.ones(len(split.labels), dtype=bool)
    for e in cfg.exits:
        leave = left & (conf[e.candidate, e.head] >= np.float32(e.threshold))
        ok[leave] = split.head_correct[e.candidate, e.head][leave]
        left &= ~leave
    return np.asarray(split.final_correct & ~ok, dtype=np.bool_)


@pytest.fixture(scope="module")
def population() -> tuple[SplitPredictions, list[EENNConfig], NDArray[np.bool_]]:
    """A large synthetic table (the "distribution") and a certification path on it."""
    split = synthetic_split(n=40_000, c=C, h=H, seed=3)
    base = EENNConfig(exits=(ExitChoice(candidate=1, head=1, threshold=0.55),
                             ExitChoice(candidate=3, head=0, threshold=0.5)),
                      boundaries=(C + 1, C + 1))
    path = certification_path(base, raises=[(k / 16) ** 2 for k in range(16, -1, -1)])
    losses = np.stack([_per_sample_loss(split, cfg) for cfg in path])
    return split, path, losses


def test_loss_counts_match_the_simulated_eenn(population) -> None:
    split, path, losses = population
    ev = ProxyEvaluator(split=split, costs=synthetic_costs(c=C, h=H, seed=1),
                        platform=synthetic_platform(3))
    s = ev.evaluate(ConfigBatch.from_configs(path))
    counts = loss_counts(discordant=s.discordant, correct=s.exit_correct.sum(1) + s.final_correct,
                         backbone_correct=s.backbone_correct)
    assert counts.tolist() == losses.sum(axis=1).tolist()
    assert counts[0] < counts[-1]  # the path starts at its most conservative end


def _violations(losses: NDArray[np.bool_], *, eps: float, delta: float, n: int, method: str,
                draws: int, seed: int) -> tuple[float, float]:
    """Share of draws certifying a candidate whose true loss exceeds ``eps``: LTT and naive."""
    rng = np.random.default_rng(seed)
    bad = losses.mean(axis=1) > eps
    ltt = naive = 0
    for _ in range(draws):
        k = losses[:, rng.choice(losses.shape[1], size=n, replace=False)].sum(axis=1)
        cert = certify(losses=k, n=n, order=np.arange(len(k)), epsilon=eps, delta=delta,
                       method=method)
        ltt += bool((cert.certified & bad).any())
        naive += bool(((k / n <= eps) & bad).any())
    return ltt / draws, naive / draws


@pytest.mark.parametrize("method", ["fixed_sequence", "bonferroni"])
def test_a_candidate_worse_than_epsilon_is_certified_in_at_most_delta_of_draws(
        population, method) -> None:
    _, _, losses = population
    true = losses.mean(axis=1)
    eps = float(np.sort(true)[len(true) // 2])  # half the path is truly worse than epsilon
    assert (true > eps).sum() >= 5 and (true <= eps).sum() >= 5
    delta, draws = 0.2, 400
    ltt, naive = _violations(losses, eps=eps, delta=delta, n=400, method=method, draws=draws,
                             seed=0)
    slack = 2.5 * math.sqrt(delta * (1 - delta) / draws)
    assert ltt <= delta + slack
    assert naive > delta + slack  # the check can fail: "empirical loss <= eps" breaks it


def test_fixed_sequence_stops_at_the_first_failure() -> None:
    cert = certify(losses=np.array([0, 0, 9, 0]), n=500, order=np.array([0, 1, 2, 3]),
                   epsilon=0.01, delta=0.1, method="fixed_sequence")
    assert cert.certified.tolist() == [True, True, False, False]
    assert cert.tested.tolist() == [True, True, True, False]
    reordered = certify(losses=np.array([0, 0, 9, 0]), n=500, order=np.array([3, 2, 0, 1]),
                        epsilon=0.01, delta=0.1, method="fixed_sequence")
    assert reordered.certified.tolist() == [False, False, False, True]
    assert cert.p_values[0] == pytest.approx(0.99 ** 500)


def test_bonferroni_splits_delta_over_the_candidates() -> None:
    losses = np.array([0, 1, 1])  # p(0) = 0.0066, p(1) = 0.040 at n = 500, eps = 0.01
    cert = certify(losses=losses, n=500, order=np.arange(3), epsilon=0.01, delta=0.1,
                   method="bonferroni")
    assert cert.level == pytest.approx(0.1 / 3)
    assert cert.certified.tolist() == [True, False, False]


def test_needed_calibration_and_certifiable_epsilon() -> None:
    n = needed_calibration(rate=0.002, epsilon=0.01, level=0.1)
    assert n is not None
    assert binom.cdf(math.floor(0.002 * n), n, 0.01) <= 0.1
    assert binom.cdf(math.floor(0.002 * (n - 1)), n - 1, 0.01) > 0.1
    assert needed_calibration(rate=0.01, epsilon=0.01, level=0.1) is None
    eps = certifiable_epsilon(losses=3, n=500, level=0.1)
    assert binom.cdf(3, 500, eps) == pytest.approx(0.1, rel=1e-6)


def test_calibration_split_is_stratified_disjoint_and_seeded() -> None:
    split = synthetic_split(n=1000, c=C, h=H, seed=0)
    search, cal = calibration_split(split, share=0.3, seed=5)
    assert (len(search.labels), len(cal.labels)) == (700, 300)
    for cls in range(10):
        share = (cal.labels == cls).sum() / max((split.labels == cls).sum(), 1)
        assert abs(share - 0.3) < 0.02
    assert search.head_pred.shape == (C, H, 700) and cal.head_conf.shape[-1] == 300
    again, _ = calibration_split(split, share=0.3, seed=5)
    assert np.array_equal(again.labels, search.labels)
    other, _ = calibration_split(split, share=0.3, seed=6)
    assert not np.array_equal(other.head_conf, search.head_conf)


@pytest.mark.parametrize(("cfg", "key"), [
    ({"guarantee": {"method": "fixed_sequence", "epsilon": 1.5}}, "constraints.guarantee.epsilon"),
    ({"guarantee": {"method": "fixed_sequence", "epsilon": 0.0}}, "constraints.guarantee.epsilon"),
    ({"guarantee": {"delta": 1.0}}, "constraints.guarantee.delta"),
    ({"guarantee": {"calibration_share": 1.0}}, "constraints.guarantee.calibration_share"),
    ({"guarantee": {"method": "ltt"}}, "constraints.guarantee.method"),
    ({"max_accuracy_drop": None, "guarantee": {"method": "bonferroni"}},
     "constraints.guarantee.epsilon"),
])
def test_bad_guarantee_settings_are_one_line_errors(cfg, key) -> None:
    with pytest.raises(ConfigError, match=key) as err:
        ConstraintSpec.from_mapping(cfg)
    assert "\n" not in str(err.value)


def test_too_small_a_calibration_share_names_the_share_that_works() -> None:
    spec = ConstraintSpec.from_mapping({"guarantee": {"method": "fixed_sequence"}}).guarantee
    assert spec.epsilon == 0.01  # inherits constraints.max_accuracy_drop
    assert spec.check_sizes(1000) == (500, 500)
    with pytest.raises(ConfigError, match=r"calibration_share>=0\.77") as err:
        spec.check_sizes(300)
    assert "needs at least 230 calibration samples" in str(err.value)
    assert "\n" not in str(err.value)
    bonf = GuaranteeSpec(method="bonferroni", epsilon=0.01, delta=0.1)
    assert bonf.min_calibration > spec.min_calibration  # each test at delta / path length


def test_auto_is_the_default_and_certifies_where_val_allows() -> None:
    spec = ConstraintSpec().guarantee
    assert spec.method == "auto" and not spec.active  # resolved once val's size is known
    on, note = spec.for_val(1000, max_accuracy_drop=0.01)
    assert (on.method, on.epsilon, note) == ("fixed_sequence", 0.01, None)
    assert on.check_sizes(1000) == (500, 500)
    off, note = spec.for_val(300, max_accuracy_drop=0.01)  # 150 calibration samples < 230
    assert off.method == "uncertified" and not off.active
    assert note is not None and "needs at least 230" in note and "\n" not in note
    assert spec.for_val(1000, max_accuracy_drop=None) == (replace(spec, method="uncertified"),
                                                          None)  # no drop to certify
    pinned = GuaranteeSpec(method="fixed_sequence")
    assert pinned.for_val(300, max_accuracy_drop=0.01) == (pinned, None)  # asked: not softened


def test_binomial_test_is_tight_at_the_boundary() -> None:
    """True loss rate just above epsilon: certified in about delta of draws, never more."""
    rng = np.random.default_rng(1)
    eps, delta, n, draws = 0.02, 0.1, 400, 4000
    k = rng.binomial(n, eps * 1.0001, size=draws)
    share = float(np.mean([certify(losses=np.array([ki]), n=n, order=np.array([0]), epsilon=eps,
                                   delta=delta, method="fixed_sequence").certified[0]
                           for ki in k]))
    assert delta / 3 < share <= delta + 2.5 * math.sqrt(delta * (1 - delta) / draws)
