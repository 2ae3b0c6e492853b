"""`python -m search` end to end on the embedded default, shrunk to stay fast."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from hydra import compose, initialize_config_module
from rich.console import Console

from search.run import run

# A shrunk default: fewer samples, one short backbone training, a small search budget.
TINY = [
    "data.splits.train=600",
    "data.splits.val=300",
    "data.splits.test=300",
    "model.train.epochs=2",
    "heads.epochs=2",
    "search.budget=200",
    "search.population=20",
    "search.manual_thresholds=8",
    "device=cpu",
]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


def _compose(overrides: list[str]) -> dict:
    with initialize_config_module(config_module="conf", version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


@pytest.mark.slow
def test_run_writes_a_complete_run_folder(tmp_path: Path, cache_dir: Path) -> None:
    cfg = _compose([*TINY, f"cache_dir={cache_dir}"])
    out = run(cfg, run_dir=tmp_path / "run", console=Console(file=io.StringIO()), progress=False)
    run_dir = out.run_dir
    for name in (
        "config.yaml",
        "trials.parquet",
        "pareto.csv",
        "chosen.yaml",
        "summary.json",
        "summary.txt",
        "report.html",
    ):
        assert (run_dir / name).is_file(), name
    trials = pd.read_parquet(run_dir / "trials.parquet")
    assert set(trials["strategy"]) == {"pymoo_nsga2", "random", "manual"}
    assert (trials["strategy"] == "pymoo_nsga2").sum() == 200
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["objectives"] == ["error", "macs", "energy"]
    assert len(summary["candidates"]) == out.prepared.costs.n_candidates >= 3
    chosen = yaml.safe_load((run_dir / "chosen.yaml").read_text())
    row = trials.set_index("trial").loc[chosen["trial"]]
    assert row["strategy"] == "pymoo_nsga2"
    # the chosen point's val figures are the proxy's, and cheaper than the backbone alone
    assert chosen["val"]["macs"] == pytest.approx(row["macs"])
    assert chosen["val"]["macs"] < summary["backbone"]["macs"]
    if chosen["feasible"]:
        assert chosen["val"]["accuracy_drop_ub"] <= 0.01 + 1e-12
    text = (run_dir / "summary.txt").read_text()
    # every exit names its head, every share names where it leaves (the last: the backbone)
    assert all(f"[{summary['heads'][e['head']]}]" in text for e in chosen["config"]["exits"])
    assert "backbone " in text.split("exit distribution")[1].split("\n")[0]


@pytest.mark.slow
def test_second_run_reuses_every_cache(tmp_path: Path, cache_dir: Path) -> None:
    cfg = _compose([*TINY, f"cache_dir={cache_dir}", "search.budget=40"])
    quiet = Console(file=io.StringIO())
    first = run(cfg, run_dir=tmp_path / "a", console=quiet, progress=False)
    second = run(cfg, run_dir=tmp_path / "b", console=quiet, progress=False)
    assert not second.prepared.backbone.trained_now
    assert second.prepared.backbone.weights_hash == first.prepared.backbone.weights_hash
    a = pd.read_parquet(first.run_dir / "trials.parquet")
    b = pd.read_parquet(second.run_dir / "trials.parquet")
    pd.testing.assert_frame_equal(a, b)  # same seed, same results


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EENN_CACHE_DIR": str(cwd / "cache")}
    return subprocess.run(
        [sys.executable, "-m", "search", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_cli_runs_and_bad_override_is_one_line(tmp_path: Path, cache_dir: Path) -> None:
    done = _cli(
        [*TINY, f"cache_dir={cache_dir}", "search.budget=40", f"hydra.run.dir={tmp_path / 'run'}"],
        tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "run" / "report.html").is_file()
    assert "chosen point" in done.stdout

    bad = _cli(
        [
            *TINY,
            f"cache_dir={cache_dir}",
            "search.backend=simulated_annealing",
            f"hydra.run.dir={tmp_path / 'bad'}",
        ],
        tmp_path,
    )
    assert bad.returncode == 2
    lines = [ln for ln in bad.stderr.splitlines() if ln.strip()]
    assert lines[-1].startswith("error: ") and "simulated_annealing" in lines[-1]


@pytest.mark.slow
def test_run_without_a_feasible_eenn_says_so(tmp_path: Path, cache_dir: Path) -> None:
    cfg = _compose([*TINY, f"cache_dir={cache_dir}", "search.budget=40",
                    "constraints.max_latency_s=1e-9",
                    "constraints.guarantee.method=uncertified"])  # no pre-search note
    text = io.StringIO()
    out = run(cfg, run_dir=tmp_path / "run", console=Console(file=text, width=200),
              progress=False)
    summary = json.loads((out.run_dir / "summary.json").read_text())
    assert summary["status"] == "no_feasible_eenn"
    assert summary["violations"]["latency"] > 0
    assert any(r.startswith("constraints.max_latency_s=") for r in summary["relax"])
    assert (out.run_dir / "summary.txt").read_text().startswith("NO FEASIBLE EENN")
    assert text.getvalue().lstrip().startswith("NO FEASIBLE EENN")
    assert "not a result" in text.getvalue()
