"""Compute first, then draw: plain records of a run's fronts, hypervolume and tables.

Fronts and hypervolumes are the run-folder contract's (:mod:`search.rundir`):
a strategy's front is :func:`~search.rundir.front_mask` of its rows on the
run's objectives (so it equals the ``pareto`` column the writer stored), and
the progress curve is :func:`~search.rundir.hypervolume_curve` on the run's
:func:`~search.rundir.hypervolume_scale`, so its last value is summary.json's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from search.report._details import OBJECTIVE_LABELS, describe_config
from search.rundir import (
    HypervolumeScale,
    Run,
    config_from_json,
    front_mask,
    hypervolume_curve,
    hypervolume_scale,
)

__all__ = [
    "BackboneRef",
    "HypervolumeCurve",
    "HypervolumeInfo",
    "ParetoFrontInfo",
    "PredictedMeasured",
    "StrategyPoints",
    "get_hypervolume_info",
    "get_pareto_front_info",
    "get_predicted_measured",
    "pareto_table",
    "primary_cost",
    "strategy_points",
]


@dataclass(frozen=True, kw_only=True)
class StrategyPoints:
    """Every trial of one strategy with its front membership (all objectives and 2-D)."""

    strategy: str
    trial: NDArray[np.int64]
    accuracy: NDArray[np.float64]
    cost: NDArray[np.float64]  # the primary cost objective (x axis)
    values: NDArray[np.float64]  # (n, m) obj_* columns, objective order
    feasible: NDArray[np.bool_]
    front: NDArray[np.bool_]  # non-dominated among feasible rows, all objectives
    front_2d: NDArray[np.bool_]  # non-dominated among feasible rows in (cost, -accuracy)
    hover: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class BackboneRef:
    """The backbone alone (no exits) on one device, as a point in objective space."""

    label: str
    accuracy: float
    values: dict[str, float]


@dataclass(frozen=True, kw_only=True)
class ParetoFrontInfo:
    """Everything the Pareto figures draw; strategies[0] is the main strategy."""

    objectives: tuple[str, ...]
    cost: str
    strategies: tuple[StrategyPoints, ...]
    backbone: tuple[BackboneRef, ...]
    chosen_trial: int | None


@dataclass(frozen=True, kw_only=True)
class HypervolumeCurve:
    """Hypervolume of the feasible points among the first ``evaluations`` trials of a strategy."""

    strategy: str
    evaluations: NDArray[np.int64]
    hypervolume: NDArray[np.float64]


@dataclass(frozen=True, kw_only=True)
class HypervolumeInfo:
    """The run's hypervolume scale (None: nothing feasible) and each strategy's curve."""

    objectives: tuple[str, ...]
    scale: HypervolumeScale | None
    curves: tuple[HypervolumeCurve, ...]


@dataclass(frozen=True, kw_only=True)
class PredictedMeasured:
    """One predicted_* column against one measured_* column of evaluated.csv."""

    quantity: str
    predicted_column: str
    measured_column: str
    trial: NDArray[np.int64]
    predicted: NDArray[np.float64]
    measured: NDArray[np.float64]


def primary_cost(objectives: tuple[str, ...]) -> str:
    """The first non-error objective; ``macs`` when the run optimises error alone."""
    return next((o for o in objectives if o != "error"), "macs")


def _cost_column(run: Run, cost: str) -> str:
    return f"obj_{cost}" if f"obj_{cost}" in run.trials.columns else cost


def _backbone_refs(run: Run, objectives: tuple[str, ...]) -> tuple[BackboneRef, ...]:
    """Backbone on the first and on the last device (one point when the objectives agree)."""
    bb = run.summary.get("backbone") or {}
    if bb.get("accuracy_val") is None:
        return ()
    devices = run.device_names or ("first device", "last device")
    refs: list[BackboneRef] = []
    for end, device in (("first", devices[0]), ("last", devices[-1])):
        values = {
            "error": 1.0 - float(bb["accuracy_val"]),
            "macs": float(bb.get("macs", math.nan)),
            "energy": float(bb.get(f"energy_j_{end}", math.nan)),
            "latency": float(bb.get(f"latency_s_{end}", math.nan)),
        }
        values = {o: values.get(o, math.nan) for o in (*objectives, "macs")}
        if refs and np.allclose(
            list(refs[0].values.values()), list(values.values()), equal_nan=True
        ):
            continue
        refs.append(
            BackboneRef(
                label=f"backbone alone on {device}",
                accuracy=float(bb["accuracy_val"]),
                values=values,
            )
        )
    return tuple(refs)


def _hover(run: Run, rows: pd.DataFrame, objectives: tuple[str, ...]) -> tuple[str, ...]:
    costs = [o for o in objectives if o != "error"]
    labels = [OBJECTIVE_LABELS.get(o, o) for o in costs]
    values = zip(*(rows[f"obj_{o}"].tolist() for o in costs), strict=True) if costs else \
        iter([()] * len(rows))
    out = []
    for trial, strategy, ok, acc, text, vals in zip(
            rows["trial"].tolist(), rows["strategy"].tolist(), rows["feasible"].tolist(),
            rows["accuracy"].tolist(), rows["config"].tolist(), values, strict=True):
        config = config_from_json(str(text), where=f"{run.path} trial {trial}")
        figs = "<br>".join(f"{label}: {v:.4g}" for label, v in zip(labels, vals, strict=True))
        state = "feasible" if ok else "infeasible"
        out.append(f"trial {int(trial)} ({strategy}, {state})<br>"
                   f"accuracy: {float(acc):.4f}<br>{figs}<br>{describe_config(run, config)}")
    return tuple(out)


def strategy_points(
    run: Run, rows: pd.DataFrame, objectives: tuple[str, ...], cost: str
) -> StrategyPoints:
    """The record of one strategy's rows (sorted by trial) on the given objectives."""
    values = rows[[f"obj_{o}" for o in objectives]].to_numpy(dtype=np.float64)
    feasible = rows["feasible"].to_numpy(dtype=bool)
    accuracy = rows["accuracy"].to_numpy(dtype=np.float64)
    cost_values = rows[_cost_column(run, cost)].to_numpy(dtype=np.float64)
    return StrategyPoints(
        strategy=str(rows["strategy"].iloc[0]),
        trial=rows["trial"].to_numpy(dtype=np.int64),
        accuracy=accuracy,
        cost=cost_values,
        values=values,
        feasible=feasible,
        front=front_mask(values, feasible),
        front_2d=front_mask(np.column_stack([cost_values, -accuracy]), feasible),
        hover=_hover(run, rows, objectives),
    )


