"""The early-exit space: canonical repair, encode/decode round trips, options."""

from __future__ import annotations

import numpy as np
import pytest

from evaluators.eenn import METRICS, EENNConfig, ExitChoice
from spaces.space import EarlyExitSpace, build_space
from tests._synthetic import synthetic_platform, synthetic_split

C, H = 6, 3


@pytest.fixture(scope="module")
def val():
    return synthetic_split(n=500, c=C, h=H, seed=0)


def _space(val, **opts) -> EarlyExitSpace:
    cfg = {"max_exits": 3, "metric": "max_softmax", "thresholds": {"mode": "quantile", "levels": 8}}
    cfg.update(opts)
    return build_space(cfg, val=val, platform=synthetic_platform(3))


def _noisy_genome(space: EarlyExitSpace, rng: np.random.Generator) -> dict:
    """What a sampler may propose: floats, unsorted boundaries, too many exits."""
    g = {}
    for v in space.variables:
        if v.kind == "choice":
            g[v.name] = v.choices[int(rng.integers(len(v.choices)))]
        elif v.kind == "bool":
            g[v.name] = bool(rng.random() < 0.7)
        else:
            g[v.name] = float(rng.uniform(v.low - 0.4, v.high + 0.4))
    return g


@pytest.mark.parametrize("opts", [
    {},
    {"metric": "search"},
    {"thresholds": {"mode": "continuous", "low": 0.2, "high": 1.0}},
    {"thresholds": {"mode": "uniform", "levels": 16}, "devices": ["mcu", "cloud"]},
    {"max_exits": None},
])
def test_repair_is_canonical_and_round_trips(val, opts) -> None:
    space = _space(val, **opts)
    rng = np.random.default_rng(1)
    for _ in range(200):
        g = space.repair(_noisy_genome(space, rng), rng)
        assert space.repair(g) == g  # idempotent
        cfg = space.decode(g)
        assert len(cfg.exits) <= space.max_exits
        assert list(cfg.boundaries) == sorted(cfg.boundaries)
        used = {cfg.device_of_segment(s) for s in range(C + 1)}
        assert used <= set(space.allowed_devices)
        for c in range(C):
            if not g[f"on{c}"]:
                assert g[f"head{c}"] == 0
                assert g[f"thr{c}"] == (0 if space.threshold_grid is not None else
                                        space.threshold_range[0])
        assert space.encode(cfg) == g
        assert space.decode(space.encode(cfg)) == cfg
        if not cfg.exits and len(space.metrics) > 1:
            assert g["metric"] == space.metrics[0]


def test_inactive_genes_make_duplicates_equal(val) -> None:
    space = _space(val)
    base = space.sample(1, np.random.default_rng(0))[0]
    other = dict(base)
    off = next(c for c in range(C) if not base[f"on{c}"])
    other[f"head{off}"], other[f"thr{off}"] = 2, 5
    assert space.key(space.repair(other)) == space.key(base)


def test_grid_levels_follow_val_quantiles(val) -> None:
    space = _space(val)
    grid = space.threshold_grid["max_softmax"]
    assert grid.shape == (C, H, 8)
    assert np.all(np.diff(grid, axis=2) >= 0)
    passing = (val.conf("max_softmax")[:, :, None, :] >= grid[..., None].astype(np.float32))
    frac = passing.mean(axis=3)
    expected = np.broadcast_to((1 - np.arange(8) / 8) ** 2, frac.shape)
    np.testing.assert_allclose(frac, expected, atol=0.02)


def test_allowed_devices_move_segments(val) -> None:
    space = _space(val, devices=["cloud"])
    cfg = space.decode({**space.sample(1, np.random.default_rng(0))[0], "b0": 3, "b1": 5})
    assert cfg.boundaries == (0, 0)  # everything on the last device
    with pytest.raises(ValueError, match="allowed_devices"):
        space.encode(EENNConfig(exits=(), boundaries=(3, 5)))


def test_pinned_boundaries_fix_the_device_mapping(val) -> None:
    space = _space(val, boundaries=[2, 5])
    rng = np.random.default_rng(3)
    configs = [space.decode(space.repair(_noisy_genome(space, rng), rng)) for _ in range(100)]
    configs += [space.decode(g) for g in space.sample(100, rng)]
    assert {c.boundaries for c in configs} == {(2, 5)}
    assert len({c.exits for c in configs}) > 50  # the exits are still searched
    cfg = EENNConfig(exits=(ExitChoice(candidate=1, head=0, threshold=0.5),), boundaries=(2, 5))
    assert space.decode(space.encode(cfg)).boundaries == (2, 5)
    with pytest.raises(ValueError, match="differ from the pinned"):
        space.encode(EENNConfig(exits=(), boundaries=(1, 5)))


