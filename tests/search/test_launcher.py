"""The SLURM launcher's pieces without a cluster: the request check and the queue watcher.

``check_request`` is fed ``sinfo``'s answer as values; the watcher runs against stand-in
``squeue``/``sacct`` scripts on PATH. The real cluster path is tests/search/test_slurm.py.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from search.launcher import ARRAY, ENDED, LauncherError, Partition, QueueWatcher, check_request

PARTS = [Partition(name="cpu", default=True, cpus=8, mem_mb=16000),
         Partition(name="big", default=False, cpus=64, mem_mb=512000)]


@pytest.mark.parametrize(("params", "message"), [
    ({"partition": "gpu"}, "hydra.launcher.partition=gpu is not a partition of this cluster; "
                           "set hydra.launcher.partition to one of: cpu, big"),
    ({"partition": None, "mem_gb": 32}, "hydra.launcher.mem_gb=32 is more than any node of "
                                        "partition cpu has (16000 MB); lower"),
    ({"partition": "cpu", "cpus_per_task": 16}, "hydra.launcher.cpus_per_task=16 is more than "
                                                "any node of partition cpu has (8)"),
])
def test_impossible_requests_name_the_key(params: dict[str, object], message: str) -> None:
    with pytest.raises(LauncherError) as err:
        check_request(params, PARTS)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_possible_requests_pass() -> None:
    check_request({"partition": "big", "mem_gb": 32, "cpus_per_task": 16}, PARTS)
    check_request({"partition": None, "mem_gb": 15, "cpus_per_task": 8}, PARTS)
    with pytest.raises(LauncherError, match="no default partition"):
        check_request({"partition": None}, PARTS[1:])


def _tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, squeue: str, sacct: str) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, body in (("squeue", squeue), ("sacct", sacct)):
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")


def test_watcher_reads_squeue_and_marks_jobs_that_left_the_queue(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    _tools(tmp_path, monkeypatch,
           squeue="printf '7_0|RUNNING|n1\\n7_1|CANCELLED|n1\\n7_2|PENDING|\\n'",
           sacct="echo 'Slurm accounting storage is disabled' >&2; exit 1")
    watcher = QueueWatcher()
    for job in ("7", "7_0", "7_1", "7_2", "8_0"):
        watcher.register_job(job)
    with caplog.at_level(logging.INFO, logger="search.launcher"):
        for _ in range(3):
            watcher.update()
    states = {j: watcher.get_state(j, mode="cache") for j in watcher.jobs}
    assert states == {"7": ARRAY, "7_0": "RUNNING", "7_1": "CANCELLED", "7_2": "PENDING",
                      "8_0": ENDED}
    assert [watcher.is_done(j, mode="cache") for j in ("7_0", "7_1", "7_2", "8_0")] == [
        False, True, False, True]
    notes = [r.getMessage() for r in caplog.records]
    assert len(notes) == 1 and notes[0].startswith("sacct unavailable (Slurm accounting")


def test_watcher_warns_once_while_the_controller_is_away(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    down = "echo 'slurm_load_jobs error: Unable to contact slurm controller' >&2; exit 1"
    _tools(tmp_path, monkeypatch, squeue=down, sacct="exit 1")
    watcher = QueueWatcher()
    watcher.register_job("9_0")
    with caplog.at_level(logging.INFO, logger="search.launcher"):
        for _ in range(5):
            watcher.update()
        assert watcher.get_state("9_0", mode="cache") == "UNKNOWN"  # not finished
        _tools(tmp_path, monkeypatch, squeue="echo '9_0|COMPLETED|n1'", sacct="exit 1")
        watcher.update()
    assert watcher.get_state("9_0", mode="cache") == "COMPLETED"
    notes = [r.getMessage() for r in caplog.records]
    assert len(notes) == 2 and "Unable to contact" in notes[0]
    assert notes[1] == "squeue answers again"
