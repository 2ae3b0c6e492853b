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
from evaluators.eenn import EENNConfig, ExitChoice
from evaluators.predictions import SplitPredictions
from spaces.space import EarlyExitSpace

__all__ = ["manual_configs"]


def _on_device(space: EarlyExitSpace, device: int) -> tuple[int, ...]:
    """Boundaries that put every segment on ``device``."""
    return tuple(0 if i < device else space.n_candidates + 1 for i in range(space.n_links))


def manual_configs(*, space: EarlyExitSpace, costs: BackboneCosts, val: SplitPredictions,
                   n_thresholds: int = 64) -> list[EENNConfig]:
    """The manual recipe's configurations (``n_thresholds`` per device placement)."""
    if n_thresholds < 1:
        raise ValueError(f"search.manual_thresholds={n_thresholds!r} must be >= 1")
    n_c = space.n_candidates
    k = min(space.max_exits, n_c)
    cands = np.unique(np.linspace(0, n_c - 1, k).round().astype(int)) if k else np.array([], int)
    heads = costs.head_macs.argmin(axis=1)
    metric = space.metrics[0]
    pooled = np.concatenate([val.conf(metric)[c, heads[c]] for c in cands]) if k else np.ones(1)
    q = np.arange(n_thresholds) / n_thresholds
    levels = np.unique(np.quantile(pooled.astype(np.float64), q,
                                   method="inverted_cdf"))
    placements = ([space.pinned_boundaries] if space.pinned_boundaries else
                  [_on_device(space, d) for d in sorted({min(space.allowed_devices),
                                                         max(space.allowed_devices)})])
    return [
        EENNConfig(exits=tuple(ExitChoice(candidate=int(c), head=int(heads[c]), threshold=float(t))
                               for c in cands),
                   boundaries=boundaries, metric=metric)
        for boundaries in placements for t in levels
    ]
