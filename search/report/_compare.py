"""The comparison's records: groups over seeds, fronts, attainment, hypervolumes, tests.

Compute first, then draw: :func:`compare_runs` turns loaded runs into one
:class:`Comparison` of plain values (written as JSON beside the page by
``write_comparison``); the page only draws it.

- Objectives: those every run optimises, in the first run's order.
- Groups: runs whose composed configs differ only in the seed (and keys that
  say where a run computed), labelled by what differs (:mod:`._groups`).
- Fronts: each run's main strategy, feasible trials, non-dominated on the
  shared objectives (:func:`search.rundir.front_mask`).
- Attainment: per group, the 25/50/75% attainment surfaces of its runs' fronts
  for every pair of objectives (:mod:`._attainment`, moocore).
- Hypervolume: the one definition of :mod:`search.rundir` on one scale for all
  compared runs (:func:`~search.rundir.hypervolume_scale` of every run's
  trials: ideal and nadir over the feasible trials of every strategy of every
  run); per group its spread over seeds and the median and 25-75% band of
  :func:`~search.rundir.hypervolume_curve` against evaluations; rank tests
  between groups (:mod:`._stats`).
- Chosen point: each run's own (``summary.json`` ``chosen_trial``, else
  ``chosen.yaml``); no rule of this page picks a "best" point.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from search.report._attainment import AttainmentSurface, attainment_surfaces, objective_pairs
from search.report._groups import ConfigDiff, Grouping, group_runs
from search.report._notes import notes
from search.report._runs import ReportError
from search.report._stats import Band, RankTest, Spread, band, rank_tests, spread
from search.results import guarantee_text
from search.rundir import (
    HypervolumeScale,
    Run,
    front_mask,
    guarantee_of,
    hypervolume_curve,
    hypervolume_scale,
    non_dominated,
)

__all__ = ["CHOSEN_RULE", "Axis", "ChosenPoint", "Comparison", "GroupRecord", "PairAttainment",
           "ReportError", "RunRecord", "compare_runs", "shared_objectives"]

CHOSEN_RULE = ("each run's own chosen point (summary.json chosen_trial, else chosen.yaml): the "
               "run's cheapest feasible trial by its first cost objective (results/README.md); "
               "this page applies no rule of its own")


@dataclass(frozen=True, kw_only=True)
class ChosenPoint:
    """A run's chosen trial on the shared objectives, with its val (and test) accuracy."""

    trial: int
    source: str
    feasible: bool
    accuracy: float
    values: tuple[float, ...]
    test_accuracy: float | None
    guarantee: str  # the accuracy-drop bound and how it was obtained (certified or not)


@dataclass(frozen=True, kw_only=True)
class RunRecord:
    """One run: its group, hypervolume and front on the shared objectives (raw, minimised)."""

    label: str
    folder: str
    group: int
    seed: int | None
    strategy: str
    evaluations: int
    feasible: int
    hypervolume: float
    front: tuple[tuple[float, ...], ...]  # all shared objectives, sorted by the first cost
    front_2d: tuple[tuple[float, float], ...]  # (primary cost, 1 - val accuracy), by cost
    chosen: ChosenPoint | None


@dataclass(frozen=True, kw_only=True)
class PairAttainment:
    """The attainment surfaces of a group in the plane of objectives ``x`` and ``y``."""

    x: str
    y: str
    surfaces: tuple[AttainmentSurface, ...]


@dataclass(frozen=True, kw_only=True)
class GroupRecord:
    """Runs of one configuration over seeds."""

    label: str
    settings: tuple[tuple[str, str], ...]
    runs: tuple[int, ...]
    seeds: tuple[int | None, ...]
    hypervolume: Spread
    curve: Band
    attainment: tuple[PairAttainment, ...]


@dataclass(frozen=True, kw_only=True)
class Axis:
    """An objective's range over the feasible main-strategy trials of all runs; log if > 10x."""

    objective: str
    log: bool
    low: float | None
    high: float | None


@dataclass(frozen=True, kw_only=True)
class Comparison:
    """Everything the comparison page draws."""

    objectives: tuple[str, ...]
    cost: str
    scale: HypervolumeScale | None
    runs: tuple[RunRecord, ...]
    groups: tuple[GroupRecord, ...]
    tests: tuple[RankTest, ...]
    axes: tuple[Axis, ...]
    diff: ConfigDiff
    chosen_rule: str
    notes: tuple[str, ...]  # warnings shown at the top of the page
    skipped: tuple[str, ...]

    def to_json(self) -> str:
        """The records as JSON (NaN as null)."""
        return json.dumps(_finite(dataclasses.asdict(self)), indent=1, allow_nan=False)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def shared_objectives(runs: Sequence[Run]) -> tuple[str, ...]:
    """Objectives every run optimises; one-line error when they share no cost objective."""
    shared = [o for o in runs[0].objectives if all(o in r.objectives for r in runs[1:])]
    if not any(o != "error" for o in shared):
        listing = "; ".join(f"{r.path.name}: {list(r.objectives)}" for r in runs)
        raise ReportError(
            f"the runs share no cost objective ({listing}); compare runs with a common cost"
        )
    return tuple(shared)


def _main_rows(run: Run) -> pd.DataFrame:
    rows = run.trials[run.trials["strategy"] == run.strategy]
    if rows.empty:
        raise ReportError(f"{run.path}: no trials of its main strategy {run.strategy!r} in "
                          "trials.parquet; rerun python -m search on a new folder")
    return rows


