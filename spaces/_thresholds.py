"""Threshold grids of the early-exit space, built from the val predictions.

``quantile`` (default) takes, for each (metric, candidate, head), the
``1 - (1 - l/L)^2`` quantiles (``l = 0..L-1``) of that head's val confidences,
so level ``l`` lets about ``(1 - l/L)^2`` of val pass: every level is a
distinct exit rate whatever the head's calibration, and levels are densest
where few samples pass, which is where exits that keep the accuracy
constraint live. ``uniform`` is a fixed grid ``linspace(low, high, L)``;
``continuous`` has no grid (thresholds are real genes in ``[low, high]``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from evaluators.predictions import SplitPredictions
from spaces.settings import ThresholdSettings

__all__ = ["threshold_grid"]


def threshold_grid(settings: ThresholdSettings, val: SplitPredictions,
                   metrics: Sequence[str]) -> dict[str, NDArray[np.float64]] | None:
    """metric -> (C, H, L) ascending thresholds, or None for continuous thresholds."""
    if settings.mode == "continuous":
        return None
    n_c, n_h, _ = val.head_pred.shape
    levels = settings.levels
    if settings.mode == "uniform":
        row = np.linspace(settings.low, settings.high, levels)
        return {m: np.broadcast_to(row, (n_c, n_h, levels)).copy() for m in metrics}
    q = 1.0 - (1.0 - np.arange(levels) / levels) ** 2
    return {m: _between_samples(val.conf(m), q) for m in metrics}


def _between_samples(conf: NDArray[np.float32], q: NDArray[np.float64]) -> NDArray[np.float64]:
    """(C, H, L) thresholds at the ``q`` quantiles of val confidence, moved off the samples.

    A quantile threshold equals some val sample's confidence exactly, so that sample's
    decision would hinge on the last bit of a float32 (which differs between batch sizes of
    the same kernel). Each threshold is moved halfway down to the next lower distinct val
    confidence: every val decision stays the same, and none sits on a knife edge.
    """
    ordered = np.sort(conf.astype(np.float32), axis=2)  # (C, H, N)
    at = np.quantile(ordered.astype(np.float64), q, axis=2, method="inverted_cdf")
    at = at.transpose(1, 2, 0).astype(np.float32)  # (C, H, L), each a sample's confidence
    first = np.stack([np.searchsorted(row, t, side="left")
                      for row, t in zip(ordered.reshape(-1, ordered.shape[2]),
                                        at.reshape(-1, at.shape[2]), strict=True)])
    first = first.reshape(at.shape)
    below = np.take_along_axis(ordered, np.maximum(first - 1, 0), axis=2)
    below = np.where(first > 0, below, np.minimum(np.float32(0.0), at))
    mid = ((at.astype(np.float64) + below) / 2.0).astype(np.float32)
    # no float32 strictly between the two: keep the sample's own value
    mid = np.where((mid > below) & (mid < at), mid, at)
    return mid.astype(np.float64)
