"""Backends side by side on the default experiment at equal budget (hypervolume of val objectives).

The default experiment (MNIST-5k, MnistCNN, three_tier, objectives
[error, macs, energy]) is prepared once (``search.pipeline.prepare``, warm
cache expected), then ``search.loop.run_search`` runs each backend
(pymoo NSGA-II, Optuna NSGA-II, Optuna TPE, random search) at the SAME budget
per seed, with the reference strategies switched off inside those runs; the
manual recipe (deterministic, no seed) is evaluated once. Optuna studies are
kept in memory (``storage: ":memory:"``).

Hypervolume: pymoo ``HV`` on the val objectives of the feasible points, with
ONE ideal/nadir normalisation and ONE reference point (nadir + 10% of the
range) taken over the feasible points of all runs together, so the figures
are comparable across strategies and seeds. Also recorded per run: wall time
and the chosen point (cheapest feasible by MACs: test accuracy, MACs reduction).

Writes results/benchmarks/backends_default.json. Run:
``python benchmarks/bench_backends_default.py [--budget 3000] [--seeds 2]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from _provenance import code_state

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hydra import compose, initialize_config_module  # noqa: E402
from pymoo.indicators.hv import HV  # noqa: E402

from evaluators.proxy import ProxyEvaluator  # noqa: E402
from evaluators.settings import plain  # noqa: E402
from search.loop import run_search  # noqa: E402
from search.pipeline import prepare  # noqa: E402
from search.results import choose  # noqa: E402
from search.run import backbone_reference  # noqa: E402
from search.rundir import config_from_json  # noqa: E402
from spaces.space import build_space  # noqa: E402

BACKENDS = ("pymoo_nsga2", "optuna_nsga2", "optuna_tpe", "random")
OUT = ROOT / "results" / "benchmarks" / "backends_default.json"


def _search_cfg(backend: str, budget: int, baselines: list[str]) -> dict[str, Any]:
    with initialize_config_module("conf", version_base="1.3"):
        cfg = plain(compose("config", overrides=[f"search={backend}"]))
    s = dict(cfg["search"])
    s.update(budget=budget, baselines=baselines)
    if "storage" in s:
        s["storage"] = ":memory:"
    return s


def _chosen(df: pd.DataFrame, strategy: str, objectives: list[str], test_ev: ProxyEvaluator,
            ref: dict[str, float]) -> dict[str, Any]:
    row, message = choose(df, objectives, strategy)
    if row is None or not bool(row["feasible"]):
        return {"feasible": False, "message": message}
    test = test_ev.evaluate([config_from_json(str(row["config"]))])
    acc_test, macs, energy = float(test.accuracy[0]), float(row["macs"]), float(row["energy_j"])
    return {"trial": int(row["trial"]), "accuracy_val": float(row["accuracy"]),
            "accuracy_test": acc_test,
            "test_accuracy_change_pt": round(100 * (acc_test - ref["accuracy_test"]), 3),
            "macs_val": macs, "macs_reduction_val": round(1 - macs / ref["macs"], 4),
            "energy_reduction_vs_first_device": round(1 - energy / ref["energy_j_first"], 4),
            "energy_reduction_vs_last_device": round(1 - energy / ref["energy_j_last"], 4)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=int, default=3000)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--backends", nargs="*", default=list(BACKENDS))
    args = ap.parse_args()
    with initialize_config_module("conf", version_base="1.3"):
        cfg = plain(compose("config"))
    t0 = time.perf_counter()
    prepared = prepare(cfg, progress=False)
    prep_s = time.perf_counter() - t0
    table, objectives = prepared.predictions, list(cfg["objectives"])
    space = build_space(cfg["space"], val=table.val, platform=prepared.platform)
    kw = {"costs": prepared.costs, "platform": prepared.platform,
          "threshold_grid": space.threshold_grid}
    val_ev, test_ev = ProxyEvaluator(split=table.val, **kw), ProxyEvaluator(split=table.test, **kw)
    ref = backbone_reference(prepared)
    frames: list[pd.DataFrame] = []
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench_backends_") as tmp:
        jobs = [(b, s, []) for s in range(args.seeds) for b in args.backends]
        jobs.append(("random", 0, ["manual"]))  # the manual recipe rides on a zero-budget call
        for backend, seed, base in jobs:
            budget = 0 if base else args.budget
            s_cfg = _search_cfg(backend, max(budget, 1), base)
            if base:
                s_cfg["budget"] = 1  # SearchSettings needs >= 1; the one random trial is dropped
            run_dir = Path(tmp) / f"{backend}_{seed}_{'_'.join(base)}"
            t1 = time.perf_counter()
            res = run_search(evaluator=val_ev, space=space, settings=s_cfg,
                             objectives=objectives, constraints=cfg["constraints"], seed=seed,
                             run_dir=run_dir, progress=False)
            wall = time.perf_counter() - t1
            df = res.records
            strategy = "manual" if base else backend
            df = df[df["strategy"] == strategy].assign(seed=seed)
            frames.append(df)
            runs.append({"strategy": strategy, "seed": seed, "n_trials": len(df),
                         "n_feasible": int(df["feasible"].sum()), "wall_s": round(wall, 2),
                         "chosen": _chosen(df, strategy, objectives, test_ev, ref)})
            print(runs[-1], flush=True)
    allf = pd.concat(frames, ignore_index=True)
    cols = [f"obj_{o}" for o in objectives]
    feas = allf[allf["feasible"]]
    F = feas[cols].to_numpy(float)
    ideal, nadir = F.min(axis=0), F.max(axis=0)
    span = np.where(nadir > ideal, nadir - ideal, 1e-12)
    ref_pt = ideal + 1.1 * span
    hv = HV(ref_point=ref_pt, ideal=ideal, nadir=ideal + span, zero_to_one=True)
    for r in runs:
        g = feas[(feas["strategy"] == r["strategy"]) & (feas["seed"] == r["seed"])]
        r["hypervolume"] = round(float(hv(g[cols].to_numpy(float))), 5) if len(g) else 0.0
    per = {}
    for st in dict.fromkeys(r["strategy"] for r in runs):
        mine = [r for r in runs if r["strategy"] == st]
        vals = [r["hypervolume"] for r in mine]
        per[st] = {"hv_mean": round(float(np.mean(vals)), 5), "hv_min": min(vals),
                   "hv_max": max(vals),
                   "wall_s_mean": round(float(np.mean([r["wall_s"] for r in mine])), 2)}
    result = {
        "benchmark": "backends_default",
        "experiment": "default (mnist5k, mnist_cnn, three_tier)", "objectives": objectives,
        "budget_per_strategy": args.budget, "seeds": args.seeds,
        "budget_note": "equal budget for every backend (default config: 3000; TPE's own is 1000)",
        "manual_note": "manual recipe is deterministic: evaluated once (its full sweep), "
                       "not budget-bound",
        "hv": {"indicator": "pymoo.indicators.hv.HV, zero_to_one=True",
               "ideal": ideal.tolist(), "nadir": (ideal + span).tolist(),
               "reference_point_raw": ref_pt.tolist(),
               "normalisation": "ideal/nadir over feasible val points of ALL runs; "
                                "ref = nadir + 10% range"},
        "prepare_s": round(prep_s, 2),
        "prepare_trained_backbone": bool(prepared.backbone.trained_now),
        "backbone": ref,
        "per_strategy": per, "runs": runs,
        "code": code_state(),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "loadavg_end": list(os.getloadavg()), "note": "2 cores shared with other jobs"},
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2, default=float) + "\n")
    print(json.dumps(per, indent=2))


if __name__ == "__main__":
    main()
