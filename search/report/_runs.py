"""Which runs to compare: run folders, sweep (multirun) folders and globs, loaded and checked.

A folder is a run when it holds ``summary.json`` or ``trials.parquet`` (the run
folder contract, :mod:`search.rundir`). Any other folder is searched below for
runs (a Hydra sweep writes ``results/multirun/<time>/<job number>/``); one that
holds none is a one-line error. A run passed by name must be finished; a job
found inside a sweep that never finished is skipped with a visible note, so
one crashed job does not hide the others.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from search.rundir import SUMMARY_JSON, TRIALS, Run, RunFolderError, load_run

__all__ = ["FoundRuns", "ReportError", "find_runs", "is_run_folder"]


class ReportError(RunFolderError):
    """Run folders that cannot be reported on or compared together (one line, with the fix)."""


@dataclass(frozen=True, kw_only=True)
class FoundRuns:
    """The loaded runs in argument order, and what was skipped (one line each)."""

    runs: tuple[Run, ...]
    skipped: tuple[str, ...]


def is_run_folder(path: Path) -> bool:
    """Whether ``path`` is a run folder (finished or not): it holds summary.json or trials."""
    return (path / SUMMARY_JSON).is_file() or (path / TRIALS).is_file()


def _natural_key(path: Path) -> list[tuple[int, int | str]]:
    """Sort key that puts job 2 before job 10 (Hydra numbers a sweep's jobs 0, 1, ...)."""
    return [(0, int(t)) if t.isdigit() else (1, t) for t in re.split(r"(\d+)", str(path)) if t]


def _expand(arg: str) -> list[Path]:
    """The folders an argument names: itself, or the folders its glob pattern matches."""
    path = Path(arg)
    if path.exists() or not glob.has_magic(arg):
        return [path]
    matches = [Path(m) for m in glob.glob(arg)]
    # a pattern may name the files of runs (results/runs/*/summary.json): take their folders
    folders = {m.parent if m.name in (SUMMARY_JSON, TRIALS) else m for m in matches}
    folders = {f for f in folders if f.is_dir()}
    if not folders:
        raise ReportError(f"{arg} matches no folder; pass run folders, sweep folders "
                          "(results/multirun/<time>) or a glob that names them")
    return sorted(folders, key=_natural_key)


def _runs_below(folder: Path) -> list[Path]:
    """Run folders at or below ``folder`` (not inside a run, not in hidden folders)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        if SUMMARY_JSON in filenames or TRIALS in filenames:
            found.append(Path(dirpath))
            dirnames.clear()
        else:
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
    return sorted(found, key=_natural_key)


def _folders(args: Sequence[str | Path]) -> tuple[list[Path], list[str]]:
    """Run folders in argument order, and the unfinished jobs of sweeps that were skipped."""
    out: list[Path] = []
    skipped: list[str] = []
    for arg in args:
        for path in _expand(str(arg)):
            if not path.is_dir():
                raise ReportError(f"{path} does not exist (or is not a folder); pass a run "
                                  "folder (results/runs/<time>) or a sweep folder "
                                  "(results/multirun/<time>)")
            if is_run_folder(path):
                out.append(path)
                continue
            below = _runs_below(path)
            if not below:
                raise ReportError(f"{path} holds no run (no {SUMMARY_JSON} or {TRIALS} in it or "
                                  "below it); pass a run folder (results/runs/<time>) or a "
                                  "sweep folder (results/multirun/<time>)")
            for run in below:
                if (run / SUMMARY_JSON).is_file() and (run / TRIALS).is_file():
                    out.append(run)
                else:
                    skipped.append(f"{run}: not finished (no {SUMMARY_JSON} or {TRIALS} yet)")
    return out, skipped


def find_runs(args: Sequence[str | Path]) -> FoundRuns:
    """Resolve run folders, sweep folders and globs to loaded runs (duplicates once)."""
    if not args:
        raise ReportError("no run folders given; pass run folders, sweep folders or globs")
    folders, skipped = _folders(args)
    seen: set[Path] = set()
    runs = []
    for path in folders:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            runs.append(load_run(path))
    if not runs:
        raise ReportError(f"no finished run in {', '.join(map(str, args))}; "
                          f"skipped: {'; '.join(skipped)}")
    return FoundRuns(runs=tuple(runs), skipped=tuple(skipped))
