"""Writing a run's results: trials.parquet (incremental), pareto.csv, chosen.yaml.

The files, their columns and the Pareto flags are those of the run-folder
contract (:mod:`search.rundir`, documented in results/README.md); this module
fills them from the proxy's scores.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from numpy.typing import NDArray

from evaluators._cache import atomic_write
from evaluators.eenn import EENNConfig, exit_shares
from evaluators.proxy import ConfigBatch, ConstraintSpec, ProxyEvaluator, ProxyScores
from evaluators.risk import (
    GuaranteeSpec,
    certifiable_epsilon,
    certify,
    loss_counts,
    needed_calibration,
)
from search.rundir import (
    CHOSEN,
    PARETO,
    TRIALS,
    batch_to_json,
    config_from_json,
    config_to_json,
    json_list,
    non_dominated,
    pareto_flags,
)

__all__ = ["TrialLog", "choose", "choose_certified", "exit_lists", "guarantee_text",
           "scores_to_records", "violations", "write_results"]


def _exit_arrays(batch: ConfigBatch, s: ProxyScores) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """(P, K+1) samples leaving at each active exit (in order) then at the backbone, and correct."""
    at = np.maximum(batch.candidate, 0)
    valid = batch.candidate >= 0
    counts = np.where(valid, np.take_along_axis(s.exit_count, at, axis=1), 0)
    correct = np.where(valid, np.take_along_axis(s.exit_correct, at, axis=1), 0)
    # the backbone's share goes right after each row's last exit (rows have different lengths)
    k = valid.sum(axis=1)
    counts = np.concatenate([counts, np.zeros((len(k), 1), np.int64)], axis=1)
    correct = np.concatenate([correct, np.zeros((len(k), 1), np.int64)], axis=1)
    rows = np.arange(len(k))
    counts[rows, k], correct[rows, k] = s.final_count, s.final_correct
    return counts, correct


def exit_lists(batch: ConfigBatch, s: ProxyScores) -> tuple[list[list[float]],
                                                             list[list[float | None]]]:
    """Per row: share of samples leaving at each active exit then the backbone, and the
    accuracy of those samples (None where none leave)."""
    counts, correct = _exit_arrays(batch, s)
    return exit_shares(counts, correct, lengths=(batch.candidate >= 0).sum(axis=1) + 1)


def scores_to_records(*, batch: ConfigBatch, scores: ProxyScores, F: NDArray[np.float64],
                      G: NDArray[np.float64], objectives: Sequence[str],
                      constraint_names: Sequence[str], strategy: str, generation: int,
                      first_trial: int, confidence: float,
                      config_text: Sequence[str] | None = None) -> dict[str, Any]:
    """The schema's columns for one batch (``pareto`` is filled in by :class:`TrialLog`).

    ``config_text`` is :func:`batch_to_json` of ``batch`` when the caller has it already.
    """
    fr, acc = exit_lists(batch, scores)
    n = len(F)
    cols: dict[str, Any] = {
        "trial": np.arange(first_trial, first_trial + n, dtype=np.int64),
        "strategy": [strategy] * n, "generation": np.full(n, generation, dtype=np.int64),
        "config": list(config_text) if config_text is not None else batch_to_json(batch),
        "accuracy": scores.accuracy, "error": 1.0 - scores.accuracy, "macs": scores.macs,
        "energy_j": scores.energy_j, "latency_s": scores.latency_s,
        "exit_fractions": [json_list(x) for x in fr],
        "exit_accuracy": [json_list(x) for x in acc],
        "accuracy_drop": scores.accuracy_drop,
        "accuracy_drop_ub": scores.accuracy_drop_upper(confidence),
        "memory_ratio": scores.memory_ratio, "worst_latency_s": scores.worst_latency_s,
        "device_fractions": [json_list(x) for x in scores.finish_fraction.round(6).tolist()],
    }
    for i, name in enumerate(objectives):
        cols[f"obj_{name}"] = F[:, i]
    for i, name in enumerate(constraint_names):
        cols[f"cv_{name}"] = G[:, i]
    cols["feasible"] = (G <= 0).all(axis=1) if G.size else np.ones(n, dtype=bool)
    cols["pareto"] = np.zeros(n, dtype=bool)
    return cols


def _concat(parts: list[Any]) -> Any:
    """Join one column's batches (arrays or lists)."""
    if isinstance(parts[0], np.ndarray):
        return np.concatenate(parts)
    return [x for p in parts for x in p]


