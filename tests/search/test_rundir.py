"""The run-folder contract: a real run read back by the report and the comparison, Pareto flags
and the one hypervolume against hand-computed cases, and the schema version check."""

from __future__ import annotations

import io
import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_module
from numpy.typing import NDArray
from rich.console import Console

from search import rundir
from search.report.__main__ import main as report_main
from search.report._compare import compare_runs
from search.report._records import get_hypervolume_info, get_pareto_front_info
from search.rundir import (
    RunFolderError,
    config_from_json,
    front_mask,
    hypervolume_curve,
    hypervolume_scale,
    hypervolumes,
    load_run,
    pareto_flags,
)
from tests.search import _fake_run as fake
from tests.search._datasets import shared_cache

# --- a real run, read back -----------------------------------------------------------------------

# tiny mode grown until the accuracy constraint leaves feasible and infeasible points; the data,
# model and heads are test_evaluate's, so one session trains them once (shared cache)
TINY = ["+debug=tiny", "data.splits.train=600", "data.splits.val=200", "data.splits.test=200",
        "model.train.epochs=5", "model.train.batch_size=32", "heads.epochs=4",
        "search.budget=40", "search.population=12", "constraints.max_accuracy_drop=0.05"]


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    from search.run import run

    cache = shared_cache(tmp_path_factory)
    with initialize_config_module(config_module="conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*TINY, f"cache_dir={cache}"])
    out = run(cfg, run_dir=tmp_path_factory.mktemp("rundir") / "run",
              console=Console(file=io.StringIO()), progress=False)
    return out.run_dir, out


@pytest.mark.slow
def test_real_run_round_trips_through_report_and_comparison(real_run: tuple[Path, object]
                                                            ) -> None:
    run_dir, _ = real_run
    raw = json.loads((run_dir / rundir.SUMMARY_JSON).read_text())
    assert next(iter(raw)) == "schema_version" and raw["schema_version"] == rundir.SCHEMA_VERSION
    run = load_run(run_dir)
    assert run.config is not None and run.chosen is not None
    summary, trials = run.summary, run.trials
    assert set(trials["strategy"]) == {"pymoo_nsga2", "random", "manual"}
    main = run.strategy
    assert trials["feasible"].any() and not trials["feasible"].all()  # both cases exercised
    # fronts: the report's per strategy are the writer's pareto column; pareto.csv is the main's
    front = get_pareto_front_info(run)
    for points in front.strategies:
        stored = trials.set_index("trial").loc[points.trial, "pareto"].to_numpy(dtype=bool)
        np.testing.assert_array_equal(points.front, stored)
    pareto_csv = pd.read_csv(run_dir / rundir.PARETO)
    main_points = front.strategies[0]
    assert main_points.strategy == main
    assert sorted(pareto_csv["trial"]) == sorted(main_points.trial[main_points.front])
    assert summary["chosen_trial"] == run.chosen["trial"] == front.chosen_trial
    # hypervolume: the report's curve ends at summary.json's value, on summary.json's scale
    hv = get_hypervolume_info(run, front)
    assert hv.scale is not None
    assert list(hv.scale.reference) == summary["hypervolume_reference"]
    assert list(hv.scale.ideal) == summary["hypervolume_ideal"]
    assert list(hv.scale.nadir) == summary["hypervolume_nadir"]
    finals = {c.strategy: float(c.hypervolume[-1]) for c in hv.curves}
    assert finals == pytest.approx(summary["hypervolume"], rel=1e-12, abs=0)
    assert summary["hypervolume"][main] > 0
    assert f"{main} {summary['hypervolume'][main]:.6g}" in (run_dir / rundir.REPORT).read_text()
    # the comparison of the run with itself: same front, same hypervolume
    info = compare_runs([run, run])
    assert info.objectives == run.objectives
    main_front = main_points.values[main_points.front]
    for record in info.runs:
        assert sorted(record.front) == sorted(map(tuple, main_front.tolist()))
        assert record.hypervolume == pytest.approx(summary["hypervolume"][main], rel=1e-12, abs=0)


# --- Pareto flags and the hypervolume by hand ----------------------------------------------------


def _frame(rows: list[tuple[str, float, float, bool]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["strategy", "obj_error", "obj_macs", "feasible"])


# strategy a: (0.1, 5) and (0.2, 3) on the front, (0.2, 6) dominated, (0.05, 1) infeasible,
# (0.1, 5) again (equal points are both on the front); strategy b: (0.3, 1) alone.
HAND = _frame([("a", 0.1, 5.0, True), ("a", 0.2, 3.0, True), ("a", 0.2, 6.0, True),
               ("a", 0.05, 1.0, False), ("b", 0.3, 1.0, True), ("a", 0.1, 5.0, True)])


def test_pareto_flags_by_hand() -> None:
    assert pareto_flags(HAND, ["error", "macs"]).tolist() == [True, True, False, False, True, True]
    assert pareto_flags(HAND.iloc[:0], ["error", "macs"]).tolist() == []
    values = HAND[["obj_error", "obj_macs"]].to_numpy()
    assert front_mask(values, np.zeros(len(HAND), dtype=bool)).tolist() == [False] * len(HAND)


def test_hypervolume_by_hand() -> None:
    # feasible points of both strategies: error 0.1..0.3 (span 0.2), macs 1..6 (span 5)
    scale = hypervolume_scale([HAND], ["error", "macs"])
    assert scale is not None
    assert scale.ideal == (0.1, 1.0) and scale.nadir == (0.3, 6.0)
    assert scale.reference == pytest.approx((0.1 + 1.1 * 0.2, 1.0 + 1.1 * 5))
    # scaled a: (0, 0.8), (0.5, 0.4), (0.5, 1.0); b: (1, 0); reference (1.1, 1.1)
    # a: 1.1 * 0.3 + 0.6 * 0.4 = 0.57; b: 0.1 * 1.1 = 0.11
    values, ref = hypervolumes(HAND, ["error", "macs"])
    assert values == pytest.approx({"a": 0.57, "b": 0.11})
    assert ref == pytest.approx(list(scale.reference))
    a = HAND[HAND["strategy"] == "a"]
    curve = hypervolume_curve(a[["obj_error", "obj_macs"]].to_numpy(),
                              a["feasible"].to_numpy(), scale)
    np.testing.assert_allclose(curve, [0.33, 0.57, 0.57, 0.57, 0.57])
    # the comparison's common scale is the union's: adding a far point rescales
    other = _frame([("a", 0.0, 11.0, True), ("a", 0.5, 100.0, False)])
    common = hypervolume_scale([HAND, other], ["error", "macs"])
    assert common is not None and common.ideal == (0.0, 1.0) and common.nadir == (0.3, 11.0)


def test_hypervolume_edge_cases() -> None:
    nothing = HAND.assign(feasible=False)
    assert hypervolume_scale([nothing], ["error", "macs"]) is None
    assert hypervolumes(nothing, ["error", "macs"]) == ({"a": 0.0, "b": 0.0}, [])
    summary = rundir.hypervolume_summary(nothing, ["error", "macs"])
    assert summary["hypervolume_reference"] is None and summary["hypervolume"] == {"a": 0.0,
                                                                                   "b": 0.0}
    # one value shared by every feasible point: span 1, the point sits at the ideal
    flat = _frame([("a", 0.2, 7.0, True), ("a", 0.1, 7.0, True)])
    scale = hypervolume_scale([flat], ["error", "macs"])
    assert scale is not None and scale.reference == pytest.approx((0.21, 8.1))
    assert scale.hypervolume(flat[["obj_error", "obj_macs"]].to_numpy()) == pytest.approx(1.21)


def _grid_hypervolume(points: NDArray[np.float64], ref: NDArray[np.float64]) -> float:
    """Exact dominated volume by coordinate compression (independent of pymoo)."""
    axes = [np.unique(np.append(points[:, j], ref[j])) for j in range(points.shape[1])]
    total = 0.0
    for cell in itertools.product(*(range(len(a) - 1) for a in axes)):
        low = np.array([a[i] for a, i in zip(axes, cell, strict=True)])
        if np.any(np.all(points <= low, axis=1)):
            total += float(np.prod([a[i + 1] - a[i] for a, i in zip(axes, cell, strict=True)]))
    return total


@pytest.mark.parametrize("seed", [0, 1])
def test_hypervolume_matches_an_independent_computation(seed: int) -> None:
    rng = np.random.default_rng(seed)
    objectives = ["error", "macs", "energy"]
    frame = pd.DataFrame(rng.uniform(0, [1, 1e6, 1e-3], size=(14, 3)),
                         columns=[f"obj_{o}" for o in objectives])
    frame["strategy"], frame["feasible"] = "s", rng.uniform(size=14) < 0.8
    scale = hypervolume_scale([frame], objectives)
    assert scale is not None
    feasible = frame.loc[frame["feasible"], [f"obj_{o}" for o in objectives]].to_numpy()
    scaled = (feasible - np.asarray(scale.ideal)) / scale.span
    expected = _grid_hypervolume(scaled, np.full(3, rundir.HV_REFERENCE))
    assert hypervolumes(frame, objectives)[0]["s"] == pytest.approx(expected, rel=1e-12)


# --- schema version and one-line errors ----------------------------------------------------------


@pytest.mark.parametrize("version", [rundir.SCHEMA_VERSION + 1, "1", 0, True])
def test_unknown_schema_version_is_a_one_line_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], version: object) -> None:
    run_dir = fake.write_fake_run(tmp_path / "run", seed=0, evaluated=False)
    summary = json.loads((run_dir / rundir.SUMMARY_JSON).read_text())
    assert summary["schema_version"] == rundir.SCHEMA_VERSION
    load_run(run_dir)  # the current version reads
    del summary["schema_version"]
    (run_dir / rundir.SUMMARY_JSON).write_text(json.dumps(summary))
    load_run(run_dir)  # so does an unversioned folder (the layout before versioning)
    summary["schema_version"] = version
    (run_dir / rundir.SUMMARY_JSON).write_text(json.dumps(summary))
    with pytest.raises(RunFolderError, match=r"schema_version=") as err:
        load_run(run_dir)
    assert "\n" not in str(err.value) and repr(version) in str(err.value)
    assert report_main([str(run_dir)]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and f"schema_version={version!r}" in lines[0]


def test_bad_config_json_is_a_one_line_error() -> None:
    with pytest.raises(RunFolderError, match=r"trial 7: .* is not an EENN configuration") as err:
        config_from_json('{"exits": [], "boundaries": [1]}', where="trial 7")
    assert "\n" not in str(err.value) and "metric" in str(err.value)