def _chosen(run: Run, objectives: Sequence[str]) -> ChosenPoint | None:
    trial, source = run.summary.get("chosen_trial"), "summary.json chosen_trial"
    if trial is None and run.chosen is not None:
        trial, source = run.chosen.get("trial"), "chosen.yaml trial"
    rows = run.trials[run.trials["trial"] == trial] if trial is not None else run.trials[:0]
    if rows.empty:
        return None
    row = rows.iloc[0]
    test = (run.chosen or {}).get("test") or {}
    return ChosenPoint(trial=int(row["trial"]), source=source, feasible=bool(row["feasible"]),
                       accuracy=float(row["accuracy"]),
                       values=tuple(float(row[f"obj_{o}"]) for o in objectives),
                       test_accuracy=None if test.get("accuracy") is None
                       else float(test["accuracy"]),
                       guarantee=guarantee_text(guarantee_of(run.summary, run.chosen)))


def _tuples(values: np.ndarray) -> tuple[tuple[float, ...], ...]:
    return tuple(tuple(float(v) for v in row) for row in values)


def _run_record(run: Run, *, objectives: tuple[str, ...], cost: str, grouping: Grouping,
                index: int, scale: HypervolumeScale | None) -> tuple[RunRecord, np.ndarray]:
    rows = _main_rows(run)
    values = rows[[f"obj_{o}" for o in objectives]].to_numpy(dtype=np.float64)
    feasible = rows["feasible"].to_numpy(dtype=bool)
    front = values[front_mask(values, feasible)]
    front = front[np.argsort(front[:, objectives.index(cost)], kind="stable")]
    # the fronts figure's plane: primary cost against val error (1 - accuracy), feasible trials
    plane = np.column_stack([rows[f"obj_{cost}"].to_numpy(dtype=np.float64),
                             1.0 - rows["accuracy"].to_numpy(dtype=np.float64)])[feasible]
    plane = plane[non_dominated(plane)] if len(plane) else plane
    plane = plane[np.argsort(plane[:, 0], kind="stable")]
    record = RunRecord(
        label=grouping.run_labels[index], folder=str(run.path),
        group=grouping.group_of_run[index], seed=grouping.seeds[index], strategy=run.strategy,
        evaluations=len(rows), feasible=int(feasible.sum()),
        hypervolume=scale.hypervolume(values[feasible]) if scale is not None else 0.0,
        front=_tuples(front), front_2d=tuple((float(x), float(y)) for x, y in plane),
        chosen=_chosen(run, objectives))
    return record, hypervolume_curve(values, feasible, scale)


def _group_record(g: int, grouping: Grouping, objectives: tuple[str, ...],
                  runs: Sequence[RunRecord], curves: Sequence[np.ndarray]) -> GroupRecord:
    members = tuple(i for i, k in enumerate(grouping.group_of_run) if k == g)
    members = tuple(sorted(members, key=lambda i: (runs[i].seed is None, runs[i].seed or 0)))
    fronts = [np.asarray(runs[i].front, dtype=np.float64).reshape(-1, len(objectives))
              for i in members]
    attainment = tuple(
        PairAttainment(x=objectives[x], y=objectives[y],
                       surfaces=attainment_surfaces([f[:, [x, y]] for f in fronts]))
        for x, y in objective_pairs(objectives))
    return GroupRecord(label=grouping.group_labels[g], settings=grouping.group_settings[g],
                       runs=members, seeds=tuple(runs[i].seed for i in members),
                       hypervolume=spread([runs[i].hypervolume for i in members]),
                       curve=band([curves[i] for i in members]), attainment=attainment)


def _axes(runs: Sequence[Run], objectives: tuple[str, ...]) -> tuple[Axis, ...]:
    cols = [f"obj_{o}" for o in objectives]
    parts = [r.trials.loc[r.trials["feasible"] & (r.trials["strategy"] == r.strategy), cols]
             for r in runs]
    values = pd.concat(parts).to_numpy(dtype=np.float64)
    out = []
    for j, o in enumerate(objectives):
        if not len(values):
            out.append(Axis(objective=o, log=False, low=None, high=None))
            continue
        low, high = float(values[:, j].min()), float(values[:, j].max())
        out.append(Axis(objective=o, low=low, high=high,
                        log=o != "error" and low > 0 and high / low > 10))
    return tuple(out)


def compare_runs(runs: Sequence[Run], *, skipped: Sequence[str] = ()) -> Comparison:
    """The comparison records of ``runs`` (in the order given)."""
    if not runs:
        raise ReportError("no runs to compare; pass at least one run folder")
    objectives = shared_objectives(runs)
    cost = next(o for o in objectives if o != "error")
    scale = hypervolume_scale([r.trials for r in runs], objectives)
    grouping = group_runs(runs)
    built = [_run_record(r, objectives=objectives, cost=cost, grouping=grouping, index=i,
                         scale=scale) for i, r in enumerate(runs)]
    records = tuple(b[0] for b in built)
    curves = [b[1] for b in built]
    groups = tuple(_group_record(g, grouping, objectives, records, curves)
                   for g in range(len(grouping.group_labels)))
    comparison = Comparison(
        objectives=objectives, cost=cost, scale=scale, runs=records, groups=groups,
        tests=rank_tests([[records[i].hypervolume for i in g.runs] for g in groups]),
        axes=_axes(runs, objectives), diff=grouping.diff, chosen_rule=CHOSEN_RULE,
        notes=(), skipped=tuple(skipped))
    return dataclasses.replace(comparison, notes=notes(runs, comparison, grouping))
