"""Writing a run's results: trials.parquet (incremental), pareto.csv, chosen.yaml.

The files, their columns and the Pareto flags are those of the run-folder
contract (:mod:`search.rundir`, documented in results/README.md); this module
fills them from the proxy's scores.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from numpy.typing import NDArray

from evaluators.eenn import EENNConfig
from evaluators.proxy import ConstraintSpec, ProxyEvaluator, ProxyScores
from search.rundir import (
    CHOSEN,
    PARETO,
    TRIALS,
    config_from_json,
    config_to_json,
    hypervolumes,
    pareto_flags,
)

# config_from_json, config_to_json and hypervolumes are search.rundir's, re-exported for callers
# that still import them from here
__all__ = ["TrialLog", "choose", "config_from_json", "config_to_json", "hypervolumes",
           "scores_to_records", "write_results"]


def _exit_lists(cfg: EENNConfig, s: ProxyScores, p: int) -> tuple[list[float], list[float | None]]:
    cands = [e.candidate for e in cfg.exits]
    n = [int(x) for x in s.exit_count[p, cands]] + [int(s.final_count[p])]
    ok = [int(x) for x in s.exit_correct[p, cands]] + [int(s.final_correct[p])]
    return [x / s.n_samples for x in n], [o / x if x else None for o, x in zip(ok, n, strict=True)]


def scores_to_records(*, configs: Sequence[EENNConfig], scores: ProxyScores, F: NDArray[np.float64],
                      G: NDArray[np.float64], objectives: Sequence[str],
                      constraint_names: Sequence[str], strategy: str, generation: int,
                      first_trial: int, confidence: float) -> pd.DataFrame:
    """One schema row per configuration (``pareto`` is filled in by :class:`TrialLog`)."""
    fr, acc = zip(*(_exit_lists(c, scores, p) for p, c in enumerate(configs)), strict=True)
    df = pd.DataFrame({
        "trial": np.arange(first_trial, first_trial + len(configs), dtype=np.int64),
        "strategy": strategy, "generation": np.int64(generation),
        "config": [config_to_json(c) for c in configs],
        "accuracy": scores.accuracy, "error": 1.0 - scores.accuracy, "macs": scores.macs,
        "energy_j": scores.energy_j, "latency_s": scores.latency_s,
        "exit_fractions": [json.dumps(x) for x in fr],
        "exit_accuracy": [json.dumps(x) for x in acc],
        "accuracy_drop": scores.accuracy_drop,
        "accuracy_drop_ub": scores.accuracy_drop_upper(confidence),
        "memory_ratio": scores.memory_ratio, "worst_latency_s": scores.worst_latency_s,
        "device_fractions": [json.dumps(x) for x in scores.finish_fraction.round(6).tolist()],
    })
    for i, name in enumerate(objectives):
        df[f"obj_{name}"] = F[:, i]
    for i, name in enumerate(constraint_names):
        df[f"cv_{name}"] = G[:, i]
    df["feasible"] = (G <= 0).all(axis=1) if G.size else True
    df["pareto"] = False
    return df


class TrialLog:
    """All trials of a run; rewrites trials.parquet atomically on every :meth:`flush`."""

    def __init__(self, run_dir: Path, *, objectives: Sequence[str],
                 constraint_names: Sequence[str]) -> None:
        self.path = Path(run_dir) / TRIALS
        self.objectives = tuple(objectives)
        self._frames: list[pd.DataFrame] = []
        if self.path.exists():
            try:
                old = pd.read_parquet(self.path)
            except Exception as err:  # pyarrow raises several types for a corrupt file
                raise ValueError(f"{self.path} is unreadable ({err}); move it away to start "
                                 "a fresh run in this folder") from err
            want = {f"obj_{o}" for o in objectives} | {f"cv_{c}" for c in constraint_names}
            have = {c for c in old.columns if c.startswith(("obj_", "cv_"))}
            if want != have:
                raise ValueError(f"{self.path} was written with columns {sorted(have)}, this run "
                                 f"needs {sorted(want)}; resume with the same objectives/"
                                 "constraints or use a new run folder")
            self._frames.append(old)

    @property
    def frame(self) -> pd.DataFrame:
        if not self._frames:
            return pd.DataFrame()
        if len(self._frames) > 1:
            self._frames = [pd.concat(self._frames, ignore_index=True)]
        return self._frames[0]

    def count(self, strategy: str) -> int:
        df = self.frame
        return int((df["strategy"] == strategy).sum()) if len(df) else 0

    @property
    def next_trial(self) -> int:
        df = self.frame
        return int(df["trial"].max()) + 1 if len(df) else 0

    def append(self, rows: pd.DataFrame) -> None:
        self._frames.append(rows)

    def flush(self) -> None:
        """Recompute Pareto flags and write trials.parquet (temp file, then rename)."""
        df = self.frame
        if not len(df):
            return
        df["pareto"] = pareto_flags(df, self.objectives)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp.parquet")
        df.to_parquet(tmp, index=False)
        tmp.replace(self.path)


def choose(df: pd.DataFrame, objectives: Sequence[str],
           strategy: str) -> tuple[pd.Series | None, str]:
    """Cheapest feasible row of ``strategy`` by the primary cost; else the closest, and why."""
    rows = df[df["strategy"] == strategy] if len(df) else df
    if not len(rows):
        return None, f"no trials of strategy {strategy!r} were evaluated"
    costs = [o for o in objectives if o != "error"]
    order = [f"obj_{costs[0]}", "error"] if costs else ["error"]
    feas = rows[rows["feasible"]]
    if len(feas):
        return feas.sort_values([*order, "trial"]).iloc[0], ""
    cv_cols = [c for c in rows.columns if c.startswith("cv_")]
    total = rows[cv_cols].clip(lower=0).sum(axis=1)
    best = rows.loc[total.idxmin()]
    parts = [f"{c[3:]} by {best[c]:.4g}" for c in cv_cols if best[c] > 0]
    return best, (f"no feasible point among {len(rows)} trials of {strategy}; the closest "
                  f"(trial {int(best['trial'])}) violates " + " and ".join(parts))


def _figures(ev: ProxyEvaluator, cfg: EENNConfig, spec: ConstraintSpec) -> dict[str, Any]:
    s = ev.evaluate([cfg])
    fr, acc = _exit_lists(cfg, s, 0)
    return {"accuracy": float(s.accuracy[0]), "error": float(1 - s.accuracy[0]),
            "backbone_accuracy": ev.backbone_accuracy,
            "accuracy_drop": float(s.accuracy_drop[0]),
            "accuracy_drop_ub": float(s.accuracy_drop_upper(spec.confidence)[0]),
            "macs": float(s.macs[0]), "energy_j": float(s.energy_j[0]),
            "latency_s": float(s.latency_s[0]), "worst_latency_s": float(s.worst_latency_s[0]),
            "memory_ratio": float(s.memory_ratio[0]), "exit_fractions": fr, "exit_accuracy": acc,
            "device_fractions": s.finish_fraction[0].tolist()}


def write_results(run_dir: Path, *, records: pd.DataFrame, objectives: Sequence[str],
                  strategy: str, constraints: ConstraintSpec, evaluator: ProxyEvaluator,
                  test_evaluator: ProxyEvaluator | None = None) -> dict[str, Any]:
    """Write pareto.csv and chosen.yaml (trials.parquet is the TrialLog's); return chosen."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    main = (records[(records["strategy"] == strategy) & records["pareto"]] if len(records)
            else records)
    main.to_csv(run_dir / PARETO, index=False)
    row, message = choose(records, objectives, strategy)
    chosen: dict[str, Any] = {"strategy": strategy, "feasible": False, "message": message}
    if row is not None:
        cfg = config_from_json(str(row["config"]))
        chosen.update({
            "trial": int(row["trial"]), "feasible": bool(row["feasible"]),
            "objectives": {o: float(row[f"obj_{o}"]) for o in objectives},
            "config": json.loads(config_to_json(cfg)),
            "val": _figures(evaluator, cfg, constraints),
            "test": _figures(test_evaluator, cfg, constraints) if test_evaluator else None,
        })
    with open(run_dir / CHOSEN, "w") as fh:
        yaml.safe_dump(chosen, fh, sort_keys=False)
    return chosen
