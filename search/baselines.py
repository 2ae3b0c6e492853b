"""Reference strategies evaluated in every run: the manual recipe (and random search,
which is the ``random`` backend run at the main strategy's budget).

Manual recipe, as a practitioner would do it without a search: an exit with
the cheapest head at every candidate (evenly spaced candidates when
``max_exits`` is smaller), one global threshold for all exits swept over the
quantiles of those heads' pooled val confidences, and the whole model on one
device: the first allowed device and, separately, the last one. When the space
pins the device mapping (``space.boundaries``), the recipe uses that mapping
instead, so that it answers the same question as the search.
"""

from __future__ import annotations

import numpy as np

from evaluators.costs import BackboneCosts
from evaluators.eenn import METRICS
from evaluators.predictions import SplitPredictions
from evaluators.proxy import ConfigBatch
from spaces.space import EarlyExitSpace

__all__ = ["manual_configs"]


def _on_device(space: EarlyExitSpace, device: int) -> tuple[int, ...]:
    """Boundaries that put every segment on ``device``."""
    return tuple(0 if i < device else space.n_candidates + 1 for i in range(space.n_links))


def manual_configs(*, space: EarlyExitSpace, costs: BackboneCosts, val: SplitPredictions,
                   n_thresholds: int) -> ConfigBatch:
    """The manual recipe's configurations (``n_thresholds`` per device placement), as arrays."""
    n_c = space.n_candidates
    k = min(space.max_exits, n_c)
    cands = np.unique(np.linspace(0, n_c - 1, k).round().astype(np.int64)) if k else \
        np.zeros(0, np.int64)
    heads = costs.head_macs.argmin(axis=1)[cands].astype(np.int64)
    metric = space.metrics[0]
    pooled = val.conf(metric)[cands, heads].ravel() if k else np.ones(1)
    q = np.arange(n_thresholds) / n_thresholds
    levels = np.unique(np.quantile(pooled.astype(np.float64), q, method="inverted_cdf"))
    placements = ([space.pinned_boundaries] if space.pinned_boundaries else
                  [_on_device(space, d) for d in sorted({min(space.allowed_devices),
                                                         max(space.allowed_devices)})])
    rows = len(placements) * len(levels)
    return ConfigBatch(
        candidate=np.tile(cands, (rows, 1)), head=np.tile(heads, (rows, 1)),
        threshold=np.tile(np.repeat(levels[:, None], len(cands), axis=1), (len(placements), 1)),
        boundaries=np.repeat(np.array(placements, np.int64).reshape(len(placements), space.n_links),
                             len(levels), axis=0),
        metric=np.full(rows, METRICS.index(metric), dtype=np.int64))
