"""One shared suite that every backend passes (ask/tell contract, seeding, constraints)."""

from __future__ import annotations

import socket
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from evaluators.proxy import ConstraintSpec, ProxyEvaluator
from search.backends import BACKENDS, History, make_backend
from search.settings import SearchSettings
from spaces.space import build_space
from tests._synthetic import synthetic_costs, synthetic_platform, synthetic_split

C, H = 5, 2
SPEC = ConstraintSpec(max_accuracy_drop=0.03, memory=True)


@pytest.fixture(scope="module")
def problem():
    val = synthetic_split(n=600, c=C, h=H, seed=0)
    platform = synthetic_platform(2)
    space = build_space({"max_exits": 3, "thresholds": {"levels": 8}}, val=val, platform=platform)
    ev = ProxyEvaluator(split=val, costs=synthetic_costs(c=C, h=H, seed=1), platform=platform,
                        threshold_grid=space.threshold_grid)
    return space, ev


def _backend(name, space, seed, tmp_path, history=None):
    cfg = {"population": 16, "batch": 8, "storage": ":memory:", "n_startup_trials": 8}
    empty = History(X=np.zeros((0, space.n_genes)), F=np.zeros((0, 2)), G=np.zeros((0, 2)))
    return make_backend(name, space=space, settings=SearchSettings.from_mapping(cfg), seed=seed,
                        n_obj=2,
                        run_dir=tmp_path, history=history or empty)


def _run(backend, space, ev, generations):
    asked, feasible = [], 0
    for _ in range(generations):
        X = backend.ask(16)
        assert 0 < len(X) <= 16
        s = ev.evaluate(space.batch(space.repair_matrix(X)))
        F, G = s.objectives(["error", "energy"]), s.constraints(SPEC)
        backend.tell(X, F, G)
        asked += space.keys(space.repair_matrix(X))
        feasible += int((G <= 0).all(axis=1).sum())
    return asked, feasible


@pytest.mark.parametrize("name", BACKENDS)
def test_contract_and_seeding(name, problem, tmp_path) -> None:
    space, ev = problem
    a, feasible = _run(_backend(name, space, 3, tmp_path), space, ev, 4)
    b, _ = _run(_backend(name, space, 3, tmp_path), space, ev, 4)
    c, _ = _run(_backend(name, space, 4, tmp_path), space, ev, 4)
    assert a == b  # same seed, same proposals
    assert a != c
    assert feasible > 0
    if name in ("pymoo_nsga2", "random"):
        assert len(set(a)) == len(a)  # never spends an evaluation twice


def test_ask_respects_n(problem, tmp_path) -> None:
    space, _ = problem
    for name in BACKENDS:
        assert len(_backend(name, space, 0, tmp_path).ask(3)) == 3


def test_pymoo_improves_over_its_first_generation(problem, tmp_path) -> None:
    space, ev = problem
    backend = _backend("pymoo_nsga2", space, 0, tmp_path)
    energies = []
    for _ in range(8):
        X = backend.ask(16)
        s = ev.evaluate(space.batch(space.repair_matrix(X)))
        F, G = s.objectives(["error", "energy"]), s.constraints(SPEC)
        backend.tell(X, F, G)
        ok = (G <= 0).all(axis=1)
        energies.append(F[ok, 1].min() if ok.any() else np.inf)
    assert min(energies[4:]) < energies[0]


def test_pymoo_resumes_from_history(problem, tmp_path) -> None:
    space, ev = problem
    X = space.sample_matrix(40, np.random.default_rng(0))
    s = ev.evaluate(space.batch(X))
    hist = History(X=X, F=s.objectives(["error", "energy"]), G=s.constraints(SPEC))
    backend = _backend("pymoo_nsga2", space, 0, tmp_path, history=hist)
    proposed = set(space.keys(space.repair_matrix(backend.ask(16))))
    assert proposed and not proposed & set(space.keys(X))


