"""Sweeps through ``hydra/launcher=slurm`` on a real single-node SLURM cluster.

The cluster (tests/search/_slurm.py) runs slurmctld, slurmd and munged on this machine, with
accounting disabled. Checked: the jobs import this checkout's code; a three-point sweep of the
default runs one SLURM job per point, at most ``array_parallelism`` at once, completes every run
folder, computes the backbone, features and heads once for the whole sweep (the cache's
``prepare.log`` against the cache files' times) and is compared by ``python -m search.report
<sweep folder>``; submitit's sacct warnings do not appear; the workers of one Optuna study on
PostgreSQL run as SLURM jobs, one is cancelled with ``scancel`` mid-search, and the same command
resumes it: every trial is in the study once, none lost, and the study's front is the union of
the workers' fronts; a missing partition, an impossible memory request and a controller that
does not answer are one-line errors naming the key.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from evaluators._cache import JOURNAL, LOCK
from search.report.__main__ import main as report_main
from tests.search._datasets import RUN_FILES
from tests.search._postgres import PostgresCluster, postgres_cluster
from tests.search._postgres import missing_reason as pg_missing
from tests.search._slurm import SlurmCluster, missing_reason, slurm_cluster

_MISSING = missing_reason()
pytestmark = pytest.mark.skipif(_MISSING is not None, reason=str(_MISSING))

REPO = Path(__file__).resolve().parents[2]
OBJ = ["obj_error", "obj_macs", "obj_energy"]
RESOURCES = ["hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1",
             "hydra.launcher.timeout_min=10"]


@pytest.fixture(scope="session")
def cluster() -> Iterator[SlurmCluster]:
    try:
        with slurm_cluster() as running:
            print(f"\nSLURM cluster ready in {running.startup_s:.1f} s")
            yield running
    except RuntimeError as err:
        pytest.skip(f"the single-node SLURM cluster did not start: {err}")


@pytest.fixture(autouse=True)
def _node_up(request: pytest.FixtureRequest) -> None:
    """Resume the node if an earlier hiccup drained it, so one test's trouble stays its own."""
    if "cluster" not in request.fixturenames:
        return
    running: SlurmCluster = request.getfixturevalue("cluster")
    state = subprocess.run(["sinfo", "-h", "-n", running.node, "-o", "%T"], env=running.env(),
                           capture_output=True, text=True, timeout=30, check=False).stdout
    if "drain" in state:
        subprocess.run(["scontrol", "update", f"NodeName={running.node}", "State=RESUME"],
                       env=running.env(), capture_output=True, timeout=30, check=False)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cold cache of this module's own: the first sweep fills it."""
    return tmp_path_factory.mktemp("slurm-cache")


