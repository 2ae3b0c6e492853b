"""How many CPU threads torch may use in one job, so that parallel sweep jobs share the cores.

torch starts as many intra-op threads as the process may use cores. Two jobs of a joblib sweep
on the same cores then run twice as many threads as there are cores, and OpenMP threads that
spin while they wait for each other's turn on a core stall both jobs. ``cpu_threads`` in the
config fixes the count; 0 (the default) keeps torch's default for a single run and shares the
cores out between the parallel jobs of a joblib sweep (``hydra/launcher=parallel``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["apply_cpu_threads", "cpu_threads"]


def _parallel_jobs(launcher: Mapping[str, Any], cpus: int) -> int:
    """Jobs a joblib launcher runs at once (joblib's n_jobs: -1 all cores, -2 all but one)."""
    n_jobs = int(launcher.get("n_jobs") or 1)
    return max(1, n_jobs if n_jobs > 0 else cpus + 1 + n_jobs)


def cpu_threads(
    *, requested: int, launcher: Mapping[str, Any] | None, multirun: bool, cpus: int
) -> int | None:
    """Threads for this job, or ``None`` for torch's default.

    ``requested`` > 0 wins; under a joblib launcher in a multirun, the ``cpus`` shared out
    between its parallel jobs (at least one each); otherwise torch decides.
    """
    if requested < 0:
        raise ValueError(f"cpu_threads={requested} is negative; use 0 (automatic) or a count")
    if requested:
        return requested
    target = str((launcher or {}).get("_target_", ""))
    if multirun and "joblib" in target.lower():
        return max(1, cpus // _parallel_jobs(launcher or {}, cpus))
    return None


def apply_cpu_threads(requested: int) -> int:
    """Set torch's intra-op threads for this Hydra job (``cpu_threads``, parsed); return the
    count in use."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    launcher: Mapping[str, Any] | None = None
    multirun = False
    if HydraConfig.initialized():
        hydra_cfg = HydraConfig.get()
        launcher, multirun = hydra_cfg.launcher, hydra_cfg.mode == RunMode.MULTIRUN
    threads = cpu_threads(requested=requested, launcher=launcher,
                          multirun=multirun, cpus=len(os.sched_getaffinity(0)))
    if threads is not None:
        torch.set_num_threads(threads)
    return torch.get_num_threads()
