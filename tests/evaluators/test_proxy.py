"""The bitset proxy against a per-sample oracle and the scalar cost functions."""

from __future__ import annotations

from statistics import NormalDist

import numpy as np
import pytest

from evaluators.costs import device_memory, path_costs
from evaluators.eenn import METRICS, EENNConfig, ExitChoice
from evaluators.proxy import ConfigBatch, ConstraintSpec, ProxyEvaluator, ProxyScores, _wilson
from tests._synthetic import synthetic_costs, synthetic_platform, synthetic_split

C, H, N = 7, 3, 777  # N not a multiple of 64 on purpose


def _random_config(rng: np.random.Generator, grid: dict[str, np.ndarray] | None,
                   n_links: int) -> EENNConfig:
    on = np.flatnonzero(rng.random(C) < 0.5)
    metric = METRICS[int(rng.integers(len(METRICS)))]
    exits = []
    for c in on:
        h = int(rng.integers(H))
        if grid is not None and rng.random() < 0.8:
            t = float(grid[metric][c, h, rng.integers(grid[metric].shape[2])])
        else:
            t = float(rng.random())
        exits.append(ExitChoice(candidate=int(c), head=h, threshold=t))
    bnd = tuple(sorted(int(b) for b in rng.integers(0, C + 2, n_links)))
    return EENNConfig(exits=tuple(exits), boundaries=bnd, metric=metric)


