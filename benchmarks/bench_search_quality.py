"""Search quality: hypervolume of each backend's front vs the exact front of an enumerable space.

Space: 5 exit candidates, 2 heads, 8 quantile threshold levels, 2 devices
(17^5 exit settings x 7 boundaries = 9,938,999 EENNs), objectives
[error, energy], constraints: accuracy drop <= 3 points (95% bound) and
memory. Every EENN is scored with the proxy (array batches), the exact
feasible Pareto front is extracted, and each backend (same budget, several
seeds) is run through ``search.loop.run_search``. Hypervolumes (pymoo) use
the exact front's ideal/nadir and a reference point 10% beyond its nadir.

Two more figures put the NSGA-II result in context:

* ``budget_curve`` (``--curve 1000,2000,3000,6000``): the default pymoo NSGA-II
  run to the largest budget, its hypervolume ratio read after each prefix of
  its evaluations, so one sees whether a shortfall is budget or stagnation.
* ``oracle_placements`` (``--oracle``): NSGA-II told the answer's device
  placements. The budget is split evenly among the placements that hold a
  point of the exact front, and one pymoo NSGA-II runs per placement with
  that mapping pinned (``space.boundaries``), population 50 (a pinned
  placement gets a share of the budget, so more, smaller generations). No
  real search knows these placements, so this is an upper reference for
  NSGA-II at this budget.

Writes results/benchmarks/search_quality.json. Run:
``python benchmarks/bench_search_quality.py [--budget 3000] [--seeds 8] [--first-seed 0]
[--curve 1000,2000,3000,6000] [--oracle]``.
The hand-kept record of pymoo NSGA-II variants (``pymoo_nsga2_variants``) in an
existing output file is carried over.
Optuna runs use ``storage: ":memory:"`` (search quality, not persistence).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _provenance import code_state  # noqa: E402
from pymoo.indicators.hv import HV  # noqa: E402

from evaluators.platform import Platform  # noqa: E402
from evaluators.predictions import SplitPredictions  # noqa: E402
from evaluators.proxy import ConfigBatch, ConstraintSpec, ProxyEvaluator  # noqa: E402
from search.loop import run_search  # noqa: E402
from spaces.space import EarlyExitSpace, build_space  # noqa: E402
from tests._synthetic import synthetic_costs, synthetic_platform, synthetic_split  # noqa: E402

C, H, LEVELS, N = 5, 2, 8, 2000
OBJECTIVES = ("error", "energy")
ORACLE_POPULATION = 50  # per pinned placement: half the budget wants more generations
CONSTRAINTS = {"max_accuracy_drop": 0.03, "confidence": 0.95, "memory": True}


def _front_2d(F: np.ndarray) -> np.ndarray:
    """Indices of the non-dominated points of a 2-objective set (sort and sweep)."""
    order = np.lexsort((F[:, 1], F[:, 0]))
    best = np.minimum.accumulate(F[order, 1])
    keep = np.r_[True, F[order[1:], 1] < best[:-1]]
    return order[keep]


def exact_front(ev: ProxyEvaluator, grid: np.ndarray) -> tuple[np.ndarray, int, list[int]]:
    """Score every EENN; the exact feasible front, the space size, the front's placements."""
    spec = ConstraintSpec.from_mapping(CONSTRAINTS)
    options = [(-1, 0, 0)] + [(0, h, lv) for h in range(H) for lv in range(LEVELS)]
    settings = np.array(list(itertools.product(range(len(options)), repeat=C)))  # (9^C, C)
    opt = np.array(options)
    fronts, total, placement = [], 0, []
    for b in range(C + 2):
        for lo in range(0, len(settings), 100_000):
            s = opt[settings[lo:lo + 100_000]]  # (P, C, 3): on(-1 = off), head, level
            on = s[..., 0] == 0
            order = np.argsort(~on, axis=1, kind="stable")  # active exits first, in order
            cand = np.where(np.take_along_axis(on, order, 1), order, -1)
            head = np.take_along_axis(s[..., 1], order, 1)
            level = np.take_along_axis(s[..., 2], order, 1)
            thr = grid[np.maximum(cand, 0), head, level]
            batch = ConfigBatch(candidate=cand, head=head, threshold=thr,
                                boundaries=np.full((len(s), 1), b), metric=np.zeros(len(s), int))
            sc = ev.evaluate(batch)
            F, G = sc.objectives(OBJECTIVES), sc.constraints(spec)
            F = F[(G <= 0).all(axis=1)]
            fronts.append(F[_front_2d(F)] if len(F) else F)
            placement += [b] * len(fronts[-1])
            total += len(s)
    allF = np.concatenate(fronts)
    on_front = _front_2d(allF)
    return allF[on_front], total, sorted({placement[i] for i in on_front})


def _search(ev: ProxyEvaluator, space: EarlyExitSpace, backend: str, budget: int,
            seed: int, population: int = 100) -> tuple[np.ndarray, np.ndarray, float]:
    """Objective rows and feasibility of one backend run, in evaluation order; its wall time."""
    pop = 10 if backend == "optuna_tpe" else population
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        cfg = {"backend": backend, "budget": budget, "population": pop, "batch": pop,
               "baselines": [], "storage": ":memory:"}
        res = run_search(evaluator=ev, space=space, settings=cfg, objectives=OBJECTIVES,
                         constraints=CONSTRAINTS, seed=seed, run_dir=Path(d), progress=False)
        wall = time.perf_counter() - t
    rows = res.records.sort_values("trial")
    F = rows[[f"obj_{o}" for o in OBJECTIVES]].to_numpy(float)
    return F, rows["feasible"].to_numpy(bool), wall


def _hv_ratio(hv: HV, exact_hv: float, F: np.ndarray, feasible: np.ndarray) -> float:
    return float(hv(F[feasible])) / exact_hv if feasible.any() else 0.0