class TrialLog:
    """All trials of a run, written to trials.parquet (temp file, then rename).

    Batches are kept in memory and the file is rewritten by :meth:`flush`
    (at the end of a search and on interruption) or by :meth:`flush_if_due`
    at most every ``interval_s`` seconds, so a long search does not spend its
    time rewriting a growing file; a process killed outright loses at most
    the last interval.
    """

    def __init__(self, run_dir: Path, *, objectives: Sequence[str],
                 constraint_names: Sequence[str], interval_s: float = 10.0) -> None:
        self.path = Path(run_dir) / TRIALS
        self.objectives = tuple(objectives)
        self.interval_s = interval_s
        self._frames: list[pd.DataFrame] = []
        self._batches: list[dict[str, Any]] = []  # column batches not yet in a frame
        self._counts: dict[str, int] = {}
        self._next = 0
        self._last_flush = time.monotonic()
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
            self.append(old)

    @property
    def frame(self) -> pd.DataFrame:
        if self._batches:
            self._frames.append(pd.DataFrame({k: _concat([b[k] for b in self._batches])
                                              for k in self._batches[0]}))
            self._batches = []
        if not self._frames:
            return pd.DataFrame()
        if len(self._frames) > 1:
            self._frames = [pd.concat(self._frames, ignore_index=True)]
        return self._frames[0]

    def count(self, strategy: str) -> int:
        return self._counts.get(strategy, 0)

    @property
    def next_trial(self) -> int:
        return self._next

    def append(self, rows: pd.DataFrame | Mapping[str, Any]) -> None:
        """Add rows: a frame, or one batch of columns from :func:`scores_to_records`."""
        if not len(rows["trial"]):
            return
        if isinstance(rows, pd.DataFrame):
            self._frames.append(rows)
        else:
            self._batches.append(dict(rows))
        for strategy, n in Counter(rows["strategy"]).items():
            self._counts[str(strategy)] = self._counts.get(str(strategy), 0) + int(n)
        self._next = max(self._next, int(np.max(rows["trial"])) + 1)

    def flush_if_due(self) -> None:
        """:meth:`flush` when ``interval_s`` has passed since the last one."""
        if time.monotonic() - self._last_flush >= self.interval_s:
            self.flush()

    def flush(self) -> None:
        """Recompute Pareto flags and write trials.parquet (temp file, then rename)."""
        self._last_flush = time.monotonic()
        df = self.frame
        if not len(df):
            return
        df["pareto"] = pareto_flags(df, self.objectives)
        atomic_write(self.path, lambda tmp: df.to_parquet(tmp, index=False))


def choose(df: pd.DataFrame, objectives: Sequence[str],
           strategy: str) -> tuple[pd.Series | None, str]:
    """The chosen point of ``strategy``; else the closest infeasible row, and why.

    Rule: among the strategy's feasible rows that no other feasible row of it dominates
    on all objectives (its front), the one with the lowest primary cost (the first
    objective that is not ``error``); ties go to the other objectives in their order, then
    to the lower trial number. So the chosen point is always on its own front.
    """
    rows = df[df["strategy"] == strategy] if len(df) else df
    if not len(rows):
        return None, f"no trials of strategy {strategy!r} were evaluated"
    costs = [o for o in objectives if o != "error"]
    order = ([costs[0]] if costs else []) + [o for o in objectives if o not in costs[:1]]
    feas = rows[rows["feasible"]]
    if len(feas):
        front = feas[non_dominated(feas[[f"obj_{o}" for o in objectives]].to_numpy(float))]
        return front.sort_values([*(f"obj_{o}" for o in order), "trial"]).iloc[0], ""
    cv_cols = [c for c in rows.columns if c.startswith("cv_")]
    total = rows[cv_cols].clip(lower=0).sum(axis=1)
    best = rows.loc[total.idxmin()]
    parts = [f"{c[3:]} by {best[c]:.4g}" for c in cv_cols if best[c] > 0]
    return best, (f"no feasible point among {len(rows)} trials of {strategy}; the closest "
                  f"(trial {int(best['trial'])}) violates " + " and ".join(parts))


def violations(row: pd.Series, spec: ConstraintSpec) -> tuple[dict[str, float], list[str]]:
    """The constraints an infeasible trial breaks (by how much), and overrides that admit it."""
    broken = {c[3:]: float(row[c]) for c in row.index if str(c).startswith("cv_") and row[c] > 0}
    relax = []
    if "accuracy_drop" in broken:
        need = math.ceil(float(row["accuracy_drop_ub"]) * 1e4) / 1e4
        relax.append(f"constraints.max_accuracy_drop={need:g}")
    if "memory" in broken:
        relax.append(f"constraints.memory=false (it needs {float(row['memory_ratio']):.2f}x "
                     "a device's memory)")
    if "latency" in broken:
        need = float(row["worst_latency_s"]) * (1 + 1e-9)
        relax.append(f"constraints.max_latency_s={need:.4g}")
    return broken, relax