def _launch(args: list[str], *, cluster: SlurmCluster, cache: Path, cwd: Path,
            module: str = "search") -> subprocess.Popen[str]:
    env = cluster.env(EENN_CACHE_DIR=str(cache), HYDRA_FULL_ERROR="0")
    env.pop("EENN_TRACEBACK", None)
    # uncertified: these tests count search trials against the budget; a certified run
    # (the default on this val size) also logs its certification path (generation -1)
    return subprocess.Popen([sys.executable, "-m", module, "-m", "hydra/launcher=slurm",
                             *RESOURCES, "constraints.guarantee.method=uncertified", *args,
                             f"cache_dir={cache}"], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _sweep(args: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    proc = _launch(args, **kw)  # type: ignore[arg-type]
    try:
        out, err = proc.communicate(timeout=600)
    finally:
        proc.kill()  # a failed or interrupted test leaves no launcher behind
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _squeue(cluster: SlurmCluster, fields: str, *ids: str) -> list[list[str]]:
    cmd = ["squeue", "-h", "-t", "all", "-r", "-o", fields, *(["-j", ",".join(ids)] if ids
                                                               else [])]
    done = subprocess.run(cmd, env=cluster.env(), capture_output=True, text=True, timeout=30,
                          check=True)
    return [line.split("|") for line in done.stdout.splitlines()]


def _ended(cluster: SlurmCluster, array: str) -> list[list[str]]:
    """The array's elements (id, job id, state, start, end) once SLURM has closed them all.

    A job's result file appears a moment before SLURM records the job's end.
    """
    deadline = time.monotonic() + 60
    while True:
        rows = _squeue(cluster, "%i|%A|%T|%S|%e", array)
        if all(r[2] not in ("RUNNING", "COMPLETING", "PENDING") for r in rows):
            return rows
        assert time.monotonic() < deadline, rows
        time.sleep(0.5)


def _array_of(sweep: Path) -> str:
    """The SLURM array id of the sweep (its .submitit/<array>_<k> folders)."""
    arrays = {p.name.split("_")[0] for p in (sweep / ".submitit").iterdir()
              if p.name[0].isdigit() and "_" in p.name}
    assert len(arrays) == 1, arrays
    return arrays.pop()


def test_jobs_run_this_checkout(cluster: SlurmCluster, tmp_path: Path) -> None:
    """sbatch hands the environment (PYTHONPATH, SLURM_CONF) on: a job imports this code."""
    out = tmp_path / "job.out"
    code = "import search, os; print(search.__file__, os.environ['SLURM_CONF'])"
    subprocess.run(["sbatch", "-o", str(out), "--wrap", f"{sys.executable} -c \"{code}\""],
                   env=cluster.env(), check=True, capture_output=True, timeout=30)
    deadline = time.monotonic() + 60
    while not (out.is_file() and out.read_text().strip()):
        assert time.monotonic() < deadline, "the job did not run within 60 s"
        time.sleep(0.2)
    where, conf = out.read_text().split()
    assert Path(where) == REPO / "search" / "__init__.py" and conf == str(cluster.conf)


@pytest.mark.slow
def test_sweep_runs_one_job_per_point_shares_the_cache_and_compares(
        cluster: SlurmCluster, cache: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    backends = ["random", "pymoo_nsga2", "optuna_nsga2"]
    started = time.monotonic()
    done = _sweep([f"search={','.join(backends)}", "search.budget=300",
                   "hydra.launcher.array_parallelism=2", f"hydra.sweep.dir={sweep}"],
                  cluster=cluster, cache=cache, cwd=tmp_path)
    wall = time.monotonic() - started
    assert done.returncode == 0, done.stderr[-3000:]
    print(f"\nthree-job SLURM sweep (cold cache): {wall:.1f} s")
    assert "Bypassing sacct" not in done.stdout + done.stderr
    # every run folder complete, one per backend
    for k, backend in enumerate(backends):
        job = sweep / str(k)
        for f in RUN_FILES:
            assert (job / f).is_file(), f"{job}/{f}"
        trials = pd.read_parquet(job / "trials.parquet")
        assert (trials["strategy"] == backend).sum() == 300
    # one SLURM job each, at most array_parallelism=2 at a time
    array = _array_of(sweep)
    assert "#SBATCH --array=0-2%2" in (sweep / ".submitit" / array /
                                        f"{array}_submission.sh").read_text()
    rows = _ended(cluster, array)
    assert sorted(r[0] for r in rows) == [f"{array}_{k}" for k in range(3)]
    assert len({r[1] for r in rows}) == 3 and {r[2] for r in rows} == {"COMPLETED"}
    starts, ends = sorted(r[3] for r in rows), sorted(r[4] for r in rows)
    assert starts[-1] >= ends[0], "all three jobs ran at once"
    _check_cache_built_once(cache, array, sweep)
    # one comparison page over the sweep folder
    out = tmp_path / "cmp.html"
    assert report_main([str(sweep), "--out", str(out)]) == 0
    page = out.read_text()
    assert all(str(sweep / str(k)) in page for k in range(3))
    records = json.loads((tmp_path / "cmp.json").read_text())  # the page's records
    assert sorted(g["label"] for g in records["groups"]) == sorted(f"search={b}" for b in backends)
    assert sorted(r["folder"] for r in records["runs"]) == [str(sweep / str(k)) for k in range(3)]
    assert all(r["evaluations"] == 300 and r["front"] for r in records["runs"])


def _check_cache_built_once(cache: Path, array: str, sweep: Path) -> None:
    """The cache's journal: each job held the lock once, in turn; the first built everything."""
    records = [json.loads(line) for line in (cache / JOURNAL).read_text().splitlines()]
    mine = sorted((r for r in records if str(r["slurm_job"]).startswith(f"{array}_")),
                  key=lambda r: r["acquired"])
    assert sorted(r["slurm_job"] for r in mine) == [f"{array}_{k}" for k in range(3)]
    for a, b in itertools.pairwise(mine):
        assert b["acquired"] >= a["released"]
    first = mine[0]
    files = [p for p in cache.rglob("*") if p.is_file() and p.name not in (JOURNAL, LOCK)]
    assert files
    late = [p for p in files if not first["acquired"] <= p.stat().st_mtime <= first["released"]]
    assert not late, f"written outside the first job's preparation: {late[:5]}"
    trained = [json.loads((sweep / str(k) / "summary.json").read_text())["backbone_trained_now"]
               for k in range(3)]
    assert sorted(trained) == [False, False, True]


# --- a shared Optuna study on PostgreSQL, one worker per SLURM job, one cancelled --------------

POPULATION, BUDGET = 10, 60


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresCluster]:
    reason = pg_missing()
    if reason:
        pytest.skip(reason)
    with postgres_cluster() as running:
        yield running


def _values(frame: pd.DataFrame) -> Counter[tuple[float, ...]]:
    return Counter(tuple(float(v) for v in row) for row in frame[OBJ].to_numpy(float))


def _logged(study: optuna.Study) -> Counter[tuple[float, ...]]:
    """Values of the complete trials a run folder logged (a repeat has index -1)."""
    return Counter(tuple(float(v) for v in t.values)
                   for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                   if t.user_attrs.get("eenn_run", [None, -1])[1] >= 0)


def _front(points: np.ndarray) -> set[tuple[float, ...]]:
    keep = set()
    for p in points:
        if not np.any(np.all(points <= p, axis=1) & np.any(points < p, axis=1)):
            keep.add(tuple(float(v) for v in p))
    return keep


def _configs(job: Path) -> list[str]:
    return [str(c) for c in pd.read_parquet(job / "trials.parquet")["config"]]


def _cancel_worker_3(proc: subprocess.Popen[str], sweep: Path, cluster: SlurmCluster) -> None:
    """``scancel`` the third job once its worker has told the study its first batch."""
    log = sweep / "2" / "trials.parquet"
    deadline = time.monotonic() + 300
    while not (log.is_file() and len(pd.read_parquet(log)) >= POPULATION):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, (f"worker 3 logged nothing within 300 s; queue: "
                                             f"{_squeue(cluster, '%i|%T|%r')}")
        time.sleep(0.05)
    array = _array_of(sweep)
    job = f"{array}_2"
    number = {r[0]: r[1] for r in _squeue(cluster, "%i|%A", array)}[job]
    # freeze its processes at once (a fast worker would otherwise finish first; SLURM's own
    # STOP signal leaves a job that scancel cannot end), then cancel it
    listed = subprocess.run(["scontrol", "listpids", number], env=cluster.env(), check=False,
                            capture_output=True, text=True, timeout=30)
    assert listed.returncode == 0, listed.stderr
    for line in listed.stdout.splitlines()[1:]:
        if line.split() and line.split()[0].isdigit():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(line.split()[0]), signal.SIGSTOP)
    subprocess.run(["scancel", job], env=cluster.env(), check=True, timeout=30)


@pytest.mark.slow
def test_shared_study_across_jobs_and_a_cancelled_job_resumed(
        cluster: SlurmCluster, cache: Path, pg: PostgresCluster, tmp_path: Path) -> None:
    sweep, study_name = tmp_path / "workers", "slurm"
    args = ["search=optuna_nsga2", f"search.storage={pg.url}", f"search.study_name={study_name}",
            f"search.budget={BUDGET}", f"search.population={POPULATION}", "search.heartbeat_s=1",
            "search.grace_s=4", "+worker=1,2,3", f"hydra.sweep.dir={sweep}"]
    proc = _launch(args, cluster=cluster, cache=cache, cwd=tmp_path, module="search.worker")
    try:
        _cancel_worker_3(proc, sweep, cluster)
        _, err = proc.communicate(timeout=600)
    finally:
        proc.kill()
    array = _array_of(sweep)
    victim = sweep / "2"
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1, err[-3000:]
    assert lines[0].startswith(f"error: SLURM job {array}_2 (CANCELLED")
    assert f"hydra.sweep.dir={sweep}" in lines[0]
    before = _configs(victim)
    assert POPULATION <= len(before) < BUDGET  # cancelled in the middle of its search
    assert [len(_configs(sweep / k)) for k in ("0", "1")] == [BUDGET, BUDGET]

    # the same command again: the cancelled worker resumes, the finished ones add nothing
    time.sleep(4)  # past search.grace_s: the cancelled worker's batch in flight is failed
    done = _sweep(args, cluster=cluster, cache=cache, cwd=tmp_path, module="search.worker")
    assert done.returncode == 0, done.stderr[-3000:]
    after = _configs(victim)
    assert after[:len(before)] == before  # nothing it logged was lost or changed
    for k in ("0", "1", "2"):
        configs = _configs(sweep / k)
        assert len(configs) == len(set(configs)) == BUDGET, k  # none lost, none twice
    study = optuna.load_study(study_name=study_name, storage=pg.url)
    assert not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    frames = [pd.read_parquet(sweep / k / "trials.parquet") for k in ("0", "1", "2")]
    assert _logged(study) == sum((_values(f) for f in frames), Counter())
    assert sum(_logged(study).values()) == 3 * BUDGET
    print(f"\nshared study: {sum(_logged(study).values())} logged trials, jobs' trials "
          f"{sum(len(f) for f in frames)}; worker 3 cancelled after {len(before)}, resumed to "
          f"{len(after)}")
    reported = pd.concat([pd.read_csv(sweep / k / "pareto.csv") for k in ("0", "1", "2")])
    db_front = {tuple(float(v) for v in t.values) for t in study.best_trials}
    assert db_front and db_front == _front(reported[OBJ].to_numpy(float))


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("override", "says"), [
    ("hydra.launcher.partition=nope", "error: hydra.launcher.partition=nope is not a partition"),
    ("hydra.launcher.mem_gb=100000", "error: hydra.launcher.mem_gb=100000 is more than any node"),
    ("hydra.launcher.cpus_per_task=4096",
     "error: hydra.launcher.cpus_per_task=4096 is more than any node"),
])
def test_impossible_requests_are_one_line(override: str, says: str, cluster: SlurmCluster,
                                          cache: Path, tmp_path: Path) -> None:
    queued = len(_squeue(cluster, "%i"))
    done = _sweep(["+debug=tiny", "seed=0,1", override, f"hydra.sweep.dir={tmp_path / 's'}"],
                  cluster=cluster, cache=cache, cwd=tmp_path)
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-3000:]
    assert lines[0].startswith(says) and "; " in lines[0]
    assert len(_squeue(cluster, "%i")) == queued  # nothing submitted


def test_controller_not_answering_is_one_line(cluster: SlurmCluster, cache: Path,
                                              tmp_path: Path) -> None:
    from tests.search._postgres import free_port

    dead = tmp_path / "slurm.conf"
    text = cluster.conf.read_text().replace("MessageTimeout=60", "MessageTimeout=5")
    dead.write_text(f"{text}SlurmctldPort={free_port()}\n")  # nothing listens there
    env = {**cluster.env(EENN_CACHE_DIR=str(cache)), "SLURM_CONF": str(dead)}
    done = subprocess.run([sys.executable, "-m", "search", "-m", "hydra/launcher=slurm",
                           *RESOURCES, "+debug=tiny", "seed=0,1",
                           f"hydra.sweep.dir={tmp_path / 's'}", f"cache_dir={cache}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
                          check=False)
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-3000:]
    assert lines[0].startswith("error: hydra/launcher=slurm: the SLURM controller does not "
                               "answer") and "scontrol ping" in lines[0]
    assert not (tmp_path / "s" / ".submitit").exists()  # nothing submitted
