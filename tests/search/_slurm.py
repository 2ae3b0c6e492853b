"""Test fixture: a single-node SLURM cluster on this machine, shared by the test processes.

Uses Debian's ``slurm-wlm`` and ``munge`` packages (``apt-get install -y slurm-wlm munge``),
run as root: a private ``munged`` (its own key and socket), ``slurmctld`` and ``slurmd`` on the
short host name with ``AuthType=auth/munge``, ``ProctrackType=proctrack/linuxproc``,
``TaskPlugin=task/none``, one node with the machine's memory and at least 4 CPUs (declared,
so that ``array_parallelism``, not a 2-core machine, limits a sweep), one default partition,
accounting disabled (as on many small clusters). Everything lives in one folder under /tmp;
clients find the cluster through ``SLURM_CONF``, which sbatch hands on to the jobs.

Only one cluster can listen on SLURM's ports, so test processes share it: starting and stopping
happen under an exclusive lock file, each user holds a shared lock on a second file while it
uses the cluster, and the last user out stops the daemons and removes the folder. A cluster
left running by a crashed session is reused (or restarted if its configuration differs).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

__all__ = ["PARTITION", "SlurmCluster", "missing_reason", "slurm_cluster"]

_APT = "apt-get install -y slurm-wlm munge"
_TOOLS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scontrol", "scancel")
ROOT = Path("/tmp/eenn-slurm")
_START_LOCK = Path("/tmp/eenn-slurm.lock")
_USERS_LOCK = Path("/tmp/eenn-slurm.users")
PARTITION = "debug"


@dataclass(frozen=True, kw_only=True)
class SlurmCluster:
    """A running cluster: its configuration file and node, and the environment for clients."""

    conf: Path
    node: str
    cpus: int
    mem_mb: int
    startup_s: float  # 0.0 when an already running cluster was reused

    def env(self, **extra: str) -> dict[str, str]:
        """``os.environ`` plus ``SLURM_CONF`` (and ``extra``), for sbatch, squeue and the jobs."""
        return {**os.environ, "SLURM_CONF": str(self.conf), **extra}


def missing_reason() -> str | None:
    """Why the cluster cannot start here (a skip reason), or None when it can."""
    missing = [t for t in _TOOLS if shutil.which(t) is None]
    if missing:
        return f"SLURM/munge not installed ({', '.join(missing)} missing; install: {_APT})"
    if os.geteuid() != 0:
        return "the single-node SLURM cluster runs its daemons as root; run the tests as root"
    return None


def _run(cmd: list[str], conf: Path, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SLURM_CONF": str(conf)}
    try:
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout,
                              check=False)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(cmd, 124, "", f"no answer within {timeout} s")


def _node_memory_mb() -> int:
    """The node's memory as ``slurmd -C`` reports it, less 1 GiB for the system."""
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, timeout=30,
                         check=False).stdout
    for word in out.split():
        if word.startswith("RealMemory="):
            return max(1024, int(word.split("=", 1)[1]) - 1024)
    raise RuntimeError(f"slurmd -C reported no RealMemory: {out.strip()!r}")


def _config(node: str, cpus: int, mem_mb: int) -> str:
    """slurm.conf; ``cpus`` may exceed the machine's (config_overrides: the node takes them)."""
    return "\n".join([
        "ClusterName=eenn", f"SlurmctldHost={node}", "SlurmUser=root", "SlurmdUser=root",
        "AuthType=auth/munge", "CredType=cred/munge",
        f"AuthInfo=socket={ROOT / 'munge' / 'munge.socket'}",
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
        "SelectType=select/cons_tres", "SelectTypeParameters=CR_CPU_Memory",
        "SchedulerType=sched/backfill", "AccountingStorageType=accounting_storage/none",
        "JobAcctGatherType=jobacct_gather/none", "JobCompType=jobcomp/none", "MpiDefault=none",
        "SchedulerParameters=batch_sched_delay=0", "ReturnToService=2", "KillWait=5",
        "MessageTimeout=60", "UnkillableStepTimeout=180",
        "MinJobAge=900", "InactiveLimit=0", "SlurmdParameters=config_overrides",
        f"StateSaveLocation={ROOT / 'state'}", f"SlurmdSpoolDir={ROOT / 'spool'}",
        f"SlurmctldPidFile={ROOT / 'slurmctld.pid'}", f"SlurmdPidFile={ROOT / 'slurmd.pid'}",
        f"SlurmctldLogFile={ROOT / 'slurmctld.log'}", f"SlurmdLogFile={ROOT / 'slurmd.log'}",
        f"NodeName={node} CPUs={cpus} RealMemory={mem_mb} State=UNKNOWN",
        f"PartitionName={PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP", "",
    ])