def _strategy_order(run: Run) -> list[str]:
    others = sorted({str(s) for s in run.trials["strategy"]} - {run.strategy})
    return [run.strategy, *others] if run.strategy in set(run.trials["strategy"]) else others


def get_pareto_front_info(run: Run) -> ParetoFrontInfo:
    """Per-strategy points and fronts, backbone references and the chosen trial of a run."""
    objectives = run.objectives
    cost = primary_cost(objectives)
    strategies = tuple(
        strategy_points(run, run.trials[run.trials["strategy"] == s], objectives, cost)
        for s in _strategy_order(run)
    )
    chosen = run.summary.get("chosen_trial")
    if chosen is None and run.chosen is not None:
        chosen = run.chosen.get("trial")
    return ParetoFrontInfo(
        objectives=objectives,
        cost=cost,
        strategies=strategies,
        backbone=_backbone_refs(run, objectives),
        chosen_trial=None if chosen is None else int(chosen),
    )


def get_hypervolume_info(run: Run, front: ParetoFrontInfo) -> HypervolumeInfo:
    """Hypervolume against the number of evaluations, per strategy, on the run's scale."""
    scale = hypervolume_scale([run.trials], front.objectives)
    curves = tuple(
        HypervolumeCurve(
            strategy=p.strategy,
            evaluations=np.arange(1, len(p.trial) + 1, dtype=np.int64),
            hypervolume=hypervolume_curve(p.values, p.feasible, scale),
        )
        for p in front.strategies
    )
    return HypervolumeInfo(objectives=front.objectives, scale=scale, curves=curves)


def pareto_table(run: Run, front: ParetoFrontInfo) -> pd.DataFrame:
    """One row per front point of every strategy: figures, exits and device split."""
    rows = []
    for points in front.strategies:
        for i in np.flatnonzero(points.front):
            row = run.trials[run.trials["trial"] == points.trial[i]].iloc[0]
            config = config_from_json(
                str(row["config"]), where=f"{run.path} trial {points.trial[i]}"
            )
            exits, devices = describe_config(run, config).split("<br>")
            record = {
                "trial": int(points.trial[i]),
                "strategy": points.strategy,
                "accuracy": float(points.accuracy[i]),
            }
            for o in front.objectives:
                if o != "error":
                    record[o] = float(row[f"obj_{o}"])
            record["exits"] = exits.removeprefix("exits: ")
            record["devices"] = devices.removeprefix("devices: ")
            rows.append(record)
    return pd.DataFrame(rows)


def get_predicted_measured(run: Run) -> tuple[PredictedMeasured, ...]:
    """Every predicted_<q> column paired with each measured_<q> / measured_<q>_<split> column."""
    frame = run.evaluated
    if frame is None:
        return ()
    out = []
    for pred in (c for c in frame.columns if c.startswith("predicted_")):
        quantity = pred.removeprefix("predicted_")
        for meas in frame.columns:
            if meas == f"measured_{quantity}" or meas.startswith(f"measured_{quantity}_"):
                both = frame[["trial", pred, meas]].apply(pd.to_numeric, errors="coerce").dropna()
                if len(both):
                    out.append(
                        PredictedMeasured(
                            quantity=quantity,
                            predicted_column=pred,
                            measured_column=meas,
                            trial=both["trial"].to_numpy(dtype=np.int64),
                            predicted=both[pred].to_numpy(dtype=np.float64),
                            measured=both[meas].to_numpy(dtype=np.float64),
                        )
                    )
    return tuple(out)