def _losses(ev: ProxyEvaluator, batch: ConfigBatch) -> NDArray[np.int64]:
    """Samples of ``ev``'s split the backbone gets right and each EENN of ``batch`` wrong."""
    s = ev.evaluate(batch)
    correct = s.exit_correct.sum(axis=1) + s.final_correct
    return loss_counts(discordant=s.discordant, correct=correct,
                       backbone_correct=s.backbone_correct)


def _not_certified(n_candidates: int, row: pd.Series, *, spec: GuaranteeSpec, level: float,
                   losses: tuple[int, int], sizes: tuple[int, int]) -> str:
    """Why nothing was certified, and the calibration size or epsilon that would certify ``row``.

    ``losses`` and ``sizes``: ``row``'s losses and the sample counts on (search, calibration).
    """
    eps = float(spec.epsilon or 0.0)
    rate = sum(losses) / max(sum(sizes), 1)  # both parts: the steadier estimate
    need = needed_calibration(rate=rate, epsilon=eps, level=level)
    cheaper = certifiable_epsilon(losses=losses[1], n=sizes[1], level=level)
    how = (f"needs about {need} calibration samples (constraints.guarantee.calibration_share "
           f"or more val samples)" if need is not None else
           f"has a loss rate of {rate:.4f}, not below epsilon: no calibration size certifies it")
    return (f"no EENN certified: none of the {n_candidates} candidates passed "
            f"{spec.method} at epsilon={eps:g}, delta={spec.delta:g} on {sizes[1]} calibration "
            f"samples; the cheapest (trial {int(row['trial'])}) lost {losses[1]} of them "
            f"(backbone right, EENN wrong): it {how}; or constraints.guarantee.epsilon="
            f"{math.ceil(cheaper * 1e4) / 1e4:g} would certify it on these samples")


def choose_certified(df: pd.DataFrame, objectives: Sequence[str], strategy: str, *,
                     candidates: Sequence[int], spec: GuaranteeSpec, search: ProxyEvaluator,
                     calibration: ProxyEvaluator) -> tuple[pd.Series | None, str,
                                                           dict[str, Any]]:
    """The cheapest certified one of the ``candidates`` (trial ids in test order).

    ``candidates`` come from the search part alone (:func:`search.loop.run_search`'s
    certification path: the strategy's cheapest front point with its thresholds raised, most
    conservative first), so the order is fixed before the calibration data is looked at
    (:mod:`evaluators.risk`). Returns the row (the cheapest candidate when nothing is
    certified, or :func:`choose`'s row when there are no candidates), why nothing is
    certified, and chosen.yaml's ``guarantee`` record.
    """
    record: dict[str, Any] = {"method": spec.method, "epsilon": spec.epsilon,
                              "delta": spec.delta, "n_search": search.n_samples,
                              "n_calibration": calibration.n_samples,
                              "candidates": len(candidates), "certified": False,
                              "drop_bound": None}
    if not candidates:
        row, message = choose(df, objectives, strategy)
        return row, message, record
    at_trial = pd.Series(np.arange(len(df)), index=df["trial"].to_numpy())
    rows = df.iloc[at_trial.loc[list(candidates)].to_numpy()]
    batch = ConfigBatch.from_configs([config_from_json(str(c)) for c in rows["config"]])
    lost_search, lost_cal = _losses(search, batch), _losses(calibration, batch)
    cert = certify(losses=lost_cal, n=calibration.n_samples, order=np.arange(len(rows)),
                   epsilon=float(spec.epsilon or 0.0), delta=spec.delta, method=spec.method)
    ok = cert.certified
    pool = rows[ok] if ok.any() else rows
    costs = [o for o in objectives if o != "error"] or ["error"]
    row = pool.sort_values([*(f"obj_{o}" for o in costs), "trial"]).iloc[0]
    at = int(np.flatnonzero(rows["trial"].to_numpy() == row["trial"])[0])
    record.update({"certified": bool(ok.any()), "n_tested": int(cert.tested.sum()),
                   "n_certified": int(ok.sum()), "level": cert.level,
                   "drop_bound": spec.epsilon if ok.any() else None,
                   "p_value": float(cert.p_values[at]),
                   "calibration_losses": int(lost_cal[at]), "search_losses": int(lost_search[at]),
                   "certified_trials": [int(t) for t in rows["trial"].to_numpy()[ok]]})
    message = "" if ok.any() else _not_certified(
        len(rows), row, spec=spec, level=cert.level,
        losses=(int(lost_search[at]), int(lost_cal[at])),
        sizes=(search.n_samples, calibration.n_samples))
    return row, message, record


