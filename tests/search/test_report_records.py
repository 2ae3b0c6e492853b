"""The report's records: fronts, hypervolume, exit distributions, device mappings, comparisons."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from evaluators.costs import path_costs
from search.report._compare import ReportError, compare_runs
from search.report._details import device_mapping, exit_distribution
from search.report._records import (
    get_hypervolume_info,
    get_pareto_front_info,
    get_predicted_measured,
)
from search.rundir import RunFolderError, config_from_json, load_run
from tests.search import _fake_run as fake

# error, macs. Trial 2 is dominated by 0; trial 3 is infeasible (it would dominate); trial 5
# belongs to the random strategy and must not count for the main front. Scale over the feasible
# rows of both strategies: error 0.02..0.12 (span 0.1), macs 300..800 (span 500).
HAND_ROWS = [
    {"obj_error": 0.10, "obj_macs": 500.0, "feasible": True},
    {"obj_error": 0.15, "obj_macs": 900.0, "feasible": False},
    {"obj_error": 0.12, "obj_macs": 600.0, "feasible": True},
    {"obj_error": 0.01, "obj_macs": 100.0, "feasible": False},
    {"obj_error": 0.05, "obj_macs": 800.0, "feasible": True},
    {"obj_error": 0.02, "obj_macs": 300.0, "feasible": True, "strategy": "random"},
]


@pytest.fixture()
def hand_run(tmp_path: Path) -> Path:
    return Path(fake.write_custom_run(tmp_path / "hand", HAND_ROWS))


def test_front_of_hand_made_run(hand_run: Path) -> None:
    info = get_pareto_front_info(load_run(hand_run))
    main, other = info.strategies
    assert (main.strategy, other.strategy) == ("pymoo_nsga2", "random")
    assert main.trial[main.front].tolist() == [0, 4]
    assert other.trial[other.front].tolist() == [5]
    np.testing.assert_array_equal(main.front, main.front_2d)
    assert info.cost == "macs"
    assert [r.label for r in info.backbone] == [
        "backbone alone on mcu"
    ]  # first == last on these objectives


def test_hypervolume_of_hand_made_run(hand_run: Path) -> None:
    run = load_run(hand_run)
    hv = get_hypervolume_info(run, get_pareto_front_info(run))
    assert hv.scale is not None
    np.testing.assert_allclose(hv.scale.reference, [0.02 + 1.1 * 0.1, 300 + 1.1 * 500])
    main = hv.curves[0]
    # scaled: trial 0 (0.8, 0.4), trial 4 (0.3, 1.0), reference (1.1, 1.1):
    # 0.3 * 0.7 = 0.21, then + 0.8 * 0.1 - 0.3 * 0.1 = 0.26
    np.testing.assert_allclose(main.hypervolume, [0.21, 0.21, 0.21, 0.21, 0.26])
    assert main.evaluations.tolist() == [1, 2, 3, 4, 5]
    np.testing.assert_allclose(hv.curves[1].hypervolume, [1.1 * 1.1])  # trial 5 is the ideal
    assert run.summary["hypervolume"] == pytest.approx({"pymoo_nsga2": 0.26, "random": 1.21})


def test_report_hypervolume_does_not_need_the_summary(tmp_path: Path) -> None:
    with_hv = load_run(fake.write_fake_run(tmp_path / "a", seed=5, evaluated=False))
    without = load_run(
        fake.write_fake_run(tmp_path / "b", seed=5, evaluated=False, hypervolume=False)
    )
    assert "hypervolume" in with_hv.summary and "hypervolume" not in without.summary
    curves = [get_hypervolume_info(r, get_pareto_front_info(r)).curves for r in (with_hv, without)]
    for a, b in zip(*curves, strict=True):
        np.testing.assert_array_equal(a.hypervolume, b.hypervolume)
        assert a.hypervolume[-1] == pytest.approx(with_hv.summary["hypervolume"][a.strategy])


@pytest.mark.parametrize(
    "objectives",
    [("error", "macs"), ("error", "macs", "energy"), ("error", "latency", "macs", "energy")],
)
def test_fronts_and_hypervolume_agree_with_independent_checks(
    tmp_path: Path, objectives: tuple[str, ...]
) -> None:
    run = load_run(
        fake.write_fake_run(tmp_path / "run", seed=11, objectives=objectives, evaluated=False)
    )
    info = get_pareto_front_info(run)
    hv = get_hypervolume_info(run, info)
    for points, curve in zip(info.strategies, hv.curves, strict=True):
        rows = run.trials.set_index("trial").loc[points.trial]
        np.testing.assert_array_equal(
            points.front, rows["pareto"].to_numpy()
        )  # fixture's O(n^2) loop
        assert np.all(np.diff(curve.hypervolume) >= 0)
        assert hv.scale is not None
        feasible = points.values[points.feasible]
        assert curve.hypervolume[-1] == pytest.approx(hv.scale.hypervolume(feasible))
        assert curve.hypervolume[-1] == pytest.approx(run.summary["hypervolume"][points.strategy])
    if len(objectives) == 2:
        np.testing.assert_array_equal(info.strategies[0].front, info.strategies[0].front_2d)


def test_exit_distribution_labels_and_nulls(tmp_path: Path) -> None:
    config = {
        "exits": [
            {"candidate": 1, "head": 0, "threshold": 0.9},
            {"candidate": 3, "head": 1, "threshold": 0.8},
        ],
        "boundaries": [6, 6],
        "metric": "max_softmax",
    }
    row = {
        "obj_error": 0.1,
        "obj_macs": 10.0,
        "feasible": True,
        "config": json.dumps(config),
        "exit_fractions": "[0.5, 0.0, 0.5]",
        "exit_accuracy": "[0.96, null, 0.9]",
    }
    run = load_run(fake.write_custom_run(tmp_path / "exits", [row]))
    dist = exit_distribution(run, run.trials.iloc[0])
    assert dist.labels == ("pool1 (linear, t=0.9)", "pool2 (mlp, t=0.8)", "final classifier")
    np.testing.assert_allclose(dist.fractions, [0.5, 0.0, 0.5])
    assert dist.accuracy[0] == pytest.approx(0.96) and np.isnan(dist.accuracy[1])


@pytest.mark.parametrize("boundaries", [(2, 4), (0, 6), (3, 3), (6, 6), (0, 0)])
def test_device_mapping_matches_cost_model(tmp_path: Path, boundaries: tuple[int, int]) -> None:
    config = {
        "exits": [{"candidate": 2, "head": 1, "threshold": 0.7}],
        "boundaries": list(boundaries),
        "metric": "max_softmax",
    }
    row = {
        "obj_error": 0.1,
        "obj_macs": 10.0,
        "feasible": True,
        "config": json.dumps(config),
        "exit_fractions": "[0.3, 0.7]",
        "exit_accuracy": "[0.9, 0.97]",
    }
    run = load_run(fake.write_custom_run(tmp_path / "map", [row]))
    mapping = device_mapping(run, run.trials.iloc[0])
    costs = fake.backbone_costs()
    assert [s.macs for s in mapping.segments] == costs.segment_macs.tolist()
    eenn = config_from_json(json.dumps(config), where="test")
    assert [s.device for s in mapping.segments] == [eenn.device_of_segment(j) for j in range(6)]
    assert mapping.exits[0].position == float(costs.segment_macs[:3].sum())
    assert [link.used for link in mapping.links] == [b <= 5 for b in boundaries]
    # Bytes on the links against the cost model: with free compute and 1 J per byte, a sample that
    # runs to the end costs exactly the bytes it sends.
    plat = fake.platform()
    bytes_only = dataclasses.replace(
        plat,
        devices=tuple(
            dataclasses.replace(d, energy_per_mac_j=0.0, static_power_w=0.0) for d in plat.devices
        ),
        links=tuple(dataclasses.replace(link, energy_per_byte_j=1.0) for link in plat.links),
    )
    expected = path_costs(eenn, costs, bytes_only).energy_j[-1]
    assert sum(link.n_bytes or 0.0 for link in mapping.links) == pytest.approx(expected)


def test_link_bytes_use_sender_bits(tmp_path: Path) -> None:
    config = {"exits": [], "boundaries": [2, 4], "metric": "max_softmax"}
    row = {"obj_error": 0.1, "obj_macs": 10.0, "feasible": True, "config": json.dumps(config)}
    run = load_run(fake.write_custom_run(tmp_path / "bits", [row]))
    ble, wifi = device_mapping(run, run.trials.iloc[0]).links
    cands = run.summary["candidates"]
    assert (ble.sender, ble.tensor, ble.n_bytes) == (
        "mcu",
        "pool1",
        cands[1]["bytes_int8"],
    )  # int8 MCU
    assert (wifi.sender, wifi.tensor, wifi.n_bytes) == (
        "gateway",
        "pool2",
        cands[3]["bytes_fp32"] / 2,
    )


def test_predicted_measured_pairs(tmp_path: Path) -> None:
    run = load_run(fake.write_fake_run(tmp_path / "ev", seed=2))
    pairs = {(p.predicted_column, p.measured_column) for p in get_predicted_measured(run)}
    assert pairs == {
        ("predicted_accuracy", "measured_accuracy_val"),
        ("predicted_accuracy", "measured_accuracy_test"),
        ("predicted_macs", "measured_macs"),
    }
    run = load_run(fake.write_fake_run(tmp_path / "noev", seed=2, evaluated=False))
    assert get_predicted_measured(run) == ()


def test_comparison_uses_common_reference_and_chosen_points(tmp_path: Path) -> None:
    a = load_run(fake.write_fake_run(tmp_path / "a", seed=1, objectives=("error", "macs")))
    b = load_run(
        fake.write_fake_run(tmp_path / "b", seed=2, objectives=("error", "energy", "macs"))
    )
    info = compare_runs([a, b])
    assert info.objectives == ("error", "macs") and info.cost == "macs"
    union = pd.concat([r.trials[r.trials["feasible"]][["obj_error", "obj_macs"]] for r in (a, b)])
    assert info.scale is not None
    np.testing.assert_array_equal(info.scale.ideal, union.min().to_numpy())
    np.testing.assert_array_equal(info.scale.nadir, union.max().to_numpy())
    for run, record in zip((a, b), info.runs, strict=True):
        main = run.trials[run.trials["strategy"] == run.strategy]
        values = main[main["feasible"]][["obj_error", "obj_macs"]].to_numpy()
        assert record.hypervolume == pytest.approx(info.scale.hypervolume(values))
        assert record.chosen is not None and record.chosen.trial == run.summary["chosen_trial"]
    assert any("left out (b: energy)" in n for n in info.notes)
    # a run compared with itself is on its own scale: its summary.json value
    alone = compare_runs([a, a])
    assert [r.hypervolume for r in alone.runs] == pytest.approx(
        [a.summary["hypervolume"][a.strategy]] * 2)


def test_comparison_without_shared_cost_is_one_line_error(tmp_path: Path) -> None:
    a = load_run(fake.write_fake_run(tmp_path / "a", seed=1, objectives=("error", "macs")))
    b = load_run(fake.write_fake_run(tmp_path / "b", seed=2, objectives=("error", "energy")))
    with pytest.raises(ReportError, match=r"share no cost objective") as err:
        compare_runs([a, b])
    assert "\n" not in str(err.value) and "a: ['error', 'macs']" in str(err.value)


def test_not_a_run_folder_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        RunFolderError,
        match=r"empty is not a finished run folder: missing trials.parquet, summary.json",
    ):
        load_run(tmp_path / "empty")
    with pytest.raises(RunFolderError, match=r"nowhere does not exist"):
        load_run(tmp_path / "nowhere")
    run = fake.write_fake_run(tmp_path / "broken", seed=0)
    (run / "summary.json").write_text(json.dumps({"objectives": ["error", "latency"]}))
    with pytest.raises(RunFolderError, match=r"lacks columns \['obj_latency'\]"):
        load_run(run)


def test_pareto_figure_opens_on_the_feasible_region(tmp_path: Path) -> None:
    """The accuracy axis spans the feasible points and the backbone, not a 0.25-1 strip."""
    from search.report._figures import pareto_figure

    info = get_pareto_front_info(load_run(fake.write_fake_run(tmp_path / "r", seed=3)))
    lo, hi = pareto_figure(info).layout.yaxis.range
    feasible = np.concatenate([p.accuracy[p.feasible] for p in info.strategies])
    backbone = [r.accuracy for r in info.backbone]
    assert lo <= min(feasible.min(), *backbone) and hi >= max(feasible.max(), *backbone)
    everything = np.concatenate([p.accuracy for p in info.strategies])
    assert lo > everything.min()  # infeasible, far less accurate points are one zoom away
