"""The Hydra SLURM launcher of ``hydra/launcher=slurm``: submitit's, checked and quiet.

Hydra loads launchers only from the ``hydra_plugins`` package, so the class is
``hydra_plugins.eenn_search.SlurmLauncher``; it calls :func:`checked_launch` here. Three things
differ from ``hydra_submitit_launcher``'s ``SlurmLauncher``:

- Before anything is submitted, ``sinfo`` is asked for the cluster's partitions, CPUs and
  memory: a controller that does not answer, a partition that does not exist, or a job that
  asks for more memory or CPUs than any node of its partition has is one line naming the key
  (``hydra.launcher.partition=...``) and the fix, not a submitit traceback. Whatever sbatch
  still refuses is mapped to one line too.
- Job states come from ``squeue`` (and ``sacct`` only where accounting answers). submitit
  asks ``sacct`` alone; with accounting disabled (common on small clusters) it warned
  "Bypassing sacct error" at every poll and never saw a job end without a result, so a
  cancelled job left the sweep waiting forever. A job that has left the queue entirely is
  ``ENDED``; its result file (or its absence) says how.
- A job that ends without a result (``scancel``, a node failure, out of memory): the launcher
  waits for the sweep's other jobs (so a rerun never races them), then says in one line which
  jobs, in what state, where their logs are, and how to resume: the same command with the same
  ``hydra.sweep.dir``; each run folder continues from its trials.parquet (a worker of a shared
  study also from the study).
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn
from submitit.core.utils import FailedJobError, UncompletedJobError
from submitit.slurm.slurm import SlurmInfoWatcher, SlurmJob

from search.errors import one_line_errors

__all__ = ["ENDED", "LauncherError", "Partition", "QueueWatcher", "check_request", "checked_launch"]

_log = logging.getLogger(__name__)
_KEY = "hydra.launcher"


class LauncherError(RuntimeError):
    """A sweep the cluster cannot run as asked; the message names the key and the fix."""


@dataclass(frozen=True, kw_only=True)
class Partition:
    """What ``sinfo`` says about one partition: its largest node and whether it is the default."""

    name: str
    default: bool
    cpus: int
    mem_mb: int


def _sinfo() -> list[Partition]:
    """The cluster's partitions, or a :class:`LauncherError` when the controller is away."""
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        raise LauncherError("hydra/launcher=slurm: sbatch/sinfo not found on PATH; run the "
                            "sweep on a SLURM login node, or use hydra/launcher=local")
    try:
        done = subprocess.run(["sinfo", "-h", "-o", "%P|%c|%m"], capture_output=True,
                              text=True, timeout=60, check=False)
    except subprocess.TimeoutExpired:
        done = subprocess.CompletedProcess([], 1, "", "no answer within 60 s")
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise LauncherError(f"hydra/launcher=slurm: the SLURM controller does not answer "
                            f"(sinfo: {why}); start slurmctld or point SLURM_CONF at your "
                            "cluster (check: scontrol ping)")
    found: dict[str, Partition] = {}
    for line in done.stdout.splitlines():
        name, cpus, mem = line.split("|")
        key = name.rstrip("*")
        old = found.get(key, Partition(name=key, default=False, cpus=0, mem_mb=0))
        found[key] = Partition(name=key, default=old.default or name.endswith("*"),
                               cpus=max(old.cpus, int(cpus.rstrip("+") or 0)),
                               mem_mb=max(old.mem_mb, int(mem.rstrip("+") or 0)))
    return list(found.values())