@pytest.mark.parametrize(("pinned", "opts", "match"), [
    ([3], {}, "one boundary per link"),
    ([], {}, "one boundary per link"),
    ([5, 2], {}, "must be 2 non-decreasing"),
    ([0, C + 2], {}, "must be 2 non-decreasing"),
    (3, {}, "list of integers"),
    ([1, 4], {"devices": ["cloud"]}, r"outside space.devices \[2\].*\[0, 0\]"),
])
def test_bad_pinned_boundaries_are_one_line_errors(val, pinned, opts, match) -> None:
    with pytest.raises(ValueError, match=match):
        _space(val, boundaries=pinned, **opts)


def test_encode_snaps_and_rejects(val) -> None:
    space = _space(val)
    grid = space.threshold_grid["max_softmax"]
    near = float(grid[2, 1, 5]) + 1e-4
    cfg = EENNConfig(exits=(ExitChoice(candidate=2, head=1, threshold=near),),
                     boundaries=(C + 1, C + 1))
    assert space.decode(space.encode(cfg)).exits[0].threshold == grid[2, 1, 5]
    too_many = EENNConfig(exits=tuple(ExitChoice(candidate=c, head=0, threshold=0.5)
                                      for c in range(4)), boundaries=(1, 2))
    with pytest.raises(ValueError, match="max_exits"):
        space.encode(too_many)
    with pytest.raises(ValueError, match="not searched"):
        space.encode(EENNConfig(exits=(), boundaries=(1, 2), metric="margin"))


def test_sample_covers_exit_counts_and_metrics(val) -> None:
    space = _space(val, metric="search")
    configs = [space.decode(g) for g in space.sample(300, np.random.default_rng(2))]
    assert {len(c.exits) for c in configs} == {0, 1, 2, 3}
    assert {c.metric for c in configs if c.exits} == set(METRICS)


@pytest.mark.parametrize(("opts", "match"), [
    ({"metric": "softmax"}, "space.metric"),
    ({"thresholds": {"mode": "log"}}, "thresholds.mode"),
    ({"devices": ["gpu"]}, "space.devices"),
    ({"bogus": 1}, "unknown space option"),
])
def test_bad_options_are_one_line_errors(val, opts, match) -> None:
    with pytest.raises(ValueError, match=match):
        _space(val, **opts)


def test_quantile_thresholds_sit_between_val_samples(val) -> None:
    """No val confidence lies on a threshold; each level passes the same samples as its quantile."""
    space = build_space({"thresholds": {"mode": "quantile", "levels": 16}}, val=val,
                        platform=synthetic_platform(3))
    grid = space.threshold_grid["max_softmax"]
    conf = val.conf("max_softmax").astype(np.float32)
    q = 1.0 - (1.0 - np.arange(16) / 16) ** 2
    quantile = np.quantile(conf.astype(np.float64), q, axis=2,
                           method="inverted_cdf").transpose(1, 2, 0).astype(np.float32)
    for c in range(grid.shape[0]):
        for h in range(grid.shape[1]):
            for lvl in range(16):
                thr = np.float32(grid[c, h, lvl])
                row = conf[c, h]
                np.testing.assert_array_equal(row >= thr, row >= quantile[c, h, lvl])
                assert not np.any(row == thr) or thr == row.min()


def test_population_repair_matches_row_by_row(val) -> None:
    """Repairing a population at once gives each row what repairing it alone gives."""
    space = _space(val, metric="search", max_exits=2)
    rng = np.random.default_rng(4)
    genomes = [_noisy_genome(space, rng) for _ in range(300)]
    X = space.repair_matrix(space.to_matrix(genomes))
    assert [space.repair(g) for g in genomes] == space.to_genomes(X)
    assert space.keys(space.repair_matrix(X)) == space.keys(X)  # idempotent
    assert [space.decode(g) for g in genomes] == space.configs(X)
    assert (X[:, 0:3 * C:3].sum(axis=1) <= 2).all()  # over max_exits: some exits dropped


def test_equal_threshold_levels_collapse_to_the_first(val) -> None:
    grid = np.broadcast_to(np.array([0.1, 0.5, 0.5, 0.5, 0.9]), (C, H, 5)).copy()
    space = EarlyExitSpace(n_candidates=C, n_heads=H, n_devices=3, max_exits=C,
                           metrics=("max_softmax",), threshold_grid={"max_softmax": grid})
    g = {**space.sample(1, np.random.default_rng(0))[0], "on0": True, "thr0": 3}
    assert space.repair(g)["thr0"] == 1
