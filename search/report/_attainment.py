"""Empirical attainment surfaces of several runs' fronts, computed by ``moocore``.

The empirical attainment function (Fonseca et al.; López-Ibáñez, Paquete and
Stützle's ``eaf`` tools, whose authors maintain ``moocore``) gives, for every
goal in objective space, the fraction of runs that reached it: a run attains a
goal when one of its points is at least as good in every objective. The p%
attainment surface bounds the goals attained by at least ``ceil(p * n / 100)``
of the n runs (moocore's rule: with 5 runs, 25% needs 2 runs, 50% 3, 75% 4).

A run without a feasible point attains nothing but still counts in n; moocore
sees only runs with points, so its levels (k of the runs it saw) are mapped
back to counts of all n runs here. Surfaces are 2-D: with three or more
objectives each pair of objectives gets the surfaces of the runs' projected
fronts (a run attains a goal in that plane when one of its feasible points is
at least as good in those two objectives).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations

import moocore
import numpy as np
from numpy.typing import NDArray

from search.rundir import non_dominated

__all__ = ["PERCENTILES", "AttainmentSurface", "attainment_surfaces", "objective_pairs",
           "runs_needed"]

#: The surfaces drawn: best quartile, median, worst quartile.
PERCENTILES = (25.0, 50.0, 75.0)


@dataclass(frozen=True, kw_only=True)
class AttainmentSurface:
    """Goals attained by at least ``runs_needed`` of ``runs_total`` runs (minimised objectives).

    ``points`` are the surface's corners sorted by the first objective (the
    second then falls); empty when fewer runs than needed have any point.
    """

    percentile: float
    runs_needed: int
    runs_total: int
    points: tuple[tuple[float, float], ...]


def runs_needed(percentile: float, n_runs: int) -> int:
    """Runs that must attain a goal for the ``percentile``% surface (moocore's rule)."""
    return max(1, math.ceil(round(percentile * n_runs / 100.0, 9)))


def objective_pairs(objectives: Sequence[str]) -> tuple[tuple[int, int], ...]:
    """Index pairs (x, y) to draw: every pair, ``error`` always on y (accuracy axis)."""
    pairs = []
    for i, j in combinations(range(len(objectives)), 2):
        pairs.append((j, i) if objectives[i] == "error" else (i, j))
    pairs.sort(key=lambda p: (objectives[p[1]] != "error", p))
    return tuple(pairs)


def _levels(fronts: Sequence[NDArray[np.float64]]) -> tuple[NDArray[np.float64], int]:
    """moocore's EAF at every level over the non-empty fronts, and how many fronts it saw."""
    parts = [f for f in fronts if len(f)]
    if not parts:
        return np.zeros((0, 3)), 0
    points = np.concatenate(parts)
    sets = np.concatenate([np.full(len(f), k + 1) for k, f in enumerate(parts)])
    return np.asarray(moocore.eaf(points, sets), dtype=np.float64), len(parts)


def attainment_surfaces(fronts: Sequence[NDArray[np.float64]],
                        percentiles: Sequence[float] = PERCENTILES
                        ) -> tuple[AttainmentSurface, ...]:
    """The attainment surfaces of runs given as 2-D point sets (one (n_i, 2) array per run)."""
    clean = [np.asarray(f, dtype=np.float64).reshape(-1, 2) for f in fronts]
    clean = [f[non_dominated(f)] if len(f) else f for f in clean]
    table, seen = _levels(clean)
    counts = np.rint(table[:, 2] * seen / 100.0).astype(int) if seen else np.zeros(0, int)
    out = []
    for p in percentiles:
        need = runs_needed(p, len(clean))
        rows = table[counts == need, :2]
        rows = rows[np.lexsort((-rows[:, 1], rows[:, 0]))]
        out.append(AttainmentSurface(
            percentile=float(p), runs_needed=need, runs_total=len(clean),
            points=tuple((float(x), float(y)) for x, y in rows)))
    return tuple(out)
