"""Atomic, checksummed cache entries shared by features, heads and prediction tables.

An entry is a folder of files plus ``manifest.json``. Files are written under a
``.part`` name and renamed when complete; the manifest (sizes and SHA-256 of
every file) is written last, by atomic rename. An entry without a manifest, or
whose files do not match it, is incomplete or corrupt: it is removed and
rebuilt, never read.

Several processes may share one cache folder (the jobs of a sweep): :func:`cache_lock` lets one
of them build while the others wait, then read what it wrote, so nothing is computed twice and
no process removes an entry another is still writing. Each holder appends one line to
``prepare.log`` in the folder (process, SLURM job, when it held the lock): the cache's record
of who prepared what, when.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import DTypeLike, NDArray

from evaluators.hashing import hash_file

__all__ = [
    "CacheError",
    "atomic_write",
    "cache_lock",
    "commit_entry",
    "ensure_writable",
    "open_array",
    "read_entry",
    "reset_entry",
]

MANIFEST = "manifest.json"
LOCK = ".prepare.lock"
JOURNAL = "prepare.log"
_log = logging.getLogger(__name__)


class CacheError(RuntimeError):
    """A cache folder that cannot be used; the message names the fix."""


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp)`` on a temporary file next to ``path``, then rename it to ``path``.

    Readers see the old file or the whole new one, never half a file. The temporary name
    keeps ``path``'s suffix, so writers that append one (``np.savez``) write where asked.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}"
    )
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def ensure_writable(root: Path) -> None:
    """Create ``root`` and check that files can be written there (one-line error if not)."""
    probe = root / f".write-probe-{os.getpid()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise CacheError(
            f"cache_dir={str(root)!r} is not writable ({err.strerror or err}); "
            "set cache_dir (or EENN_CACHE_DIR) to a writable folder"
        ) from None


def read_entry(path: Path, *, verify: bool = True) -> dict[str, Any] | None:
    """The manifest of a complete, intact entry at ``path``, else ``None``.

    A damaged entry (missing manifest, wrong size, wrong checksum) is removed
    so that the caller rebuilds it. ``verify=False`` skips the checksums
    (sizes are still checked).
    """
    manifest = path / MANIFEST
    if not manifest.is_file():
        if path.exists():
            _log.warning("cache entry %s is incomplete (no manifest); rebuilding it", path)
            reset_entry(path)
        return None
    try:
        meta: dict[str, Any] = json.loads(manifest.read_text())
        for name, info in meta["files"].items():
            file = path / name
            if file.stat().st_size != info["bytes"]:
                raise ValueError(
                    f"{name} has {file.stat().st_size} bytes, manifest says {info['bytes']}"
                )
            if verify and hash_file(file) != info["sha256"]:
                raise ValueError(f"{name} does not match its checksum")
    except (OSError, KeyError, TypeError, ValueError) as err:
        _log.warning("cache entry %s is corrupt (%s); rebuilding it", path, err)
        reset_entry(path)
        return None
    return meta


def reset_entry(path: Path) -> None:
    """Remove whatever is at ``path`` and create it as an empty folder."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)


def open_array(path: Path, name: str, shape: Sequence[int], dtype: DTypeLike) -> NDArray[Any]:
    """A writable ``.npy`` memory map ``path/name`` under a temporary ``.part`` name."""
    part = path / f"{name}.part"
    return np.lib.format.open_memmap(part, mode="w+", dtype=dtype, shape=tuple(shape))


def commit_entry(
    path: Path,
    files: Sequence[str],
    meta: Mapping[str, Any],
    *,
    checksums: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Finish an entry: rename ``.part`` files, checksum every file, write the manifest last.

    ``checksums`` (file name -> SHA-256 hex) are taken as given for files hashed while they
    were written (see :mod:`evaluators._npy_stream`); other files are read and hashed here.
    """
    known = checksums or {}
    info: dict[str, Any] = {}
    for name in files:
        part = path / f"{name}.part"
        if part.exists():
            os.replace(part, path / name)
        file = path / name
        digest = known[name] if name in known else hash_file(file)
        info[name] = {"bytes": file.stat().st_size, "sha256": digest}
    full = {**meta, "files": info}
    text = json.dumps(full, indent=1, sort_keys=True)
    atomic_write(path / MANIFEST, lambda tmp: tmp.write_text(text))
    return full


@contextmanager
def cache_lock(root: Path) -> Iterator[None]:
    """Hold the cache folder ``root`` exclusively (``flock`` on ``root/.prepare.lock``).

    A process that finds the lock taken logs that it waits, then blocks; the lock is released
    when the block ends or the process dies. On release, one JSON line goes to
    ``root/prepare.log``: pid, host, SLURM job (if any), when the lock was acquired and released.
    """
    ensure_writable(root)
    with open(root / LOCK, "a") as handle:
        asked = time.time()
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _log.info("another process is preparing cache_dir=%s; waiting for it", root)
            fcntl.flock(handle, fcntl.LOCK_EX)
        acquired = time.time()
        try:
            yield
        finally:
            record = {"pid": os.getpid(), "host": socket.gethostname(),
                      "slurm_job": _slurm_job(), "asked": asked, "acquired": acquired,
                      "released": time.time()}
            with open(root / JOURNAL, "a") as journal:
                journal.write(json.dumps(record) + "\n")
            fcntl.flock(handle, fcntl.LOCK_UN)


def _slurm_job() -> str | None:
    """This process's SLURM job id (``<array job>_<task>`` for an array element), if any."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return os.environ.get("SLURM_JOB_ID")
