"""Measured: a real sweep (search.run.run, 2 configurations x 5 seeds, tiny default at a small
budget) in Hydra's multirun layout, compared by ``python -m search.report <sweep folder>``.

Checks the groups and labels found from the composed configs, the attainment surfaces against
an enumeration of goals (the hand-computed case is in test_compare.py), the hypervolumes against
the run-folder contract's scale, and the rank test against scipy.stats.mannwhitneyu called
directly.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_module
from rich.console import Console
from scipy.stats import mannwhitneyu

from search.report.__main__ import main as report_main
from search.results import guarantee_text
from search.rundir import guarantee_of, hypervolume_scale, load_run
from tests.search._datasets import shared_cache
from tests.search.test_compare import brute_force_surface

# test_rundir's tiny default (600/200/200 samples, 5 backbone epochs), budget 40
TINY = ["+debug=tiny", "data.splits.train=600", "data.splits.val=200", "data.splits.test=200",
        "model.train.epochs=5", "model.train.batch_size=32", "heads.epochs=4",
        "search.budget=40", "search.population=12", "constraints.max_accuracy_drop=0.05"]
BACKENDS = ("pymoo_nsga2", "random")
SEEDS = (0, 1, 2, 3, 4)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from search.run import run

    cache = shared_cache(tmp_path_factory)
    folder = tmp_path_factory.mktemp("multirun") / "2026-01-01_00-00-00"
    job = 0
    for backend in BACKENDS:
        for seed in SEEDS:
            with initialize_config_module(config_module="conf", version_base="1.3"):
                cfg = compose(config_name="config", overrides=[
                    *TINY, f"search={backend}", f"seed={seed}", f"cache_dir={cache}"])
            run(cfg, run_dir=folder / str(job), console=Console(file=io.StringIO()),
                progress=False)
            job += 1
    return folder


@pytest.mark.slow
def test_sweep_of_two_configurations_and_five_seeds(sweep: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cmp.html"
    assert report_main([str(sweep), "--out", str(out)]) == 0, capsys.readouterr().err
    records = json.loads(out.with_suffix(".json").read_text())
    # groups and labels, from the composed configs
    groups = records["groups"]
    assert [g["label"] for g in groups] == ["search=pymoo_nsga2", "search=random"]
    assert [g["runs"] for g in groups] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    assert [r["label"] for r in records["runs"]][5:7] == ["search=random, seed=0",
                                                          "search=random, seed=1"]
    diff = dict(zip(records["diff"]["keys"], records["diff"]["ignored"], strict=True))
    assert diff["seed"] is True and diff["search.backend"] is False
    # the other differing keys are the search group's (its baselines), covered by search=...
    assert all(k.startswith("search.") for k in diff if k != "seed") and len(diff) > 2
    # attainment surfaces of each group's real fronts against an enumeration of goals
    objectives = records["objectives"]
    assert objectives == ["error", "macs", "energy"]
    for g in groups:
        fronts = [np.array(records["runs"][i]["front"]).reshape(-1, 3) for i in g["runs"]]
        assert len(g["attainment"]) == 3  # the pairwise projections of three objectives
        for pair in g["attainment"]:
            x, y = objectives.index(pair["x"]), objectives.index(pair["y"])
            for s in pair["surfaces"]:
                assert s["runs_total"] == 5
                expected = brute_force_surface([f[:, [x, y]] for f in fronts], s["runs_needed"])
                assert {tuple(p) for p in s["points"]} == expected
    # hypervolumes on the common scale, and the test statistic against scipy
    runs = [load_run(sweep / str(j)) for j in range(10)]
    scale = hypervolume_scale([r.trials for r in runs], objectives)
    assert scale is not None
    hv = []
    for run in runs:
        main = run.trials[(run.trials["strategy"] == run.strategy) & run.trials["feasible"]]
        hv.append(scale.hypervolume(main[[f"obj_{o}" for o in objectives]].to_numpy()))
    assert [r["hypervolume"] for r in records["runs"]] == pytest.approx(hv, rel=1e-12)
    direct = mannwhitneyu(hv[:5], hv[5:], alternative="two-sided")
    (test,) = records["tests"]
    assert test["statistic"] == direct.statistic
    assert test["p_value"] == pytest.approx(direct.pvalue, rel=1e-12)
    assert [g["hypervolume"]["median"] for g in groups] == pytest.approx(
        [np.median(hv[:5]), np.median(hv[5:])])
    # every run's chosen point is its own
    for run, record in zip(runs, records["runs"], strict=True):
        assert record["chosen"]["trial"] == run.summary["chosen_trial"]
        # with the rule that gave its accuracy bound, as the run's own page words it
        assert record["chosen"]["guarantee"] == guarantee_text(guarantee_of(run.summary,
                                                                            run.chosen))
        assert record["chosen"]["guarantee"].split(":")[0] in ("certified", "uncertified")
