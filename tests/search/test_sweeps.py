"""Hydra multirun sweeps of ``python -m search`` with the basic, joblib and submitit-local
launchers, the SLURM presets (as the sbatch script submitit would submit), and one
comparison report over a sweep's job folders.
"""

from __future__ import annotations

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


@pytest.mark.parametrize(("preset", "gpus"), [("slurm", None), ("slurm_gpu", 1)])
def test_slurm_presets_make_a_valid_sbatch_script(preset: str, gpus: int | None,
                                                  tmp_path: Path) -> None:
    from submitit.slurm.slurm import SlurmExecutor, _make_sbatch_string

    params = _launcher(preset, ["hydra.launcher.partition=gpu", "hydra.launcher.account=lab"])
    assert params["_target_"].endswith("SlurmLauncher") and params["gpus_per_node"] == gpus
    # the mapping the submitit launcher applies (AutoExecutor generic names -> SLURM names)
    generic = SlurmExecutor._equivalence_dict()
    skip = {"_target_", "submitit_folder", "max_num_timeout", "setup", "additional_parameters",
            "stderr_to_stdout", "srun_args"}
    sbatch: dict[str, Any] = {}
    for key, value in params.items():
        if key in skip or value is None:
            continue
        key = generic.get(key, key)
        sbatch[key] = f"{value}GB" if key == "mem" else value
    sbatch["job_name"] = "search"
    script = _make_sbatch_string(command="python -m search", folder=str(tmp_path), **sbatch)
    for line in ("#SBATCH --partition=gpu", "#SBATCH --account=lab", "#SBATCH --time=",
                 f"#SBATCH --cpus-per-task={params['cpus_per_task']}",
                 f"#SBATCH --mem={params['mem_gb']}GB"):
        assert line in script, line
    assert ("#SBATCH --gpus-per-node=1" in script) == (gpus == 1)
    assert "#SBATCH --signal=USR2@" in script  # preemption: submitit requeues the job


def test_local_presets_compose() -> None:
    assert _launcher("parallel", [])["n_jobs"] == 2
    local = _launcher("local", [])
    assert local["_target_"].endswith("LocalLauncher") and local["timeout_min"] >= 10
