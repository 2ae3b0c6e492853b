"""Test fixture: a throwaway PostgreSQL cluster in a temporary folder, stopped and removed after.

Uses Debian's server binaries (``apt-get install -y postgresql``; they live in
/usr/lib/postgresql/<version>/bin, not on PATH) and the psycopg2 driver. The cluster listens
on 127.0.0.1 at a free port and on a Unix socket in its own folder, with ``trust``
authentication, so nothing on the machine is touched. Run as root, the server runs as the
``postgres`` user (PostgreSQL refuses root).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PostgresCluster", "free_port", "missing_reason", "postgres_cluster"]

_APT = "apt-get install -y postgresql"


@dataclass(frozen=True, kw_only=True)
class PostgresCluster:
    """A running cluster: its SQLAlchemy URL (database ``postgres``) and where it lives."""

    url: str
    port: int
    folder: Path


def _bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _version(path: str) -> int:
    part = Path(path).parent.parent.name
    return int(part) if part.isdigit() else 0


def missing_reason() -> str | None:
    """Why the cluster cannot start here (a skip reason), or None when it can."""
    if _bin_dir() is None:
        return f"PostgreSQL server binaries not found (install them: {_APT})"
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        return "psycopg2 is not installed (pip install psycopg2-binary)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return f"running as root but there is no 'postgres' user (install: {_APT})"
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_owner(cmd: list[str], folder: Path) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` as the cluster's owner: ``postgres`` when we are root, else ourselves."""
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    return subprocess.run(cmd, cwd=folder, capture_output=True, text=True, timeout=120,
                          check=False)


def _checked(done: subprocess.CompletedProcess[str], what: str) -> None:
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed ({done.returncode}): {done.stderr.strip()[-500:]}")


@contextmanager
def postgres_cluster() -> Iterator[PostgresCluster]:
    """Start a fresh cluster (initdb + pg_ctl start); always stop it and delete its folder."""
    reason = missing_reason()
    if reason:
        raise RuntimeError(reason)
    bin_dir = _bin_dir()
    assert bin_dir is not None
    # under /tmp, not pytest's 0700 root-owned tmp_path, so the postgres user can reach it
    folder = Path(tempfile.mkdtemp(prefix="eenn-pg-"))
    data, sock = folder / "data", folder / "sock"
    sock.mkdir()
    if os.geteuid() == 0:
        entry = pwd.getpwnam("postgres")
        for path in (folder, sock):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    port = free_port()
    try:
        _checked(_as_owner([str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U",
                            "postgres", "--no-sync", "-E", "UTF8"], folder), "initdb")
        options = (f"-k {sock} -p {port} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c max_connections=50")
        _checked(_as_owner([str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l",
                            str(folder / "server.log"), "-w", "-t", "60", "start"], folder),
                 "pg_ctl start")
        try:
            yield PostgresCluster(url=f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres",
                                  port=port, folder=folder)
        finally:
            _as_owner([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                      folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
