"""search.threads: parallel joblib jobs share the cores; an explicit count wins."""

from __future__ import annotations

import pytest
import torch

from search.threads import apply_cpu_threads, cpu_threads

JOBLIB = {"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"}
BASIC = {"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"}


def test_single_run_keeps_torch_default() -> None:
    assert cpu_threads(requested=0, launcher=BASIC, multirun=False, cpus=8) is None
    assert cpu_threads(requested=0, launcher=None, multirun=False, cpus=8) is None
    # a joblib launcher named without -m runs one job: nothing to share
    assert cpu_threads(requested=0, launcher={**JOBLIB, "n_jobs": 4}, multirun=False,
                       cpus=8) is None


@pytest.mark.parametrize(("n_jobs", "cpus", "threads"),
                         [(2, 8, 4), (3, 8, 2), (4, 2, 1), (-1, 8, 1), (-2, 8, 1), (-5, 8, 2),
                          (None, 8, 8)])
def test_joblib_sweep_shares_the_cores(n_jobs: int | None, cpus: int, threads: int) -> None:
    launcher = {**JOBLIB, "n_jobs": n_jobs}
    assert cpu_threads(requested=0, launcher=launcher, multirun=True, cpus=cpus) == threads


def test_requested_count_wins_and_negative_is_an_error() -> None:
    assert cpu_threads(requested=3, launcher={**JOBLIB, "n_jobs": 2}, multirun=True,
                       cpus=8) == 3
    with pytest.raises(ValueError, match="cpu_threads=-1"):
        cpu_threads(requested=-1, launcher=None, multirun=False, cpus=8)


def test_apply_sets_torch_threads_outside_hydra() -> None:
    before = torch.get_num_threads()
    try:
        assert apply_cpu_threads(1) == 1 == torch.get_num_threads()
        torch.set_num_threads(before)
        assert apply_cpu_threads(0) == before  # torch's default stays
    finally:
        torch.set_num_threads(before)
