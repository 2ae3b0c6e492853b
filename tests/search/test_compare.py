"""The comparison of runs: finding runs, groups over seeds, labels, attainment surfaces,
hypervolumes on one scale, rank tests, axes, the JSON records and bad input.

The sweep here is synthetic (tests/search/_fake_run.py: real cost model, random accuracies),
2 configurations x 5 seeds in Hydra's multirun layout; test_compare_sweep.py does the same with
real runs of search.run.
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import mannwhitneyu

from search.report import ReportError, compare_runs, find_runs, write_comparison
from search.report.__main__ import main
from search.report._attainment import attainment_surfaces, objective_pairs, runs_needed
from search.report._compare_figures import axis_layout, staircase
from search.report._groups import group_runs
from search.rundir import hypervolume_curve, hypervolume_scale, load_run
from tests.search import _fake_run as fake

BACKENDS = ("pymoo_nsga2", "optuna_tpe")
SEEDS = (0, 1, 2, 3, 4)


def write_sweep(root: Path, *, objectives: tuple[str, ...] = ("error", "macs")) -> Path:
    """results/multirun/<time>/<job>/ with 2 backends x 5 seeds (job numbers as Hydra's)."""
    sweep = root / "multirun" / "2026-01-01_00-00-00"
    for job, (b, seed) in enumerate(itertools.product(range(len(BACKENDS)), SEEDS)):
        fake.write_fake_run(sweep / str(job), seed=100 * b + seed, n_trials=30,
                            objectives=objectives, strategies=(BACKENDS[b], "random"),
                            config={"seed": seed, "cache_dir": f"/cache/{job}"})
    return sweep


# --- attainment surfaces against a case computed by hand ----------------------------------------


def brute_force_surface(fronts: list[np.ndarray], need: int) -> set[tuple[float, float]]:
    """The goals reached by at least ``need`` runs, minimal ones only, by enumeration.

    In 2-D every corner of an attainment surface takes its x from one point and its y from
    another, so the candidates are all (x, y) combinations of the fronts' coordinates.
    """
    pts = [p for f in fronts for p in f]
    xs, ys = sorted({p[0] for p in pts}), sorted({p[1] for p in pts})

    def reached(x: float, y: float) -> int:
        return sum(bool(np.any((f[:, 0] <= x) & (f[:, 1] <= y))) for f in fronts if len(f))

    ok = [(x, y) for x in xs for y in ys if reached(x, y) >= need]
    return {(x, y) for x, y in ok
            if not any(u <= x and v <= y and (u, v) != (x, y) for u, v in ok)}


def test_attainment_surfaces_by_hand() -> None:
    # 4 runs, the last with no feasible point: it attains nothing but counts (n = 4)
    fronts = [np.array([[1.0, 5.0], [3.0, 2.0]]),  # A
              np.array([[2.0, 4.0], [4.0, 1.0], [2.5, 4.5]]),  # B (its third point is dominated)
              np.array([[2.0, 3.0]]),  # C
              np.zeros((0, 2))]  # D
    s25, s50, s75 = attainment_surfaces(fronts)
    # 25% of 4 runs: 1 run; the union's non-dominated points ((2, 4) is beaten by C's (2, 3))
    assert (s25.runs_needed, s25.runs_total) == (1, 4)
    assert s25.points == ((1, 5), (2, 3), (3, 2), (4, 1))
    # 50%: 2 runs; minimal goals reached by two runs: B+C at (2, 4), A+C at (3, 3), A+B at (4, 2)
    assert s50.runs_needed == 2 and s50.points == ((2, 4), (3, 3), (4, 2))
    # 75%: 3 runs (A, B and C together): (2, 5), (3, 4), (4, 3); (4, 5) is dominated
    assert s75.runs_needed == 3 and s75.points == ((2, 5), (3, 4), (4, 3))
    for s in (s25, s50, s75):
        assert set(s.points) == brute_force_surface(fronts, s.runs_needed)
    # 100% needs D, which has no point: empty
    assert attainment_surfaces(fronts, percentiles=[100])[0].points == ()
    assert [runs_needed(p, 5) for p in (25, 50, 75)] == [2, 3, 4]  # moocore's rule, 5 runs


def test_staircase_and_pairs() -> None:
    xs, ys = staircase(((1.0, 5.0), (2.0, 3.0)), reference=(10.0, 9.0))
    assert list(zip(xs, ys, strict=True)) == [(1, 9), (1, 5), (2, 5), (2, 3), (10, 3)]
    assert staircase((), reference=(1.0, 1.0)) == ([], [])
    assert objective_pairs(("macs", "error")) == ((0, 1),)
    assert objective_pairs(("error", "macs", "energy")) == ((1, 0), (2, 0), (1, 2))


# --- a sweep of 2 configurations x 5 seeds --------------------------------------------------------


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_sweep(tmp_path_factory.mktemp("cmp"))


def test_sweep_folder_groups_and_labels(sweep: Path) -> None:
    found = find_runs([sweep.parent])  # results/multirun: the sweep below it is found
    assert [r.path.name for r in found.runs] == [str(j) for j in range(10)]  # 2 before 10
    c = compare_runs(found.runs)
    assert [g.label for g in c.groups] == ["search=pymoo_nsga2", "search=optuna_tpe"]
    assert [g.runs for g in c.groups] == [(0, 1, 2, 3, 4), (5, 6, 7, 8, 9)]
    assert [g.seeds for g in c.groups] == [SEEDS, SEEDS]
    assert c.runs[6].label == "search=optuna_tpe, seed=1"
    # the diff holds every differing key; seed and cache_dir do not separate groups
    diff = dict(zip(c.diff.keys, c.diff.ignored, strict=True))
    assert diff == {"seed": True, "search.backend": False, "cache_dir": True}
    assert c.notes == ()
    # a glob names the same runs
    again = find_runs([str(sweep / "*")])
    assert [r.path for r in again.runs] == [r.path for r in found.runs]


def test_hypervolumes_one_scale_and_rank_test_against_scipy(sweep: Path) -> None:
    runs = find_runs([sweep]).runs
    c = compare_runs(runs)
    scale = hypervolume_scale([r.trials for r in runs], ("error", "macs"))
    assert scale is not None and c.scale == scale
    hv = []
    for run, record in zip(runs, c.runs, strict=True):
        main = run.trials[run.trials["strategy"] == run.strategy]
        values = main.loc[main["feasible"], ["obj_error", "obj_macs"]].to_numpy()
        assert record.hypervolume == pytest.approx(scale.hypervolume(values), abs=1e-15)
        hv.append(record.hypervolume)
    a, b = hv[:5], hv[5:]
    for group, sample in zip(c.groups, (a, b), strict=True):
        q25, q50, q75 = np.percentile(sample, [25, 50, 75])
        assert (group.hypervolume.median, group.hypervolume.iqr) == pytest.approx((q50, q75 - q25))
    (test,) = c.tests
    direct = mannwhitneyu(a, b, alternative="two-sided")
    assert (test.a, test.b) == (0, 1)
    assert test.statistic == direct.statistic and test.p_value == direct.pvalue
    by_hand = sum(1.0 if x > y else 0.5 if x == y else 0.0 for x in a for y in b)
    assert test.statistic == by_hand and test.a12 == pytest.approx(by_hand / 25)
    # a run compared with itself is on its own scale: summary.json's value
    alone = compare_runs([runs[0], runs[0]])
    assert alone.runs[0].hypervolume == pytest.approx(
        runs[0].summary["hypervolume"][runs[0].strategy], rel=1e-12)


def test_curves_fronts_and_chosen_points(sweep: Path) -> None:
    runs = find_runs([sweep]).runs
    c = compare_runs(runs)
    curves = []
    for run in runs[:5]:
        main = run.trials[run.trials["strategy"] == run.strategy]
        curves.append(hypervolume_curve(main[["obj_error", "obj_macs"]].to_numpy(),
                                        main["feasible"].to_numpy(), c.scale))
    band = c.groups[0].curve
    assert band.evaluations == tuple(range(1, 31)) and not band.truncated
    np.testing.assert_allclose(band.median, np.median(curves, axis=0))
    assert band.median[-1] == pytest.approx(c.groups[0].hypervolume.median)
    for run, record in zip(runs, c.runs, strict=True):
        assert record.chosen is not None
        assert record.chosen.trial == run.summary["chosen_trial"]
        row = run.trials.set_index("trial").loc[record.chosen.trial]
        assert record.chosen.values == (row["obj_error"], row["obj_macs"])
        assert record.chosen.test_accuracy == pytest.approx(run.chosen["test"]["accuracy"])
        stored = run.trials[(run.trials["strategy"] == run.strategy) & run.trials["pareto"]]
        assert sorted(record.front) == sorted(map(tuple, stored[["obj_error", "obj_macs"]]
                                                  .to_numpy().tolist()))
    # the surfaces are those of the runs' fronts (median: 3 of 5 runs)
    fronts = [np.array(r.front)[:, [1, 0]] for r in c.runs[:5]]
    pair = c.groups[0].attainment[0]
    assert (pair.x, pair.y) == ("macs", "error")
    assert pair.surfaces == attainment_surfaces(fronts)
    assert pair.surfaces[1].runs_needed == 3
    for surface in pair.surfaces:
        assert set(surface.points) == brute_force_surface(fronts, surface.runs_needed)


def test_page_records_json_and_cli(sweep: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(sweep), "--out", str(tmp_path / "cmp.html")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "cmp.html")
    text = (tmp_path / "cmp.html").read_text()
    records = json.loads((tmp_path / "cmp.json").read_text())
    assert len(re.findall(r"plotly\.js v\d+\.\d+\.\d+", text)) == 1  # inlined once
    assert "<script src" not in text  # nothing fetched: opens offline
    for div in ("eenn-compare-eaf", "eenn-compare-hv", "eenn-compare-hv-curve",
                "eenn-compare-fronts", "eenn-compare-tests", "eenn-compare-diff"):
        assert f'id="{div}"' in text
    assert "<details>" in text and "search=optuna_tpe, seed=4" in text
    assert "each run&#x27;s own chosen point" in text
    assert [g["label"] for g in records["groups"]] == ["search=pymoo_nsga2", "search=optuna_tpe"]
    assert records["tests"][0]["statistic"] == compare_runs(
        find_runs([sweep]).runs).tests[0].statistic
    assert set(records["groups"][0]["attainment"][0]["surfaces"][1]) == {
        "percentile", "runs_needed", "runs_total", "points"}


# --- axes ----------------------------------------------------------------------------------------


def _row(error: float, cost: float, feasible: bool = True) -> dict[str, object]:
    return {"obj_error": error, "obj_macs": cost, "accuracy": 1 - error, "feasible": feasible}


def test_log_axis_beyond_a_decade_and_accuracy_zoomed_to_feasible(tmp_path: Path) -> None:
    wide = fake.write_custom_run(tmp_path / "wide", [
        _row(0.10, 1e3), _row(0.05, 1e5), _row(0.5, 1e8, feasible=False)])
    narrow = fake.write_custom_run(tmp_path / "narrow", [_row(0.10, 1e3), _row(0.05, 9e3)])
    c = compare_runs([load_run(wide), load_run(narrow)])
    error, macs = c.axes
    assert (macs.log, macs.low, macs.high) == (True, 1e3, 1e5)  # infeasible 1e8 left out
    assert (error.log, error.low, error.high) == (False, 0.05, 0.10)
    layout = axis_layout(error)
    assert layout["title"] == "accuracy (val)"
    lo, hi = layout["range"]  # type: ignore[misc]
    assert lo == pytest.approx(0.9 - 0.0025) and hi == pytest.approx(0.95 + 0.0025)
    assert axis_layout(macs)["range"] == pytest.approx([3 - 0.1, 5 + 0.1])
    alone = compare_runs([load_run(narrow), load_run(narrow)])
    assert alone.axes[1].log is False  # 1e3 .. 9e3: less than a decade


# --- grouping rules ------------------------------------------------------------------------------


def test_labels_name_config_groups_and_keys(tmp_path: Path) -> None:
    base = {"platform": {"name": "three_tier", "devices": [1, 2, 3]}, "search": {"budget": 100}}
    cases = {
        "a": {**base, "seed": 0},
        "b": {**base, "seed": 1, "device": "cuda"},  # device: ignored, same group as a
        "c": {"platform": {"name": "mcu_fog", "devices": [1, 2]}, "search": {"budget": 100},
              "seed": 0},
        "d": {**base, "search": {"budget": 200}, "seed": 0},
    }
    runs = [load_run(fake.write_fake_run(tmp_path / k, seed=i, config=cfg))
            for i, (k, cfg) in enumerate(cases.items())]
    g = group_runs(runs)
    assert g.group_of_run == (0, 0, 1, 2)
    assert g.group_labels == ("platform=three_tier, search.budget=100",
                              "platform=mcu_fog, search.budget=100",
                              "platform=three_tier, search.budget=200")
    assert g.run_labels[1] == "platform=three_tier, search.budget=100, seed=1"
    assert "platform.devices" in g.diff.keys  # covered by platform=... in labels, not hidden
    # same config and seed twice: the folder name tells them apart
    twins = group_runs([runs[0], load_run(fake.write_fake_run(tmp_path / "a2", seed=0,
                                                             config=cases["a"]))])
    lone = "model=mnist_cnn, platform=three_tier, search=pymoo_nsga2"  # nothing differs
    assert twins.group_labels == (lone,)
    assert twins.run_labels == (f"{lone} (a)", f"{lone} (a2)")


# --- bad input -----------------------------------------------------------------------------------


def test_folder_without_runs_and_unfinished_jobs(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    assert main([str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "empty holds no run (no summary.json or trials" in err
    assert main([str(tmp_path / "nothing-*")]) == 2
    assert "nothing-* matches no folder" in capsys.readouterr().err
    sweep = tmp_path / "sweep"
    fake.write_fake_run(sweep / "0", seed=0)
    fake.write_fake_run(sweep / "1", seed=1)
    (sweep / "2").mkdir()
    fake.write_fake_run(sweep / "2", seed=2)
    (sweep / "2" / "summary.json").unlink()  # a job that never finished
    found = find_runs([sweep])
    assert [r.path.name for r in found.runs] == ["0", "1"]
    assert found.skipped == (f"{sweep / '2'}: not finished (no summary.json or "
                             "trials.parquet yet)",)
    c = compare_runs(found.runs, skipped=found.skipped)
    assert any(n.startswith("Skipped 1 unfinished job(s)") for n in c.notes)
    # named directly, an unfinished run is an error
    assert main([str(sweep / "0"), str(sweep / "2")]) == 2
    assert "2 is not a finished run folder: missing summary.json" in capsys.readouterr().err


def test_no_shared_objectives_is_a_one_line_error(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    a = fake.write_fake_run(tmp_path / "a", seed=1, objectives=("error", "macs"))
    b = fake.write_fake_run(tmp_path / "b", seed=2, objectives=("error", "energy"))
    with pytest.raises(ReportError, match=r"share no cost objective \(a: \['error', 'macs'\]"):
        write_comparison([a, b], out=tmp_path / "never.html")
    assert main([str(a), str(b), "--out", str(tmp_path / "never.html")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert not (tmp_path / "never.html").exists()


def test_different_datasets_get_a_visible_warning(tmp_path: Path) -> None:
    a = fake.write_fake_run(tmp_path / "a", seed=1, config={"data": {"name": "mnist5k"}})
    b = fake.write_fake_run(tmp_path / "b", seed=2, config={"data": {"name": "cifar10"},
                                                            "model": {"name": "resnet18"}})
    out = write_comparison([a, b], out=tmp_path / "cmp.html")
    records = json.loads(out.with_suffix(".json").read_text())
    (note,) = [n for n in records["notes"] if n.startswith("Different datasets")]
    assert "data.name: mnist5k / cifar10" in note and "different validation sets" in note
    assert 'id="eenn-compare-notes"' in out.read_text()
    # labels in the config file's key order (the fixture's YAML is sorted)
    assert [g["label"] for g in records["groups"]] == ["data=mnist5k, model=mnist_cnn",
                                                       "data=cifar10, model=resnet18"]


def test_nothing_feasible_is_said_not_drawn_empty(tmp_path: Path) -> None:
    rows = [_row(0.1, 100.0, feasible=False), _row(0.2, 50.0, feasible=False)]
    a = fake.write_custom_run(tmp_path / "a", rows)
    b = fake.write_custom_run(tmp_path / "b", rows)
    c = compare_runs([load_run(a), load_run(b)])
    assert c.scale is None and [r.hypervolume for r in c.runs] == [0.0, 0.0]
    assert any(n.startswith("No run has a feasible point") for n in c.notes)
    text = write_comparison([a, b], out=tmp_path / "cmp.html").read_text()
    assert "Not drawn: no run has a feasible point." in text
    assert 'id="eenn-compare-eaf"' not in text and 'id="eenn-compare-hv"' in text
    # one of two runs feasible: the other is named, and the median (1 of 2 runs) still drawn
    c2 = compare_runs([load_run(a), load_run(fake.write_custom_run(tmp_path / "ok", [
        _row(0.1, 100.0)]))])
    assert any(n.startswith("No feasible point in") for n in c2.notes)