def test_unknown_backend_is_one_line_error(problem, tmp_path) -> None:
    space, _ = problem
    with pytest.raises(ValueError, match=r"search\.backend='cma'"):
        _backend("cma", space, 0, tmp_path)


# --- Optuna on an explicit (shared) storage URL: SQLite files stand in for a database server ---

OBJ2 = ["error", "energy"]


@pytest.fixture()
def db_dir(tmp_path):
    """Where the shared SQLite file lives: RAM (/dev/shm) when there is one, as commits are many."""
    shm = Path("/dev/shm")
    if not shm.is_dir():
        yield tmp_path
        return
    with tempfile.TemporaryDirectory(dir=shm) as folder:
        yield Path(folder)


def _shared(name, space, tmp_path, run, seed=0, history=None, objectives=OBJ2, **extra):
    cfg = {"population": 8, "storage": f"sqlite:///{tmp_path / 'shared.db'}",
           "study_name": "s", "n_startup_trials": 8, **extra}
    (tmp_path / run).mkdir(exist_ok=True)
    empty = History(X=np.zeros((0, space.n_genes)), F=np.zeros((0, 2)), G=np.zeros((0, 2)))
    return make_backend(name, space=space, settings=SearchSettings.from_mapping(cfg), seed=seed,
                        n_obj=2,
                        run_dir=tmp_path / run, history=history or empty, objectives=objectives)


def _evaluate(space, ev, X):
    s = ev.evaluate(space.batch(space.repair_matrix(X)))
    return s.objectives(OBJ2), s.constraints(SPEC)


def _study(tmp_path):
    return optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'shared.db'}")


def test_shared_storage_sees_other_processes_trials(problem, db_dir) -> None:
    """A sampler evolves over every process's trials, not a copy read at start."""
    space, ev = problem
    a = _shared("optuna_nsga2", space, db_dir, "a")
    b = _shared("optuna_nsga2", space, db_dir, "b")  # opened before a told anything
    genomes = a.ask(8)
    a.tell(genomes, *_evaluate(space, ev, genomes))
    b.ask(8)  # a's 8 trials are a full first generation: b breeds its children
    generations = Counter(t.system_attrs["NSGAIISampler:generation"]
                          for t in _study(db_dir).get_trials(deepcopy=False))
    assert generations == {0: 8, 1: 8}


def test_shared_storage_mixes_stored_trials_into_the_seed(problem, db_dir) -> None:
    space, ev = problem
    a = _shared("optuna_tpe", space, db_dir, "a", seed=5)
    first = a.ask(4)
    a.tell(first, *_evaluate(space, ev, first))
    second = _shared("optuna_tpe", space, db_dir, "b", seed=5).ask(4)
    assert space.keys(space.repair_matrix(first)) != space.keys(space.repair_matrix(second))


def test_stored_study_with_other_objectives_is_refused(problem, db_dir) -> None:
    space, ev = problem
    a = _shared("optuna_nsga2", space, db_dir, "a")
    genomes = a.ask(8)
    a.tell(genomes, *_evaluate(space, ev, genomes))
    assert _study(db_dir).metric_names == OBJ2
    before = [(t.number, t.state, t.values) for t in _study(db_dir).get_trials()]
    with pytest.raises(ValueError, match=r"study_name='s' in sqlite.*holds objectives "
                                         r"\['error', 'energy'\].*\['error', 'macs'\]"):
        _shared("optuna_nsga2", space, db_dir, "b", objectives=["error", "macs"])
    assert [(t.number, t.state, t.values) for t in _study(db_dir).get_trials()] == before