def check_request(params: Mapping[str, Any], partitions: Sequence[Partition]) -> None:
    """Refuse a partition, memory or CPU request no node of the cluster can meet."""
    names = ", ".join(p.name for p in partitions) or "none"
    wanted = params.get("partition")
    if wanted is None:
        chosen = [p for p in partitions if p.default]
        if not chosen:
            raise LauncherError(f"{_KEY}.partition=null but the cluster has no default "
                                f"partition; set {_KEY}.partition to one of: {names}")
    else:
        chosen = [p for p in partitions if p.name in str(wanted).split(",")]
        if not chosen:
            raise LauncherError(f"{_KEY}.partition={wanted} is not a partition of this cluster; "
                                f"set {_KEY}.partition to one of: {names} (null: the default)")
    mem_gb, cpus = params.get("mem_gb"), params.get("cpus_per_task")
    most_mb, most_cpus = max(p.mem_mb for p in chosen), max(p.cpus for p in chosen)
    where = "/".join(p.name for p in chosen)
    if mem_gb is not None and float(mem_gb) * 1024 > most_mb:
        raise LauncherError(f"{_KEY}.mem_gb={mem_gb} is more than any node of partition {where} "
                            f"has ({most_mb} MB); lower {_KEY}.mem_gb to at most "
                            f"{most_mb // 1024}, or choose a bigger {_KEY}.partition")
    if cpus is not None and int(cpus) > most_cpus:
        raise LauncherError(f"{_KEY}.cpus_per_task={cpus} is more than any node of partition "
                            f"{where} has ({most_cpus}); lower {_KEY}.cpus_per_task to at "
                            f"most {most_cpus}")


def _sbatch_error(err: FailedJobError) -> LauncherError:
    """sbatch's own refusal (its last ``error:`` line) as one line naming the keys to check."""
    lines = [ln.strip() for ln in str(err).splitlines() if "error" in ln.lower()]
    why = lines[-1] if lines else (str(err).strip().splitlines() or ["no message"])[-1]
    return LauncherError(f"sbatch refused the sweep ({why}); check {_KEY}.partition, "
                         f"{_KEY}.mem_gb, {_KEY}.cpus_per_task, {_KEY}.timeout_min and "
                         f"{_KEY}.account")


# States in which a job may still produce its result (submitit's list, plus SLURM's other
# transient states: a job configuring its node, suspended, held for requeue, signalled).
_ACTIVE = frozenset({"READY", "PENDING", "RUNNING", "UNKNOWN", "REQUEUED", "COMPLETING",
                     "PREEMPTED", "CONFIGURING", "SUSPENDED", "REQUEUE_HOLD", "REQUEUE_FED",
                     "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED"})
ENDED = "ENDED"  # left the queue; the result file (or its absence) says how
ARRAY = "ARRAY"  # a job array's own id, which squeue does not list; its elements are watched


class QueueWatcher(SlurmInfoWatcher):
    """Job states from ``squeue``; ``sacct`` only for jobs the queue no longer lists.

    Polls as submitit does (2, 4, 8, ... s after the last submission, then every
    ``delay_s``). A failing ``squeue`` (controller away) is one warning until it answers
    again, not one per poll; unavailable accounting is one info line for the whole sweep.
    """

    def __init__(self, delay_s: int = 30) -> None:
        super().__init__(delay_s=delay_s)
        self._sacct_works = True
        self._failing = False

    def is_done(self, job_id: str, mode: str = "standard") -> bool:
        return self.get_state(job_id, mode=mode).split()[0].upper() not in _ACTIVE

    def update(self) -> None:
        pending = self._registered - self._finished
        if not pending:
            return
        self._num_calls += 1
        info = self._squeue(sorted({j.split("_")[0] for j in pending}))
        if info is not None:
            arrays = {j.split("_")[0] for j in info if "_" in j}
            for master in pending & arrays:  # an array's own id: its elements carry the states
                info[master] = {"JobID": master, "State": ARRAY, "NodeList": ""}
            gone = sorted(j for j in pending if j not in info)
            if gone:
                info.update(self._left_queue(gone))
            self._info_dict.update(info)
        self._last_status_check = time.time()
        for job_id in pending:
            if self.is_done(job_id, mode="cache"):
                self._finished.add(job_id)

    @property
    def jobs(self) -> list[str]:
        """The ids of the jobs watched (array elements as ``<array>_<index>``), sorted."""
        return sorted(self._registered)

    def wait_all(self, poll_s: float = 2.0) -> None:
        """Block until every watched job has ended (polling squeue every ``poll_s``)."""
        while any(not self.is_done(j, mode="cache") for j in self._registered):
            time.sleep(poll_s)
            self.update()

    def _squeue(self, ids: list[str]) -> dict[str, dict[str, str]] | None:
        done = _quiet_run(["squeue", "-h", "-t", "all", "-r", "-o", "%i|%T|%N", "-j",
                           ",".join(ids)])
        if done.returncode != 0 and "invalid job id" not in done.stderr.lower():
            if not self._failing:
                why = (done.stderr.strip().splitlines() or ["no output"])[-1]
                _log.warning("squeue failed (%s); job states stay unknown until the SLURM "
                             "controller answers again", why)
            self._failing = True
            return None
        if self._failing:
            _log.info("squeue answers again")
        self._failing = False
        rows = (line.split("|") for line in done.stdout.splitlines() if line.count("|") == 2)
        return {jid: {"JobID": jid, "State": state, "NodeList": nodes}
                for jid, state, nodes in rows}

    def _left_queue(self, gone: list[str]) -> dict[str, dict[str, str]]:
        """Final states of jobs the queue forgot: from sacct when it works, else ``ENDED``."""
        found: dict[str, dict[str, str]] = {}
        if self._sacct_works:
            done = _quiet_run(["sacct", "-o", "JobID,State,NodeList", "--parsable2", "-j",
                               ",".join(sorted({j.split("_")[0] for j in gone}))])
            if done.returncode == 0:
                found = self.read_info(done.stdout)
            else:
                self._sacct_works = False
                why = (done.stderr.strip().splitlines() or ["no output"])[-1]
                _log.info("sacct unavailable (%s): a job that has left the queue is reported "
                          "%s, and its result file says how it ended", why, ENDED)
        return {j: found.get(j, {"JobID": j, "State": ENDED, "NodeList": ""}) for j in gone}


