"""Which code a benchmark measured: shared by the benchmark scripts (run as scripts, so this
folder is on ``sys.path``)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def code_state() -> dict[str, Any]:
    """The commit, and the files of the packages changed against it."""
    def git(*a: str) -> str:
        r = subprocess.run(["git", "-C", str(ROOT), *a], capture_output=True, text=True,
                           check=False)
        return r.stdout.strip() if r.returncode == 0 else ""
    commit = git("rev-parse", "HEAD") or os.environ.get("BENCH_COMMIT", "unknown")
    dirty = git("status", "--porcelain", "--", "search", "spaces", "evaluators", "conf")
    return {"commit": commit, "uncommitted_changes": dirty.splitlines() if dirty else [],
            "source": "git checkout" if git("rev-parse", "HEAD") else
            "clean export (git archive) of the commit"}