def test_unreachable_storage_is_one_line(problem, tmp_path) -> None:
    space, _ = problem
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = {"population": 16, "storage": f"postgresql+psycopg2://u:secret@127.0.0.1:{port}/db"}
    empty = History(X=np.zeros((0, space.n_genes)), F=np.zeros((0, 2)), G=np.zeros((0, 2)))
    with pytest.raises(ValueError, match=r"^search\.storage=.*127\.0\.0\.1.* cannot be reached"
                                         r".*start the database or fix the URL") as err:
        make_backend("optuna_tpe", space=space, settings=SearchSettings.from_mapping(cfg), seed=0,
                     n_obj=2,
                     run_dir=tmp_path, history=empty)
    assert "\n" not in str(err.value) and "secret" not in str(err.value)


@pytest.mark.parametrize("storage", ["shared", "run"])
def test_killed_between_ask_and_tell_resumes_whole(storage, problem, db_dir) -> None:
    """A batch evaluated (in trials.parquet) but never told is told on resume; orphans FAIL."""
    space, ev = problem
    extra = {"heartbeat_s": 1, "grace_s": 2}
    if storage == "run":  # the run's own SQLite file (search.storage=null)
        extra["storage"] = None
    a = _shared("optuna_nsga2", space, db_dir, "a", **extra)
    logged, F, G = [], [], []
    for tell in (True, False):
        genomes = a.ask(8)
        f, g = _evaluate(space, ev, genomes)
        # what trials.parquet holds: the canonical rows
        logged += [space.to_matrix([space.encode(c)]) for c in space.configs(
            space.repair_matrix(genomes))]
        F.append(f)
        G.append(g)
        if tell:
            a.tell(genomes, f, g)
    a.close()  # killed: the second batch was evaluated and logged, never told; no more beats
    history = History(X=np.vstack(logged), F=np.vstack(F), G=np.vstack(G))
    if storage == "run":
        _shared("optuna_nsga2", space, db_dir, "a", history=history, **extra)
        stored = optuna.load_study(study_name="s",
                                   storage=f"sqlite:///{db_dir / 'a' / 'optuna.db'}")
        assert [t.state for t in stored.get_trials()] == [TrialState.COMPLETE] * 16
    else:
        time.sleep(3.2)  # past the grace period: the orphaned batch is stale
        _shared("optuna_nsga2", space, db_dir, "a", history=history, **extra)
        stored = _study(db_dir)
        states = Counter(t.state for t in stored.get_trials())
        assert states == {TrialState.COMPLETE: 16, TrialState.FAIL: 8}
    done = stored.get_trials(states=(TrialState.COMPLETE,))
    assert sorted(t.user_attrs["eenn_run"][1] for t in done) == list(range(16))
    by_index = {t.user_attrs["eenn_run"][1]: t for t in done}
    for i in range(16):
        assert by_index[i].values == pytest.approx(list(history.F[i]))
        assert list(by_index[i].constraints.values()) == pytest.approx(list(history.G[i]))
    # resuming again adds nothing: the study and the run folder agree
    _shared("optuna_nsga2", space, db_dir, "a", history=history, **extra)
    assert len(stored.get_trials(states=(TrialState.COMPLETE,))) == 16


def test_trial_orphaned_before_its_first_heartbeat_is_failed(tmp_path) -> None:
    """A worker killed between creating a trial and its first beat leaves no heartbeat behind."""
    import time

    import optuna
    from optuna.trial import TrialState

    from search.backends._storage import connect, fail_stale_trials

    rdb = connect(f"sqlite:///{tmp_path / 'gap.db'}", heartbeat_s=1, grace_s=2)
    study = optuna.create_study(storage=rdb, study_name="gap")
    study_id = rdb.get_study_id_from_name("gap")
    orphan = rdb.create_new_trial(study_id)  # RUNNING, never beaten
    alive = rdb.create_new_trial(study_id)
    fail_stale_trials(study, rdb)  # too young to judge
    assert rdb.get_trial(orphan).state == TrialState.RUNNING
    time.sleep(2.2)
    rdb.record_heartbeat(alive)  # a live worker keeps beating
    fail_stale_trials(study, rdb)
    assert rdb.get_trial(orphan).state == TrialState.FAIL
    assert rdb.get_trial(alive).state == TrialState.RUNNING