def _quiet_run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        return subprocess.CompletedProcess(cmd, 1, "", str(err))


@contextlib.contextmanager
def _watched_by(watcher: SlurmInfoWatcher) -> Iterator[None]:
    """Make ``watcher`` the one submitit's SLURM jobs ask, for this sweep only."""
    old = SlurmJob.watcher
    SlurmJob.watcher = watcher
    try:
        yield
    finally:
        SlurmJob.watcher = old


def _unfinished(watcher: QueueWatcher, submitit_folder: str, sweep_dir: str) -> LauncherError:
    """After every job has ended: those without a result, as one line, and how to resume."""
    watcher.wait_all()
    lost = []
    for job in (j for j in watcher.jobs if "_" in j):
        folder = Path(submitit_folder.replace("%j", job))
        if not (folder / f"{job}_0_result.pkl").exists():
            state = watcher.get_state(job, mode="cache")
            lost.append(f"{job} ({state}, log: {folder / f'{job}_0_log.err'})")
    return LauncherError(
        f"SLURM job{'s' if len(lost) > 1 else ''} {', '.join(lost) or '?'} ended without a "
        "result; what every job evaluated is in its run folder: run the same command with "
        f"hydra.sweep.dir={sweep_dir} to resume the sweep")


def checked_launch(launcher: Any, job_overrides: Sequence[Sequence[str]],
                   initial_job_idx: int,
                   launch: Callable[[Sequence[Sequence[str]], int], Sequence[JobReturn]],
                   ) -> Sequence[JobReturn]:
    """Run submitit's ``launch`` after the cluster check, with squeue states, one-line errors.

    ``launcher`` is the Hydra launcher (its ``params`` are the ``hydra.launcher`` keys).
    """
    sweep_dir = str(launcher.config.hydra.sweep.dir)
    with one_line_errors(LauncherError):
        check_request(launcher.params, _sinfo())
        held = io.StringIO()  # submitit prints sbatch's stderr itself; we say it once
        watcher = QueueWatcher()
        try:
            with contextlib.redirect_stderr(held), _watched_by(watcher):
                return launch(job_overrides, initial_job_idx)
        except FailedJobError as err:
            if "failed during processing" in str(err):
                raise  # the job's own exception: its traceback is the message
            raise _sbatch_error(err) from None
        except UncompletedJobError:
            _log.info("a job ended without a result; waiting for the sweep's other jobs")
            raise _unfinished(watcher, str(launcher.params["submitit_folder"]),
                              sweep_dir) from None
        finally:
            if "sbatch" not in held.getvalue():
                sys.stderr.write(held.getvalue())
