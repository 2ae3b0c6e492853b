"""Summaries over seeds: quartiles of a sample, a band of curves, rank tests between groups.

Quartiles are numpy's default (linear interpolation between order
statistics). Runs of different configurations are independent samples (a seed
does not pair a run of one backend with a run of another), so groups are
compared by the two-sided Mann-Whitney U test (:func:`scipy.stats.mannwhitneyu`,
its exact distribution for small samples without ties). The effect size is
Vargha and Delaney's A12 = U / (n_a n_b): the probability that a run of the
first group has the larger hypervolume (ties count one half).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np
from numpy.typing import NDArray
from scipy.stats import mannwhitneyu

__all__ = ["Band", "RankTest", "Spread", "band", "rank_tests", "spread"]

#: At most this many evaluation counts per band on the page (the last one always kept).
MAX_BAND_POINTS = 400


@dataclass(frozen=True, kw_only=True)
class Spread:
    """A sample's size, quartiles and interquartile range."""

    n: int
    median: float
    q25: float
    q75: float
    iqr: float
    minimum: float
    maximum: float


@dataclass(frozen=True, kw_only=True)
class Band:
    """Median and 25-75% band over runs of a curve, at ``evaluations`` (1-based counts)."""

    evaluations: tuple[int, ...]
    median: tuple[float, ...]
    q25: tuple[float, ...]
    q75: tuple[float, ...]
    runs: int
    truncated: bool  # runs of unequal length: cut to the shortest


@dataclass(frozen=True, kw_only=True)
class RankTest:
    """Two-sided Mann-Whitney U test of group ``a`` against group ``b`` (indices into groups)."""

    a: int
    b: int
    test: str
    statistic: float  # U of group a
    p_value: float
    a12: float
    n_a: int
    n_b: int


def spread(values: Sequence[float]) -> Spread:
    """Size, quartiles, IQR, min and max of a non-empty sample."""
    x = np.asarray(values, dtype=np.float64)
    q25, median, q75 = (float(v) for v in np.percentile(x, [25, 50, 75]))
    return Spread(n=len(x), median=median, q25=q25, q75=q75, iqr=q75 - q25,
                  minimum=float(x.min()), maximum=float(x.max()))


def band(curves: Sequence[NDArray[np.float64]]) -> Band:
    """Median and quartiles over ``curves`` at each evaluation count of the shortest one."""
    length = min(len(c) for c in curves)
    stacked = np.stack([np.asarray(c[:length], dtype=np.float64) for c in curves])
    q25, median, q75 = np.percentile(stacked, [25, 50, 75], axis=0)
    idx = np.unique(np.rint(np.linspace(0, length - 1, min(length, MAX_BAND_POINTS))).astype(int))
    return Band(evaluations=tuple(int(i) + 1 for i in idx),
                median=tuple(float(v) for v in median[idx]),
                q25=tuple(float(v) for v in q25[idx]), q75=tuple(float(v) for v in q75[idx]),
                runs=len(curves), truncated=len({len(c) for c in curves}) > 1)


def rank_tests(samples: Sequence[Sequence[float]]) -> tuple[RankTest, ...]:
    """The Mann-Whitney U test of every pair of samples (groups) in order."""
    out = []
    for a, b in combinations(range(len(samples)), 2):
        x, y = np.asarray(samples[a], float), np.asarray(samples[b], float)
        result = mannwhitneyu(x, y, alternative="two-sided")
        u = float(result.statistic)
        out.append(RankTest(a=a, b=b, test="Mann-Whitney U, two-sided", statistic=u,
                            p_value=float(result.pvalue), a12=u / (len(x) * len(y)),
                            n_a=len(x), n_b=len(y)))
    return tuple(out)
