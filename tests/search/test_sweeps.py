"""Hydra multirun sweeps of ``python -m search`` with the basic, joblib and submitit-local
launchers, the SLURM presets (as the sbatch script submitit would submit), and one
comparison report over a sweep's job folders.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from search.report.__main__ import main as report_main
from tests.search._datasets import RUN_FILES, search_cli, shared_cache


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_cache(tmp_path_factory)


def _jobs(sweep: Path, n: int) -> list[Path]:
    jobs = sorted((p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()),
                  key=lambda p: int(p.name))
    assert [p.name for p in jobs] == [str(i) for i in range(n)]
    return jobs


def _overrides(job: Path) -> dict[str, str]:
    pairs = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
    return dict(p.split("=", 1) for p in pairs)


def _check_job(job: Path) -> pd.DataFrame:
    for f in RUN_FILES:
        assert (job / f).is_file(), f"{job}/{f}"
    over, cfg = _overrides(job), yaml.safe_load((job / "config.yaml").read_text())
    trials = pd.read_parquet(job / "trials.parquet")
    backend = over["search"]
    assert cfg["search"]["backend"] == backend and cfg["seed"] == int(over.get("seed", 0))
    assert (trials["strategy"] == backend).sum() == cfg["search"]["budget"]
    return trials


@pytest.mark.slow
def test_basic_launcher_sweeps_seeds_and_backends_and_compares(tmp_path: Path,
                                                               cache: Path) -> None:
    sweep = tmp_path / "sweep"
    done = search_cli(["-m", "+debug=tiny", "seed=0,1", "search=random,optuna_tpe",
                       f"hydra.sweep.dir={sweep}"], cwd=tmp_path, cache=cache)
    assert done.returncode == 0, done.stderr[-3000:]
    jobs = _jobs(sweep, 4)
    seen = set()
    for job in jobs:
        _check_job(job)
        over = _overrides(job)
        seen.add((over["seed"], over["search"]))
        assert (job / "optuna.db").is_file() == (over["search"] == "optuna_tpe")
    assert seen == {(s, b) for s in ("0", "1") for b in ("random", "optuna_tpe")}
    # one comparison page over the sweep's job folders
    out = tmp_path / "comparison.html"
    assert report_main([*map(str, jobs), "--out", str(out)]) == 0
    page = out.read_text()
    assert page.lower().lstrip().startswith("<!doctype html")
    assert all(str(job) in page for job in jobs)


@pytest.mark.slow
def test_joblib_launcher_runs_jobs_in_parallel_processes(tmp_path: Path, cache: Path) -> None:
    sweep = tmp_path / "sweep"
    done = search_cli(["-m", "hydra/launcher=parallel", "+debug=tiny",
                       "search=random,pymoo_nsga2", f"hydra.sweep.dir={sweep}"],
                      cwd=tmp_path, cache=cache)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in done.stdout + done.stderr
    a, b = (_check_job(job) for job in _jobs(sweep, 2))
    assert set(a["strategy"]) != set(b["strategy"])


@pytest.mark.slow
def test_submitit_local_executor_runs_the_sweep(tmp_path: Path, cache: Path) -> None:
    sweep = tmp_path / "sweep"
    done = search_cli(["-m", "hydra/launcher=local", "+debug=tiny", "search=random,pymoo_nsga2",
                       f"hydra.sweep.dir={sweep}"], cwd=tmp_path, cache=cache)
    assert done.returncode == 0, done.stderr[-3000:]
    for job in _jobs(sweep, 2):
        _check_job(job)
    # each job ran in its own submitit subprocess, which left its logs and result
    logs = list((sweep / ".submitit").glob("*/*_log.out"))
    results = list((sweep / ".submitit").glob("*/*_result.pkl"))
    assert len(logs) == 2 and len(results) == 2


def _launcher(name: str, overrides: list[str]) -> dict[str, Any]:
    with initialize_config_module(config_module="conf", version_base="1.3"):
        cfg = compose(config_name="config", return_hydra_config=True,
                      overrides=[f"hydra/launcher={name}", *overrides])
    node = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
    assert isinstance(node, dict)
    return node


_SBATCH = """#!/bin/sh
# stand-in for SLURM's sbatch: keep the script it is given, refuse the job
for last; do :; done
cp "$last" "$SBATCH_CAPTURE"
echo "sbatch: error: test stand-in, no cluster" >&2
exit 1
"""


@pytest.mark.parametrize(("preset", "gpus"), [("slurm", None), ("slurm_gpu", 1)])
def test_slurm_presets_submit_a_valid_sbatch_script(preset: str, gpus: int | None,
                                                    tmp_path: Path) -> None:
    """The real launcher submits the sweep: stand-in srun/sbatch on PATH catch the script."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(_SBATCH)
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")  # submitit only checks it exists
    # the launcher's pre-check: one partition "gpu" whose node fits both presets
    (bin_dir / "sinfo").write_text("#!/bin/sh\necho 'gpu|16|131072'\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    script = tmp_path / "submitted.sh"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "SBATCH_CAPTURE": str(script)}
    done = subprocess.run(
        [sys.executable, "-m", "search", "-m", f"hydra/launcher={preset}", "+debug=tiny",
         "seed=0,1", "hydra.launcher.partition=gpu", "hydra.launcher.account=lab",
         f"hydra.sweep.dir={tmp_path / 'sweep'}", f"cache_dir={tmp_path / 'cache'}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-2000:]  # sbatch's refusal
    assert lines[0].startswith("error: sbatch refused the sweep (sbatch: error: test stand-in, "
                               "no cluster); check hydra.launcher.partition")
    params = _launcher(preset, [])
    text = script.read_text()
    for line in ("#SBATCH --partition=gpu", "#SBATCH --account=lab",
                 f"#SBATCH --time={params['timeout_min']}",
                 f"#SBATCH --cpus-per-task={params['cpus_per_task']}",
                 f"#SBATCH --mem={params['mem_gb']}GB",
                 f"#SBATCH --array=0-1%{min(params['array_parallelism'], 2)}"):  # 2 points
        assert line in text, line
    assert ("#SBATCH --gpus-per-node=1" in text) == (gpus == 1)
    assert "#SBATCH --signal=USR2@" in text  # preemption: submitit requeues the job
    assert f"-m submitit.core._submit {tmp_path / 'sweep'}" in text


def test_local_presets_compose() -> None:
    assert _launcher("parallel", [])["n_jobs"] == 2
    local = _launcher("local", [])
    assert local["_target_"].endswith("LocalLauncher") and local["timeout_min"] >= 10
