"""The ask/tell loop end to end: files, determinism, resume, interruption, infeasibility."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from evaluators.eenn import EENNConfig, ExitChoice
from evaluators.proxy import ConfigBatch, ConstraintSpec, ProxyEvaluator
from search.backends import History, make_backend
from search.loop import run_search
from search.results import TrialLog, scores_to_records
from search.rundir import config_from_json
from search.settings import SearchSettings
from spaces.space import build_space
from tests._synthetic import synthetic_costs, synthetic_platform, synthetic_split

C, H = 5, 2
CONSTRAINTS = {"max_accuracy_drop": 0.03, "confidence": 0.95, "memory": True, "max_latency_s": None}


@pytest.fixture(scope="module")
def setup():
    val = synthetic_split(n=600, c=C, h=H, seed=0)
    test = synthetic_split(n=600, c=C, h=H, seed=7)
    platform, costs = synthetic_platform(3), synthetic_costs(c=C, h=H, seed=1)
    space = build_space({"max_exits": 3, "thresholds": {"levels": 8}}, val=val, platform=platform)
    grid = space.threshold_grid
    ev = ProxyEvaluator(split=val, costs=costs, platform=platform, threshold_grid=grid)
    tev = ProxyEvaluator(split=test, costs=costs, platform=platform, threshold_grid=grid)
    return space, ev, tev


def _search(setup, run_dir, **cfg):
    space, ev, tev = setup
    cfg = {"backend": "pymoo_nsga2", "budget": 60, "population": 20, "manual_thresholds": 8,
           "baselines": ["random", "manual"], **cfg}
    return run_search(evaluator=ev, space=space, settings=cfg, objectives=["error", "macs"],
                      constraints=CONSTRAINTS, seed=0, run_dir=run_dir, test_evaluator=tev,
                      progress=False)


def test_writes_schema_files(setup, tmp_path) -> None:
    res = _search(setup, tmp_path)
    df = pd.read_parquet(tmp_path / "trials.parquet")
    assert df.groupby("strategy").size().to_dict() == {"pymoo_nsga2": 60, "random": 60,
                                                       "manual": 16}
    assert list(df["trial"]) == list(range(len(df)))
    for col in ("generation", "config", "accuracy", "error", "macs", "energy_j", "latency_s",
                "exit_fractions", "exit_accuracy", "obj_error", "obj_macs",
                "cv_accuracy_drop", "cv_memory", "feasible", "pareto"):
        assert col in df.columns
    pareto = pd.read_csv(tmp_path / "pareto.csv")
    assert len(pareto) and set(pareto["strategy"]) == {"pymoo_nsga2"}
    chosen = yaml.safe_load((tmp_path / "chosen.yaml").read_text())
    assert chosen["feasible"] and chosen["trial"] == res.chosen_trial
    feas = df[(df["strategy"] == "pymoo_nsga2") & df["feasible"]]
    assert chosen["objectives"]["macs"] == pytest.approx(feas["obj_macs"].min())
    assert set(chosen["test"]) == set(chosen["val"])
    assert len(chosen["val"]["exit_fractions"]) == len(chosen["config"]["exits"]) + 1


def test_manual_recipe_follows_a_pinned_mapping(setup, tmp_path) -> None:
    _, ev, tev = setup
    pinned = build_space({"max_exits": 3, "thresholds": {"levels": 8}, "boundaries": [2, 4]},
                         val=ev.split, platform=ev.platform)
    res = run_search(evaluator=ev, space=pinned, test_evaluator=tev, objectives=["error", "macs"],
                     settings={"backend": "random", "budget": 20, "population": 10,
                                 "baselines": ["manual"], "manual_thresholds": 8},
                     constraints=CONSTRAINTS, seed=0, run_dir=tmp_path, progress=False)
    configs = res.records["config"].map(lambda c: tuple(yaml.safe_load(c)["boundaries"]))
    assert set(configs) == {(2, 4)}
    assert (res.records["strategy"] == "manual").sum() == 8


def test_same_seed_same_records(setup, tmp_path) -> None:
    a = _search(setup, tmp_path / "a").records
    b = _search(setup, tmp_path / "b").records
    pd.testing.assert_frame_equal(a, b)


@pytest.mark.parametrize("backend", ["pymoo_nsga2", "optuna_nsga2", "random"])
def test_resume_counts_stored_trials(setup, tmp_path, backend) -> None:
    _search(setup, tmp_path, backend=backend, budget=40, baselines=[])
    res = _search(setup, tmp_path, backend=backend, budget=80, baselines=[])
    df = res.records
    assert len(df) == 80 and df["trial"].is_unique
    if backend == "optuna_nsga2":
        import optuna

        study = optuna.load_study(study_name=backend, storage=f"sqlite:///{tmp_path}/optuna.db")
        indices = [t.user_attrs["eenn_run"][1] for t in study.trials]
        # every logged trial once, by its index in the run; repeats told but not logged (-1)
        assert sorted(i for i in indices if i >= 0) == list(range(80))


def test_interrupt_keeps_every_evaluated_trial(setup, tmp_path, monkeypatch) -> None:
    """Ctrl-C while the third generation is asked: both evaluated batches are on disk."""
    from search import loop
    from search.backends._pymoo import PymooNSGA2

    asks, logged = {"n": 0}, {"n": 0}
    ask, record = PymooNSGA2.ask, loop._Context.record

    def counted(self, *args):
        F, G, new = record(self, *args)
        logged["n"] += int(new.sum())
        return F, G, new

    def interrupted(self, n):
        asks["n"] += 1
        if asks["n"] == 3:
            raise KeyboardInterrupt
        return ask(self, n)

    monkeypatch.setattr(PymooNSGA2, "ask", interrupted)
    monkeypatch.setattr(loop._Context, "record", counted)
    with pytest.raises(KeyboardInterrupt):
        _search(setup, tmp_path)
    assert logged["n"] > 20  # two batches of 20, less repeats
    assert len(pd.read_parquet(tmp_path / "trials.parquet")) == logged["n"]
    monkeypatch.setattr(PymooNSGA2, "ask", ask)
    res = _search(setup, tmp_path)
    assert (res.records["strategy"] == "pymoo_nsga2").sum() == 60


def test_no_feasible_point_says_why(setup, tmp_path) -> None:
    space, ev, _ = setup
    res = run_search(evaluator=ev, space=space, settings={"backend": "random", "budget": 20,
                                                            "population": 10, "baselines": []},
                     objectives=["error", "latency"], constraints={**CONSTRAINTS,
                                                                   "max_latency_s": 1e-9},
                     seed=0, run_dir=tmp_path, progress=False)
    assert "no feasible point" in res.message and "latency by" in res.message
    assert yaml.safe_load((tmp_path / "chosen.yaml").read_text())["feasible"] is False


@pytest.mark.parametrize(("cfg", "match"), [
    ({"backend": "bayes"}, "search.backend"),
    ({"budget": 0}, "search.budget"),
    ({"baselines": ["sdn"]}, "search.baselines"),
])
def test_bad_settings_are_one_line_errors(setup, tmp_path, cfg, match) -> None:
    with pytest.raises(ValueError, match=match):
        _search(setup, tmp_path, **cfg)


def test_resume_with_other_objectives_is_refused(setup, tmp_path) -> None:
    space, ev, _ = setup
    _search(setup, tmp_path, budget=20, baselines=[])
    with pytest.raises(ValueError, match="new run folder"):
        run_search(evaluator=ev, space=space, settings={"backend": "random", "budget": 20},
                   objectives=["error", "energy"], constraints=CONSTRAINTS, seed=0,
                   run_dir=tmp_path, progress=False)


def test_explicit_storage_is_used_directly(setup, tmp_path) -> None:
    import optuna

    url = f"sqlite:///{tmp_path}/shared.db"
    for budget in (4, 8):  # the second run resumes the same study through the URL
        _search(setup, tmp_path / "run", backend="optuna_nsga2", budget=budget, population=4,
                baselines=[], storage=url, study_name="shared")
    study = optuna.load_study(study_name="shared", storage=url)
    assert sum(t.state.is_finished() for t in study.trials) == 8


def test_space_exhausted_ends_the_search_early(tmp_path) -> None:
    """A space with fewer distinct EENNs than the budget: every one once, then the loop stops."""
    val = synthetic_split(n=200, c=2, h=1, seed=0)
    platform, costs = synthetic_platform(1), synthetic_costs(c=2, h=1, seed=1)
    space = build_space({"max_exits": 1, "thresholds": {"mode": "uniform", "levels": 2}},
                        val=val, platform=platform)
    ev = ProxyEvaluator(split=val, costs=costs, platform=platform,
                        threshold_grid=space.threshold_grid)
    # no exit, or one exit at either candidate at level 0 (threshold 0: every sample leaves);
    # at level 1 (threshold 1.0) no sample leaves, so that exit is dropped: no exit again
    distinct = 3
    for backend in ("pymoo_nsga2", "random"):
        res = run_search(evaluator=ev, space=space,
                         settings={"backend": backend, "budget": 50, "population": 4,
                                     "baselines": []},
                         objectives=["error", "macs"], constraints=CONSTRAINTS, seed=0,
                         run_dir=tmp_path / backend, progress=False)
        configs = res.records["config"]
        assert len(configs) == configs.nunique() == distinct


def test_trial_log_writes_on_its_interval_and_at_the_end(setup, tmp_path) -> None:
    space, ev, _ = setup
    batch = space.batch(space.sample_matrix(10, np.random.default_rng(0)))
    scores = ev.evaluate(batch)
    F, G = scores.objectives(["error", "macs"]), scores.constraints(ConstraintSpec())

    def rows(first):
        return scores_to_records(batch=batch, scores=scores, F=F, G=G,
                                 objectives=["error", "macs"],
                                 constraint_names=["accuracy_drop", "memory"], strategy="s",
                                 generation=0, first_trial=first, confidence=0.95)

    log = TrialLog(tmp_path, objectives=["error", "macs"],
                   constraint_names=["accuracy_drop", "memory"], interval_s=3600)
    log.append(rows(0))
    log.flush_if_due()
    assert not (tmp_path / "trials.parquet").exists()  # not due yet
    log.interval_s = 0.0
    log.append(rows(10))
    log.flush_if_due()
    assert len(pd.read_parquet(tmp_path / "trials.parquet")) == 20
    assert log.count("s") == 20 and log.next_trial == 20


@pytest.mark.parametrize("inactive", ["keep", "canonical"])
def test_inactive_genes_setting(setup, tmp_path, inactive) -> None:
    """keep: evolving rows hold the genes of disabled exits; canonical: they are reset."""
    space, ev, _ = setup
    empty = History(X=np.zeros((0, space.n_genes)), F=np.zeros((0, 2)), G=np.zeros((0, 2)))
    backend = make_backend("pymoo_nsga2", space=space, seed=0, n_obj=2,
                           settings=SearchSettings(population=20, inactive_genes=inactive),
                           run_dir=tmp_path, history=empty)
    spec = ConstraintSpec()
    kept = 0
    for _ in range(4):
        X = backend.ask(20)
        s = ev.evaluate(space.batch(space.repair_matrix(X)))
        backend.tell(X, s.objectives(["error", "macs"]), s.constraints(spec))
        off = X[:, 0:3 * C:3] == 0
        kept += int(((X[:, 1:3 * C:3] != 0) & off).sum() + ((X[:, 2:3 * C:3] != 0) & off).sum())
    assert (kept > 0) == (inactive == "keep")
    with pytest.raises(ValueError, match="inactive_genes"):
        SearchSettings.from_mapping({"inactive_genes": "drop"})


def test_no_logged_trial_has_an_exit_no_val_sample_takes(setup, tmp_path) -> None:
    _, ev, _ = setup
    res = _search(setup, tmp_path)
    for text, shares in zip(res.records["config"], res.records["exit_fractions"], strict=True):
        cfg = config_from_json(text)
        assert all(f > 0 for f in json.loads(shares)[:len(cfg.exits)]), text
    # and the figures are those of the EENN without the idle exit
    idle = EENNConfig(exits=(ExitChoice(candidate=0, head=0, threshold=2.0),
                             ExitChoice(candidate=3, head=1, threshold=0.0)),
                      boundaries=(C + 1, C + 1))
    batch = ConfigBatch.from_configs([idle])
    scores = ev.evaluate(batch)
    assert scores.idle_exits(batch).tolist() == [[True, False]]
    pruned = batch.without(scores.idle_exits(batch))
    assert pruned.candidate.tolist() == [[3]]
    again = ev.evaluate(pruned)
    assert again.accuracy[0] == scores.accuracy[0] and again.macs[0] < scores.macs[0]