def _ratios(values: list[float]) -> dict[str, object]:
    r = np.array(values)
    return {"hv_ratio_mean": round(float(r.mean()), 4), "hv_ratio_min": round(float(r.min()), 4),
            "seeds_ge_0_99": int((r >= 0.99).sum()), "runs": len(r),
            "per_seed": [round(float(x), 4) for x in r]}


def budget_curve(ev: ProxyEvaluator, space: EarlyExitSpace, hv: HV, exact_hv: float,
                 marks: list[int], seeds: range) -> dict[str, object]:
    """Default NSGA-II run to ``max(marks)``; hypervolume ratio after each prefix."""
    per_mark: dict[int, list[float]] = {m: [] for m in marks}
    for seed in seeds:
        F, ok, _ = _search(ev, space, "pymoo_nsga2", max(marks), seed)
        for m in marks:
            per_mark[m].append(_hv_ratio(hv, exact_hv, F[:m], ok[:m]))
    return {str(m): _ratios(v) for m, v in per_mark.items()}


def oracle_placements(ev: ProxyEvaluator, cfg_space: dict[str, object], val: SplitPredictions,
                      platform: Platform, placements: list[int], hv: HV, exact_hv: float,
                      budget: int, seeds: range) -> dict[str, object]:
    """NSGA-II per front placement (mapping pinned), budget split evenly; union hypervolume."""
    shares = [budget // len(placements) + (i < budget % len(placements))
              for i in range(len(placements))]
    ratios = []
    for seed in seeds:
        runs = []
        for b, share in zip(placements, shares, strict=True):
            pinned = build_space({**cfg_space, "boundaries": [b]}, val=val, platform=platform)
            runs.append(_search(ev, pinned, "pymoo_nsga2", share, seed, ORACLE_POPULATION)[:2])
        ratios.append(_hv_ratio(hv, exact_hv, np.concatenate([F for F, _ in runs]),
                                np.concatenate([ok for _, ok in runs])))
    return {"placements": placements, "budget_per_placement": shares, **_ratios(ratios)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=int, default=3000)
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--first-seed", type=int, default=0, help="seeds first..first+seeds-1")
    ap.add_argument("--optuna-seeds", type=int, default=2, help="Optuna is slower per trial")
    ap.add_argument("--backends", default="pymoo_nsga2,optuna_nsga2,optuna_tpe,random")
    ap.add_argument("--curve", default="", help="budgets, e.g. 1000,2000,3000,6000 (16 seeds)")
    ap.add_argument("--oracle", action="store_true", help="NSGA-II per front placement (16 seeds)")
    ap.add_argument("--out", default=str(ROOT / "results/benchmarks/search_quality.json"))
    args = ap.parse_args()
    val = synthetic_split(n=N, c=C, h=H, seed=0)
    costs, platform = synthetic_costs(c=C, h=H, seed=1), synthetic_platform(2)
    cfg_space = {"max_exits": None, "thresholds": {"mode": "quantile", "levels": LEVELS}}
    space = build_space(cfg_space, val=val, platform=platform)
    grid = space.threshold_grid["max_softmax"]
    ev = ProxyEvaluator(split=val, costs=costs, platform=platform,
                        threshold_grid=space.threshold_grid)
    t0 = time.perf_counter()
    front, size, placements = exact_front(ev, grid)
    t_exact = time.perf_counter() - t0
    ideal, nadir = front.min(axis=0), front.max(axis=0)
    hv = HV(ref_point=nadir + 0.1 * (nadir - ideal), ideal=ideal, nadir=nadir, zero_to_one=True)
    exact_hv = float(hv(front))
    runs = []
    for backend in args.backends.split(","):
        n_seeds = args.optuna_seeds if backend.startswith("optuna") else args.seeds
        for seed in range(args.first_seed, args.first_seed + n_seeds):
            F, ok, wall = _search(ev, space, backend, args.budget, seed)
            runs.append({"backend": backend, "seed": seed, "evaluations": len(F),
                         "hv_ratio": _hv_ratio(hv, exact_hv, F, ok), "wall_s": round(wall, 2)})
            print(runs[-1], flush=True)
    summary = {}
    for backend in args.backends.split(","):
        r = [x["hv_ratio"] for x in runs if x["backend"] == backend]
        summary[backend] = {"hv_ratio_mean": float(np.mean(r)), "hv_ratio_min": float(np.min(r)),
                            "runs": len(r)}
    out = {"code": code_state(),
           "space": {"candidates": C, "heads": H, "threshold_levels": LEVELS, "devices": 2,
                     "val_samples": N, "size": size}, "objectives": list(OBJECTIVES),
           "constraints": CONSTRAINTS, "budget": args.budget, "first_seed": args.first_seed,
           "exact_front_points": len(front), "exact_front_placements": placements,
           "exact_enumeration_s": round(t_exact, 1), "exact_hv": exact_hv,
           "summary": summary, "runs": runs}
    if args.curve:
        out["budget_curve"] = budget_curve(ev, space, hv, exact_hv,
                                           [int(m) for m in args.curve.split(",")], range(16))
        print("budget_curve", json.dumps(out["budget_curve"]), flush=True)
    if args.oracle:
        out["oracle_placements"] = oracle_placements(ev, cfg_space, val, platform, placements,
                                                     hv, exact_hv, args.budget, range(16))
        print("oracle_placements", json.dumps(out["oracle_placements"]), flush=True)
    path = Path(args.out)
    if path.exists():  # keep the record of variants tried and figures not asked for this time
        old = json.loads(path.read_text())
        for key in ("pymoo_nsga2_variants", "budget_curve", "oracle_placements"):
            if key in old and key not in out:
                out[key] = old[key]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
