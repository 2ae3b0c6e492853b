"""Benchmark: evaluations per second through the whole search loop on the default problem.

The default experiment (MNIST-5k, MnistCNN, three_tier, objectives [error,
macs, energy]) is prepared once in process (``search.pipeline.prepare``; a
warm cache is expected, a cold one is filled first), then
``search.loop.run_search`` drives each strategy alone (reference strategies
off) and its own timer (``SearchResult.seconds``: ask, repair, decode, proxy,
tell and the trial log, per strategy) gives evaluations per second. The
manual recipe is timed as it runs in every search. pymoo NSGA-II also runs at
30,000 evaluations, whose whole ``run_search`` call (with writing pareto.csv
and chosen.yaml) is compared with the whole call at 3,000 evaluations of the
code at ``--baseline`` (default: the commit before the vectorised loop),
measured in the same run in a temporary git worktree of that commit.

Writes results/benchmarks/search_loop.json. Run:
``python benchmarks/bench_search_loop.py [--baseline COMMIT | --baseline none]``.
Target (issue 13): >= 10,000 evaluations/s for pymoo NSGA-II, random and the
manual recipe; 30,000 evaluations cost less than the baseline's 3,000.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(os.environ.get("BENCH_CODE_ROOT", Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(ROOT))
OUT = Path(__file__).resolve().parents[1] / "results" / "benchmarks" / "search_loop.json"
BASELINE = "60017cb"  # last commit with the per-genome loop
TARGET_EVALS_PER_S = 10_000


def _problem() -> tuple[Any, Any, Any]:
    """The default experiment's space and val evaluator, prepared in process."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from evaluators.proxy import ProxyEvaluator
    from search.pipeline import prepare
    from spaces.space import build_space

    with initialize_config_module("conf", version_base="1.3"):  # also the baseline's code
        cfg = OmegaConf.to_container(compose("config"), resolve=True)
    prepared = prepare(cfg, progress=False)
    table = prepared.predictions
    space = build_space(cfg["space"], val=table.val, platform=prepared.platform)
    ev = ProxyEvaluator(split=table.val, costs=prepared.costs, platform=prepared.platform,
                        threshold_grid=space.threshold_grid)
    return cfg, space, ev


def _search(cfg: dict[str, Any], space: Any, ev: Any, *, backend: str, budget: int,
            baselines: list[str]) -> tuple[Any, float]:
    from search.loop import run_search

    search = {**cfg["search"], "backend": backend, "budget": budget, "baselines": baselines}
    if backend.startswith("optuna"):
        search["storage"] = ":memory:"
    # the baseline commit named this argument cfg_search
    name = "cfg_search" if "cfg_search" in inspect.signature(run_search).parameters else "settings"
    with tempfile.TemporaryDirectory() as run_dir:
        t0 = time.perf_counter()
        result = run_search(evaluator=ev, space=space, **{name: search},
                            objectives=cfg["objectives"], constraints=cfg["constraints"],
                            seed=0, run_dir=Path(run_dir), progress=False)
        return result, time.perf_counter() - t0


def _rate(result: Any, strategy: str) -> dict[str, Any]:
    n = int((result.records["strategy"] == strategy).sum())
    s = result.seconds[strategy]
    return {"evaluations": n, "loop_s": round(s, 4), "evals_per_s": round(n / s, 1)}


def _current() -> dict[str, Any]:
    cfg, space, ev = _problem()
    out: dict[str, Any] = {}
    for backend, budget in (("pymoo_nsga2", 3000), ("random", 3000), ("optuna_nsga2", 1000),
                            ("optuna_tpe", 300)):
        # warm-up: the backend's modules are imported once per process, not per search
        _search(cfg, space, ev, backend=backend, budget=100, baselines=[])
        result, _ = _search(cfg, space, ev, backend=backend, budget=budget, baselines=[])
        out[backend] = _rate(result, backend)
    result, _ = _search(cfg, space, ev, backend="random", budget=1, baselines=["manual"])
    out["manual"] = _rate(result, "manual")
    result, wall = _search(cfg, space, ev, backend="pymoo_nsga2", budget=30_000, baselines=[])
    out["pymoo_nsga2_30000"] = {**_rate(result, "pymoo_nsga2"), "run_search_wall_s": round(wall, 3)}
    return out


def _legacy_3000() -> dict[str, Any]:
    """The whole run_search call, pymoo NSGA-II at 3,000 evaluations (any version of the code)."""
    cfg, space, ev = _problem()
    _search(cfg, space, ev, backend="random", budget=200, baselines=[])
    _, wall = _search(cfg, space, ev, backend="pymoo_nsga2", budget=3000, baselines=[])
    return {"run_search_wall_s": round(wall, 3), "evals_per_s": round(3000 / wall, 1)}


def _baseline(commit: str) -> dict[str, Any]:
    """:func:`_legacy_3000` on ``commit``, in a temporary worktree, in a subprocess."""
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), commit],
                       check=True, capture_output=True)
        try:
            env = dict(os.environ, BENCH_CODE_ROOT=str(tree), PYTHONPATH=str(tree))
            proc = subprocess.run([sys.executable, __file__, "--legacy-only"], env=env,
                                  cwd=ROOT, capture_output=True, text=True, check=True)
            return {"commit": commit, **json.loads(proc.stdout.strip().splitlines()[-1])}
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                           check=False, capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default=BASELINE, help="commit to compare, or 'none'")
    parser.add_argument("--legacy-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.legacy_only:
        print(json.dumps(_legacy_3000()))
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _provenance import code_state

    current = _current()
    base = _baseline(args.baseline) if args.baseline != "none" else None
    rates = {k: current[k]["evals_per_s"] for k in ("pymoo_nsga2", "random", "manual")}
    result = {
        "benchmark": "search_loop",
        "what": "evaluations/s through run_search (ask, repair, decode, proxy, tell, trial log) "
                "on the default problem, one process",
        "code": code_state(),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "loadavg_end": list(os.getloadavg()),
                    "note": "2 cores shared with other jobs; compare figures of one run"},
        "target_evals_per_s": TARGET_EVALS_PER_S,
        "current": current,
        "baseline": base,
        "meets": {
            "evals_per_s": all(r >= TARGET_EVALS_PER_S for r in rates.values()),
            "30000_cost_less_than_baseline_3000": None if base is None else
            current["pymoo_nsga2_30000"]["run_search_wall_s"] < base["run_search_wall_s"],
        },
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("current", "baseline", "meets")}, indent=2))


if __name__ == "__main__":
    main()