def _pid_alive(pid_file: Path) -> bool:
    try:
        os.kill(int(pid_file.read_text().split()[0]), 0)
    except (OSError, ValueError, IndexError):
        return False
    return True


def _node_ready(conf: Path) -> bool:
    if _run(["scontrol", "ping"], conf, timeout=10).stdout.count("UP") < 1:
        return False
    states = _run(["sinfo", "-h", "-o", "%T"], conf, timeout=10).stdout.split()
    return bool(states) and all(s.rstrip("*~#") in {"idle", "mixed", "allocated"}
                                for s in states)


def _running(conf: Path, text: str) -> bool:
    """A cluster we started, with this configuration, answering and with its node up."""
    return (conf.is_file() and conf.read_text() == text
            and all(_pid_alive(ROOT / f"{d}.pid") for d in ("slurmctld", "slurmd"))
            and _pid_alive(ROOT / "munge" / "munged.pid") and _node_ready(conf))


def _start(conf: Path, text: str) -> None:
    """Clean state, a fresh munge key and daemon, then slurmctld and slurmd; wait for the node."""
    _stop(conf)
    munge = ROOT / "munge"
    for folder in (munge, ROOT / "state", ROOT / "spool"):
        folder.mkdir(parents=True)
    munge.chmod(0o711)  # clients reach the socket; the key stays root-only
    key = munge / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    conf.write_text(text)
    steps = [["munged", "--force", f"--key-file={key}", f"--socket={munge / 'munge.socket'}",
              f"--pid-file={munge / 'munged.pid'}", f"--log-file={munge / 'munged.log'}",
              f"--seed-file={munge / 'munged.seed'}"],
             ["slurmctld", "-f", str(conf)], ["slurmd", "-f", str(conf)]]
    for cmd in steps:
        done = _run(cmd, conf)
        if done.returncode != 0:
            raise RuntimeError(f"{cmd[0]} failed ({done.returncode}): {done.stderr.strip()}"
                               f"{_log_tail()}")
    deadline = time.monotonic() + 60
    while not _node_ready(conf):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the SLURM node did not come up within 60 s{_log_tail()}")
        time.sleep(0.2)


def _log_tail() -> str:
    lines = []
    for log in (ROOT / "slurmctld.log", ROOT / "slurmd.log", ROOT / "munge" / "munged.log"):
        if log.is_file():
            lines += [f"{log.name}: {ln}" for ln in log.read_text().splitlines()[-3:]]
    return ("\n" + "\n".join(lines)) if lines else ""


def _stop(conf: Path) -> None:
    """Cancel every job, stop the daemons (by their pid files) and remove the folder."""
    if conf.is_file():
        _run(["scancel", "--full", "--quiet", "--user=root"], conf, timeout=10)
        _run(["scontrol", "shutdown"], conf, timeout=10)
    for pid_file in (ROOT / "slurmctld.pid", ROOT / "slurmd.pid", ROOT / "munge" / "munged.pid"):
        _terminate(pid_file)
    shutil.rmtree(ROOT, ignore_errors=True)


def _terminate(pid_file: Path) -> None:
    """SIGTERM the daemon named by ``pid_file`` unless it is gone; wait up to 10 s."""
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0 if time.monotonic() + 8 < deadline else 15)
        except OSError:
            return
        time.sleep(0.1)


@contextmanager
def _locked(path: Path, mode: int) -> Iterator[IO[str]]:
    with open(path, "a+") as handle:
        fcntl.flock(handle, mode)
        yield handle


@contextmanager
def slurm_cluster() -> Iterator[SlurmCluster]:
    """Start the cluster (or join the one another test process runs); the last user stops it."""
    reason = missing_reason()
    if reason:
        raise RuntimeError(reason)
    # at least 4 CPUs, so that array_parallelism, not the node, limits a small sweep
    node, cpus, mem_mb = socket.gethostname().split(".")[0], max(4, os.cpu_count() or 1), \
        _node_memory_mb()
    conf, text = ROOT / "slurm.conf", _config(node, cpus, mem_mb)
    users = open(_USERS_LOCK, "a+")  # noqa: SIM115 (held for the whole session)
    try:
        with _locked(_START_LOCK, fcntl.LOCK_EX):
            started = time.monotonic()
            reuse = _running(conf, text)
            if not reuse:
                _start(conf, text)
            fcntl.flock(users, fcntl.LOCK_SH)
            startup = 0.0 if reuse else time.monotonic() - started
        yield SlurmCluster(conf=conf, node=node, cpus=cpus, mem_mb=mem_mb, startup_s=startup)
    finally:
        with _locked(_START_LOCK, fcntl.LOCK_EX):
            fcntl.flock(users, fcntl.LOCK_UN)
            try:
                fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pass  # another test process still uses the cluster; it stops it
            else:
                _stop(conf)
            users.close()
