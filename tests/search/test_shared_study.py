"""One Optuna study shared by several worker processes through a real PostgreSQL server.

A throwaway cluster (tests/search/_postgres.py) holds the study; workers are
``python -m search.worker`` subprocesses on the tiny default experiment. Checked: every
trial a worker evaluated is in the database exactly once, the database's Pareto front
(``optuna.load_study(...).best_trials``) is the front of what the workers report, a worker
killed with SIGKILL leaves at most its batch in flight RUNNING, which the next worker fails
(heartbeat past its grace period) while continuing the study, and bad input
(unreachable database, a study with other objectives) is a one-line error that changes
nothing stored.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from tests.search._datasets import search_cli, shared_cache
from tests.search._postgres import PostgresCluster, free_port, missing_reason, postgres_cluster

_MISSING = missing_reason()
pytestmark = pytest.mark.skipif(_MISSING is not None, reason=str(_MISSING))

OBJ = ["obj_error", "obj_macs", "obj_energy"]
POPULATION = 10
GRACE_S = 2  # the new worker's grace period: a killed worker's trials are stale after it
# Tiny mode with 100 val samples: on tiny's 20 the distinct EENNs of a near-chance tiny backbone
# can run out before two workers log 30 each (the loop then stops early, by design).
TINY = ("+debug=tiny", "data.splits.val=100")


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresCluster]:
    with postgres_cluster() as cluster:
        yield cluster


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_cache(tmp_path_factory)


def _args(pg: PostgresCluster, study: str, worker: int, run_dir: Path, budget: int) -> list[str]:
    return [*TINY, "search=optuna_nsga2", f"search.storage={pg.url}",
            f"search.study_name={study}", f"search.budget={budget}",
            f"search.population={POPULATION}", f"+worker={worker}", f"hydra.run.dir={run_dir}"]


def _popen(args: list[str], cwd: Path, cache: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "EENN_CACHE_DIR": str(cache)}
    return subprocess.Popen([sys.executable, "-m", "search.worker", *args, f"cache_dir={cache}"],
                            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def _values(frame: pd.DataFrame) -> Counter[tuple[float, ...]]:
    return Counter(tuple(float(v) for v in row) for row in frame[OBJ].to_numpy(float))


def _db_values(trials: list[optuna.trial.FrozenTrial]) -> Counter[tuple[float, ...]]:
    return Counter(tuple(float(v) for v in t.values) for t in trials)


def _logged(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    """Trials a run folder logged; a repeat of an EENN its run evaluated before has index -1."""
    return [t for t in trials if t.user_attrs.get("eenn_run", [None, -1])[1] >= 0]


def _front(points: np.ndarray) -> set[tuple[float, ...]]:
    """Non-dominated rows (minimisation), by a plain pairwise check."""
    keep = set()
    for p in points:
        dominated = np.any(np.all(points <= p, axis=1) & np.any(points < p, axis=1))
        if not dominated:
            keep.add(tuple(float(v) for v in p))
    return keep


def _warm_cache(cache: Path) -> None:
    from hydra import compose, initialize_config_module

    from search.pipeline import prepare

    with initialize_config_module(config_module="conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*TINY, f"cache_dir={cache}"])
    prepare(cfg, progress=False)


def _complete(pg: PostgresCluster, study: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=study, storage=pg.url).get_trials(deepcopy=False)


@pytest.mark.slow
def test_workers_share_one_study_and_survive_a_kill(tmp_path: Path, pg: PostgresCluster,
                                                     cache: Path) -> None:
    study = "shared"
    _warm_cache(cache)  # so the parallel workers only read the backbone, features and heads
    procs = [_popen(_args(pg, study, w, tmp_path / f"w{w}", 30), tmp_path, cache) for w in (1, 2)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    frames = [pd.read_parquet(tmp_path / f"w{w}" / "trials.parquet") for w in (1, 2)]
    assert [len(f) for f in frames] == [30, 30]
    every = _complete(pg, study)
    assert all(t.state == TrialState.COMPLETE for t in every)
    assert sorted(t.number for t in every) == list(range(len(every)))
    trials = _logged(every)
    # every trial recorded once, none lost: the database's logged trials are the workers' trials
    assert _db_values(trials) == _values(frames[0]) + _values(frames[1])
    # the rest repeat an EENN already logged (told so the sampler learns, not logged again)
    assert set(_db_values(every) - _db_values(trials)) <= set(_db_values(trials))
    # the database's Pareto front is the front of the workers' reported fronts
    reported = pd.concat([pd.read_csv(tmp_path / f"w{w}" / "pareto.csv") for w in (1, 2)])
    db_front = {tuple(float(v) for v in t.values)
                for t in optuna.load_study(study_name=study, storage=pg.url).best_trials}
    assert db_front and db_front == _front(reported[OBJ].to_numpy(float))

    # a worker killed in the middle of its search
    victim = _popen(_args(pg, study, 3, tmp_path / "w3", 3000), tmp_path, cache)
    deadline = time.monotonic() + 300
    while len(_logged([t for t in _complete(pg, study)
                       if t.state == TrialState.COMPLETE])) < 60 + POPULATION:
        assert victim.poll() is None, victim.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the worker told nothing within 300 s"
        time.sleep(0.2)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait(timeout=60)
    killed_at = time.monotonic()
    after_kill = _complete(pg, study)
    states = Counter(t.state for t in after_kill)
    assert set(states) <= {TrialState.COMPLETE, TrialState.RUNNING}
    assert states[TrialState.RUNNING] <= POPULATION  # at most the batch in flight
    orphans = {t.number for t in after_kill if t.state == TrialState.RUNNING}
    done_after_kill = _logged([t for t in after_kill if t.state == TrialState.COMPLETE])
    told = _db_values(done_after_kill) - _db_values(trials)
    assert not _db_values(trials) - _db_values(done_after_kill)  # earlier trials intact
    assert 0 < sum(told.values()) < 3000
    logged = _values(pd.read_parquet(tmp_path / "w3" / "trials.parquet"))  # flushed before tell
    assert not told - logged  # everything told is in the killed worker's log
    assert sum((logged - told).values()) <= POPULATION  # at most the batch in flight

    # a new worker continues the same study; past the grace period the orphans are failed
    time.sleep(max(0.0, GRACE_S + 1 - (time.monotonic() - killed_at)))
    done = search_cli([*_args(pg, study, 4, tmp_path / "w4", 20), "search.heartbeat_s=1",
                       f"search.grace_s={GRACE_S}"], cwd=tmp_path, cache=cache,
                      module="search.worker")
    assert done.returncode == 0, done.stderr[-3000:]
    final = _complete(pg, study)
    assert sorted(t.number for t in final) == list(range(len(final)))
    assert not [t for t in final if t.state == TrialState.RUNNING]
    assert {t.number for t in final if t.state == TrialState.FAIL} == orphans
    complete = _logged([t for t in final if t.state == TrialState.COMPLETE])
    new = _values(pd.read_parquet(tmp_path / "w4" / "trials.parquet"))
    assert sum(new.values()) == 20
    assert _db_values(complete) == _db_values(done_after_kill) + new
    # the database's front is the front of every worker's reported (feasible) trials
    w3 = pd.read_parquet(tmp_path / "w3" / "trials.parquet")
    w3_told = w3[w3["feasible"].to_numpy() & np.array([tuple(map(float, r)) in told
                                                       for r in w3[OBJ].to_numpy()])]
    reported = pd.concat([*(pd.read_csv(tmp_path / f"w{w}" / "pareto.csv") for w in (1, 2, 4)),
                          w3_told])
    db_front = {tuple(float(v) for v in t.values)
                for t in optuna.load_study(study_name=study, storage=pg.url).best_trials}
    assert db_front and db_front == _front(reported[OBJ].to_numpy(float))


def test_unreachable_database_is_one_line(tmp_path: Path, cache: Path) -> None:
    url = f"postgresql+psycopg2://eenn:secret@127.0.0.1:{free_port()}/nowhere"
    done = search_cli(["search=optuna_tpe", f"search.storage={url}", "search.study_name=s",
                       f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, cache=cache,
                      module="search.worker")
    assert done.returncode == 2
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: search.storage=") and "127.0.0.1" in lines[0]
    assert "secret" not in lines[0] and "start the database or fix the URL" in lines[0]
    assert not (tmp_path / "run" / "trials.parquet").exists()


def test_study_with_other_objectives_is_refused_untouched(pg: PostgresCluster) -> None:
    from search.worker import check_shared_study

    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    old = optuna.create_study(storage=pg.url, study_name="two_objectives",
                              directions=["minimize", "minimize"])
    old.set_metric_names(["error", "macs"])
    old.optimize(lambda t: (t.suggest_float("x", 0, 1), 1.0), n_trials=3)
    before = [(t.number, t.values, t.params) for t in _complete(pg, "two_objectives")]
    with pytest.raises(ValueError, match=r"study_name='two_objectives'.*\['error', 'macs'\].*"
                                         r"\['error', 'macs', 'energy'\]") as err:
        check_shared_study(storage=pg.url, study_name="two_objectives",
                           objectives=["error", "macs", "energy"])
    assert "\n" not in str(err.value)
    # same count, other names: refused too (the values would be meaningless side by side)
    with pytest.raises(ValueError, match="holds objectives"):
        check_shared_study(storage=pg.url, study_name="two_objectives",
                           objectives=["error", "energy"])
    check_shared_study(storage=pg.url, study_name="two_objectives", objectives=["error", "macs"])
    assert [(t.number, t.values, t.params) for t in _complete(pg, "two_objectives")] == before
    # a new name is created with its objective names recorded
    check_shared_study(storage=pg.url, study_name="fresh", objectives=["error", "energy"])
    assert optuna.load_study(study_name="fresh", storage=pg.url).metric_names == ["error",
                                                                                  "energy"]


def test_workers_starting_together_on_a_fresh_database(pg: PostgresCluster) -> None:
    """Racing to create Optuna's tables and the study is harmless: all succeed, one study."""
    import psycopg2

    from search.worker import check_shared_study

    conn = psycopg2.connect(host="127.0.0.1", port=pg.port, user="postgres", dbname="postgres")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("CREATE DATABASE fresh_race")
    conn.close()
    url = pg.url.rsplit("/", 1)[0] + "/fresh_race"
    objectives = ["error", "macs", "energy"]
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = [pool.submit(check_shared_study, storage=url, study_name="race",
                               objectives=objectives) for _ in range(4)]
        for f in futures:
            f.result()
    summaries = optuna.get_all_study_summaries(url, include_best_trial=False)
    assert [s.study_name for s in summaries] == ["race"]
    assert optuna.load_study(study_name="race", storage=url).metric_names == objectives