def _figures(ev: ProxyEvaluator, cfg: EENNConfig, spec: ConstraintSpec) -> dict[str, Any]:
    batch = ConfigBatch.from_configs([cfg])
    s = ev.evaluate(batch)
    (fr,), (acc,) = exit_lists(batch, s)
    return {"accuracy": float(s.accuracy[0]), "error": float(1 - s.accuracy[0]),
            "backbone_accuracy": ev.backbone_accuracy,
            "accuracy_drop": float(s.accuracy_drop[0]),
            "accuracy_drop_ub": float(s.accuracy_drop_upper(spec.confidence)[0]),
            "macs": float(s.macs[0]), "energy_j": float(s.energy_j[0]),
            "latency_s": float(s.latency_s[0]), "worst_latency_s": float(s.worst_latency_s[0]),
            "memory_ratio": float(s.memory_ratio[0]), "exit_fractions": fr, "exit_accuracy": acc,
            "device_fractions": s.finish_fraction[0].tolist()}


def guarantee_text(record: Mapping[str, Any]) -> str:
    """One line on the chosen point's accuracy-drop bound and how it was obtained."""
    method = record.get("method", "uncertified")
    if method == "uncertified":
        bound = record.get("drop_bound")
        return ("uncertified: " + (f"drop <= {bound:.4f} by a {record.get('confidence', 0):g} "
                                   "Wilson bound on the val samples the search selected on "
                                   "(does not hold after selection)" if bound is not None
                                   else "no bound"))
    where = (f"Learn-then-Test {method}, binomial p-values, {record.get('n_calibration')} "
             "held-out calibration samples")
    if record.get("certified"):
        return (f"certified: drop <= {record['epsilon']:g} with probability >= "
                f"{1 - record['delta']:g} ({where}; p = {record.get('p_value', 0):.3g})")
    return (f"NOT certified at epsilon={record.get('epsilon')}, delta={record.get('delta')} "
            f"({where})")


def _uncertified(row: pd.Series | None, spec: ConstraintSpec) -> dict[str, Any]:
    """chosen.yaml's ``guarantee`` without certification: the val Wilson bound, as it is."""
    return {"method": "uncertified", "confidence": spec.confidence, "certified": False,
            "drop_bound": (float(row["accuracy_drop_ub"]) if row is not None
                           and "accuracy_drop_ub" in row.index else None)}


def write_results(run_dir: Path, *, records: pd.DataFrame, objectives: Sequence[str],
                  strategy: str, constraints: ConstraintSpec, evaluator: ProxyEvaluator,
                  test_evaluator: ProxyEvaluator | None = None,
                  calibration_evaluator: ProxyEvaluator | None = None,
                  candidates: Sequence[int] = ()) -> dict[str, Any]:
    """Write pareto.csv and chosen.yaml (trials.parquet is the TrialLog's); return chosen.

    With an active ``constraints.guarantee`` the chosen point is the cheapest one certified
    among ``candidates`` on ``calibration_evaluator``'s split (:func:`choose_certified`).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    main = (records[(records["strategy"] == strategy) & records["pareto"]] if len(records)
            else records)
    main.to_csv(run_dir / PARETO, index=False)
    guarantee = constraints.guarantee
    if guarantee.active:
        if calibration_evaluator is None:
            raise ValueError(f"constraints.guarantee.method={guarantee.method} needs a "
                             "calibration split; pass calibration_evaluator")
        row, message, record = choose_certified(
            records, objectives, strategy, candidates=candidates, spec=guarantee,
            search=evaluator,
            calibration=calibration_evaluator)
    else:
        row, message = choose(records, objectives, strategy)
        record = _uncertified(row, constraints)
    chosen: dict[str, Any] = {"strategy": strategy, "feasible": False, "message": message,
                              "guarantee": record}
    if row is not None and not bool(row["feasible"]):
        chosen["violations"], chosen["relax"] = violations(row, constraints)
    if row is not None:
        cfg = config_from_json(str(row["config"]))
        chosen.update({
            "trial": int(row["trial"]),
            "feasible": bool(row["feasible"]) and (record["certified"] or not guarantee.active),
            "objectives": {o: float(row[f"obj_{o}"]) for o in objectives},
            "config": json.loads(config_to_json(cfg)),
            "val": _figures(evaluator, cfg, constraints),
            "test": _figures(test_evaluator, cfg, constraints) if test_evaluator else None,
        })
        if calibration_evaluator is not None:
            chosen["calibration"] = _figures(calibration_evaluator, cfg, constraints)
    with open(run_dir / CHOSEN, "w") as fh:
        yaml.safe_dump(chosen, fh, sort_keys=False)
    return chosen