def _oracle(split, cfg: EENNConfig) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample exit index (K = backbone) and correctness, one boolean mask at a time."""
    exit_at = np.full(N, len(cfg.exits))
    conf = split.conf(cfg.metric)
    for k in reversed(range(len(cfg.exits))):
        e = cfg.exits[k]
        exit_at[conf[e.candidate, e.head] >= np.float32(e.threshold)] = k
    heads_ok = [split.head_correct[e.candidate, e.head] for e in cfg.exits] + [split.final_correct]
    ok = np.array([heads_ok[exit_at[i]][i] for i in range(N)])
    return exit_at, ok


@pytest.fixture(scope="module")
def setup():
    split = synthetic_split(n=N, c=C, h=H, seed=1)
    costs = synthetic_costs(c=C, h=H, seed=2)
    platform = synthetic_platform(3)
    grid = {m: np.quantile(split.conf(m), np.linspace(0, 1, 9)[:-1], axis=2,
                           method="lower").transpose(1, 2, 0) for m in METRICS}
    return split, costs, platform, grid


def test_matches_oracle_and_scalar_costs(setup) -> None:
    split, costs, platform, grid = setup
    rng = np.random.default_rng(0)
    configs = [_random_config(rng, grid, 2) for _ in range(60)]
    configs.append(EENNConfig(exits=(), boundaries=(C + 1, C + 1)))
    scores = ProxyEvaluator(split=split, costs=costs, platform=platform,
                            threshold_grid=grid).evaluate(configs)
    for p, cfg in enumerate(configs):
        exit_at, ok = _oracle(split, cfg)
        k = len(cfg.exits)
        counts = np.bincount(exit_at, minlength=k + 1)
        assert scores.accuracy[p] == pytest.approx(ok.mean())
        assert [scores.exit_count[p, e.candidate] for e in cfg.exits] == list(counts[:k])
        assert scores.final_count[p] == counts[k]
        pc = path_costs(cfg, costs, platform)
        assert scores.macs[p] == pytest.approx((counts * pc.macs).sum() / N)
        assert scores.energy_j[p] == pytest.approx((counts * pc.energy_j).sum() / N)
        assert scores.latency_s[p] == pytest.approx((counts * pc.latency_s).sum() / N)
        finish = np.bincount(pc.device, weights=counts, minlength=3) / N
        np.testing.assert_allclose(scores.finish_fraction[p], finish)
        weights, peak = device_memory(cfg, costs, platform)
        np.testing.assert_array_equal(scores.weight_bytes[p], weights)
        np.testing.assert_array_equal(scores.peak_bytes[p], peak)
        disagree = ok != split.final_correct
        assert scores.discordant[p] == disagree.sum()


def test_off_grid_thresholds_equal_grid_path(setup) -> None:
    split, costs, platform, grid = setup
    rng = np.random.default_rng(3)
    configs = [_random_config(rng, grid, 2) for _ in range(40)]
    with_grid = ProxyEvaluator(split=split, costs=costs, platform=platform, threshold_grid=grid)
    without = ProxyEvaluator(split=split, costs=costs, platform=platform)
    a, b = with_grid.evaluate(configs), without.evaluate(ConfigBatch.from_configs(configs))
    np.testing.assert_array_equal(a.exit_count, b.exit_count)
    np.testing.assert_array_equal(a.accuracy, b.accuracy)
    np.testing.assert_allclose(a.energy_j, b.energy_j)


def test_constraints_and_objectives(setup) -> None:
    split, costs, platform, _ = setup
    proxy = ProxyEvaluator(split=split, costs=costs, platform=platform)
    backbone_mcu = EENNConfig(exits=(), boundaries=(C + 1, C + 1))
    backbone_cloud = EENNConfig(exits=(), boundaries=(0, 0))
    everything_exits = EENNConfig(exits=(ExitChoice(candidate=0, head=0, threshold=0.0),),
                                  boundaries=(0, 0))
    mid = EENNConfig(exits=(ExitChoice(candidate=4, head=1, threshold=0.9),), boundaries=(0, 0))
    s = proxy.evaluate([backbone_mcu, backbone_cloud, everything_exits, mid])
    spec = ConstraintSpec(max_accuracy_drop=0.01, confidence=0.95, memory=True,
                          max_latency_s=0.05)
    cv = s.constraints(spec)
    assert spec.names == ("accuracy_drop", "memory", "latency")
    assert cv[0, 0] == cv[1, 0] == -0.01  # nothing leaves early: the drop is exactly 0
    assert cv[2, 0] + 1e-12 >= s.accuracy_drop[2] - 0.01 > 0  # bound never below the observed drop
    assert cv[0, 1] > 0 and cv[1, 1] <= 0  # the backbone does not fit the MCU's memory
    assert cv[0, 2] > 0  # ~10 MMACs at 50 MMAC/s exceeds 50 ms
    f = s.objectives(["error", "macs"])
    assert f[2, 0] > f[0, 0] and f[2, 1] < f[0, 1]
    assert s.accuracy_drop_upper(0.99)[3] > s.accuracy_drop_upper(0.9)[3] > s.accuracy_drop[3]
    with pytest.raises(ValueError, match="objectives"):
        s.objectives(["speed"])
    with pytest.raises(ValueError, match="confidence"):
        ConstraintSpec.from_mapping({"confidence": 1.5})


def test_larger_val_gives_tighter_bound() -> None:
    costs, platform = synthetic_costs(c=C, h=H, seed=2), synthetic_platform(2)
    cfg = EENNConfig(exits=(ExitChoice(candidate=5, head=2, threshold=0.8),), boundaries=(C + 1,))
    gaps = []
    for n in (300, 3000):
        s = ProxyEvaluator(split=synthetic_split(n=n, c=C, h=H, seed=4), costs=costs,
                           platform=platform).evaluate([cfg])
        gaps.append(s.accuracy_drop_upper(0.95)[0] - s.accuracy_drop[0])
    assert gaps[0] > gaps[1] > 0


def test_wrong_platform_is_one_line_error(setup) -> None:
    split, costs, _, _ = setup
    proxy = ProxyEvaluator(split=split, costs=costs, platform=synthetic_platform(2))
    with pytest.raises(ValueError, match="boundaries but platform"):
        proxy.evaluate([EENNConfig(exits=(), boundaries=(1, 2))])


# Newcombe (1998), "Two-sided confidence intervals for the single proportion", Stat. Med. 17,
# Table I, method 3 (Wilson score interval without continuity correction), 95%.
NEWCOMBE = [((81, 263), (0.2553, 0.3662)), ((15, 148), (0.0624, 0.1605)),
            ((0, 20), (0.0, 0.1611)), ((1, 29), (0.0061, 0.1718))]


@pytest.mark.parametrize(("trial", "interval"), NEWCOMBE)
def test_wilson_bounds_match_published_values(trial: tuple[int, int],
                                              interval: tuple[float, float]) -> None:
    k, n = (np.array([float(v)]) for v in trial)
    z = NormalDist().inv_cdf(0.975)
    assert _wilson(k, n, z, -1.0)[0] == pytest.approx(interval[0], abs=5e-5)
    assert _wilson(k, n, z, +1.0)[0] == pytest.approx(interval[1], abs=5e-5)


def _scores(*, n: int, backbone_correct: int, early: list[int], worse: list[int],
            better: list[int]) -> ProxyScores:
    """Scores of P configurations with given early leavers and discordant pairs among them."""
    p, leave = len(early), np.array(early, dtype=np.int64)
    correct = backbone_correct - np.array(worse) + np.array(better)
    at_exit = np.minimum(correct, leave)  # any split of the correct samples between the paths
    zeros = np.zeros(p)
    return ProxyScores(
        n_samples=n, backbone_correct=backbone_correct,
        exit_count=leave[:, None], exit_correct=at_exit[:, None],
        final_count=n - leave, final_correct=correct - at_exit,
        discordant=np.array(worse, dtype=np.int64) + np.array(better, dtype=np.int64),
        macs=zeros, energy_j=zeros, latency_s=zeros, worst_latency_s=zeros,
        finish_fraction=np.zeros((p, 1)), weight_bytes=np.zeros((p, 1), dtype=np.int64),
        peak_bytes=np.zeros((p, 1), dtype=np.int64), memory_ratio=zeros)


@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_accuracy_drop_bound_against_scipy_wilson(confidence: float) -> None:
    """drop_ub = n (U(n01/n) - L(n10/n)) / N, each a Wilson bound at ``confidence`` (scipy's)."""
    from scipy.stats import binomtest

    early, worse, better = [400, 1000, 37, 0], [30, 61, 0, 0], [10, 12, 3, 0]
    s = _scores(n=1000, backbone_correct=900, early=early, worse=worse, better=better)
    np.testing.assert_allclose(s.accuracy_drop, [0.02, 0.049, -0.003, 0.0])
    for p, (n, n01, n10) in enumerate(zip(early, worse, better, strict=True)):
        if n == 0:  # nobody leaves early: the EENN is the backbone, no margin
            assert s.accuracy_drop_upper(confidence)[p] == 0.0
            continue
        upper = binomtest(n01, n).proportion_ci(confidence, method="wilson").high
        lower = binomtest(n10, n).proportion_ci(confidence, method="wilson").low
        want = n * (upper - lower) / 1000
        assert s.accuracy_drop_upper(confidence)[p] == pytest.approx(want, rel=1e-9, abs=1e-12)
        assert want >= s.accuracy_drop[p]


def test_val_too_small_for_the_accuracy_constraint_is_named() -> None:
    """30 val samples: the smallest bound any exit reaches is 0.026 (> 0.01); 80 would do."""
    from evaluators.proxy import ConstraintSpec

    spec = ConstraintSpec(max_accuracy_drop=0.01, confidence=0.95)
    assert spec.smallest_drop_bound(30) == pytest.approx(0.02645, abs=1e-5)
    note = spec.val_size_note(30)
    assert "val has 30 samples" in note and "at least 80 val samples" in note
    assert "constraints.max_accuracy_drop=0.027" in note
    assert spec.val_size_note(80) == "" and spec.val_size_note(79) != ""
