"""Records for comparing several runs: fronts on shared objectives, hypervolume, best points.

Runs are compared on the objectives they all optimise (in the first run's
order). Each run's hypervolume is that of its main strategy's feasible points
under the run-folder contract's definition (:mod:`search.rundir`) with ONE
scale for all runs: ideal, nadir and reference over the union of the feasible
trials of every strategy of every compared run, on the shared objectives. So
the values are comparable, and a run compared with itself shows its
summary.json value. The "best point" of a run is its cheapest feasible point
(main strategy, primary shared cost) whose val accuracy meets a common threshold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from search.report._records import StrategyPoints, strategy_points
from search.rundir import HypervolumeScale, Run, RunFolderError, hypervolume_scale

__all__ = ["BestPoint", "ComparisonInfo", "ReportError", "get_comparison_info",
           "shared_objectives"]


class ReportError(RunFolderError):
    """Run folders that cannot be reported on or compared together (one line, with the fix)."""


@dataclass(frozen=True, kw_only=True)
class BestPoint:
    """The cheapest point of a run meeting the common accuracy threshold (None: no such point)."""

    label: str
    trial: int | None
    accuracy: float | None
    cost: float | None
    backbone_accuracy: float | None
    backbone_cost: float | None


@dataclass(frozen=True, kw_only=True)
class ComparisonInfo:
    """Everything the comparison page draws; one entry per run in ``labels`` order."""

    labels: tuple[str, ...]
    objectives: tuple[str, ...]
    cost: str
    scale: HypervolumeScale | None  # common to all runs (None: nothing feasible in any run)
    points: tuple[StrategyPoints, ...]  # each run's main strategy on the shared objectives
    hypervolume: tuple[float, ...]
    min_accuracy: float
    accuracy_rule: str
    best: tuple[BestPoint, ...]


def shared_objectives(runs: list[Run]) -> tuple[str, ...]:
    """Objectives every run optimises; one-line error when they share no cost objective."""
    shared = [o for o in runs[0].objectives if all(o in r.objectives for r in runs[1:])]
    if not any(o != "error" for o in shared):
        listing = "; ".join(f"{r.path.name}: {list(r.objectives)}" for r in runs)
        raise ReportError(
            f"the runs share no cost objective ({listing}); compare runs with a common cost"
        )
    return tuple(shared)


def _unique_labels(runs: list[Run]) -> tuple[str, ...]:
    labels = [r.label for r in runs]
    if len(set(labels)) < len(labels):
        labels = [f"{r.path.parent.name}/{r.label}" for r in runs]
    if len(set(labels)) < len(labels):
        labels = [f"{i + 1}: {label}" for i, label in enumerate(labels)]
    return tuple(labels)


def _backbone(run: Run, cost: str) -> tuple[float | None, float | None]:
    bb = run.summary.get("backbone") or {}
    acc = bb.get("accuracy_val")
    key = {"macs": "macs", "energy": "energy_j_last", "latency": "latency_s_last"}.get(cost)
    value = bb.get(key) if key else None
    return (None if acc is None else float(acc)), (None if value is None else float(value))


def _cheapest(points: StrategyPoints, min_accuracy: float) -> int | None:
    """Index of the cheapest feasible point with accuracy >= ``min_accuracy`` (ties: accuracy)."""
    ok = np.flatnonzero(points.feasible & (points.accuracy >= min_accuracy))
    if not len(ok):
        return None
    return int(ok[np.lexsort((-points.accuracy[ok], points.cost[ok]))[0]])


def _threshold(runs: list[Run], max_drop: float, min_accuracy: float | None) -> tuple[float, str]:
    if min_accuracy is not None:
        return float(min_accuracy), f"accuracy >= {min_accuracy:g} (given)"
    accs = [(r.summary.get("backbone") or {}).get("accuracy_val") for r in runs]
    known = [float(a) for a in accs if a is not None]
    if not known:
        raise ReportError("no run has backbone.accuracy_val in summary.json; pass --min-accuracy")
    value = min(known) - max_drop
    return (
        value,
        f"accuracy >= min over runs of (backbone val accuracy - {max_drop:g}) = {value:.4f}",
    )


def get_comparison_info(
    runs: list[Run], *, max_drop: float = 0.01, min_accuracy: float | None = None
) -> ComparisonInfo:
    """Fronts, hypervolumes on one common scale and best points of several runs."""
    if not runs:
        raise ReportError("no runs to compare; pass at least one run folder")
    objectives = shared_objectives(runs)
    cost = next(o for o in objectives if o != "error")
    points = tuple(
        strategy_points(r, r.trials[r.trials["strategy"] == r.strategy], objectives, cost)
        for r in runs
    )
    for run, p in zip(runs, points, strict=True):
        if not len(p.trial):
            raise ReportError(f"{run.path}: no trials of its main strategy {run.strategy!r}")
    scale = hypervolume_scale([r.trials for r in runs], objectives)
    threshold, rule = _threshold(runs, max_drop, min_accuracy)
    labels = _unique_labels(runs)
    best = []
    for run, label, p in zip(runs, labels, points, strict=True):
        b_acc, b_cost = _backbone(run, cost)
        i = _cheapest(p, threshold)
        best.append(
            BestPoint(
                label=label,
                trial=None if i is None else int(p.trial[i]),
                accuracy=None if i is None else float(p.accuracy[i]),
                cost=None if i is None else float(p.cost[i]),
                backbone_accuracy=b_acc,
                backbone_cost=b_cost,
            )
        )
    return ComparisonInfo(
        labels=labels,
        objectives=objectives,
        cost=cost,
        scale=scale,
        points=points,
        hypervolume=tuple(
            scale.hypervolume(p.values[p.feasible]) if scale is not None else 0.0 for p in points
        ),
        min_accuracy=threshold,
        accuracy_rule=rule,
        best=tuple(best),
    )
