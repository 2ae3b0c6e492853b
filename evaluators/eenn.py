"""The decoded early-exit configuration: the value every evaluator works on.

It lives with the evaluators (not the spaces) so that the proxy, the runtime
and the reports can use it without knowing how a sampler encodes it.

Conventions, shared by every module:

* Candidates are numbered ``0..C-1`` in execution order. Segment ``j`` is the
  backbone part that ends at candidate ``j``; segment ``C`` is the tail from
  the last candidate to the backbone's own classifier.
* ``boundaries`` has one entry per link of the platform chain, non-decreasing,
  each in ``0..C+1``. Boundary value ``b`` means the next device starts with
  segment ``b``: the activation of candidate ``b-1`` is sent over the link
  (the raw input when ``b == 0``). ``b == C+1`` means the link is never used.
  Equal consecutive values skip a tier (it only relays).
* An exit at candidate ``j`` runs on the device that ran segment ``j``.
* Confidence is "higher is surer" for every metric (max-softmax, margin,
  and ``1 - entropy / log(K)``); a sample exits at the first active exit
  whose confidence is ``>= threshold``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["METRICS", "EENNConfig", "ExitChoice", "exit_shares"]

METRICS: tuple[str, ...] = ("max_softmax", "entropy", "margin")


@dataclass(frozen=True, kw_only=True)
class ExitChoice:
    """One active exit: where it is, which head of the family, its threshold."""

    candidate: int
    head: int
    threshold: float


@dataclass(frozen=True, kw_only=True)
class EENNConfig:
    """A fully specified EENN: active exits, device boundaries, decision metric."""

    exits: tuple[ExitChoice, ...]
    boundaries: tuple[int, ...] = ()
    metric: str = "max_softmax"

    def __post_init__(self) -> None:
        positions = [e.candidate for e in self.exits]
        if positions != sorted(set(positions)):
            raise ValueError(
                f"exits must be at distinct candidates in ascending order, got {positions}"
            )
        if list(self.boundaries) != sorted(self.boundaries):
            raise ValueError(f"boundaries must be non-decreasing, got {list(self.boundaries)}")
        if self.metric not in METRICS:
            raise ValueError(f"metric={self.metric!r} is not one of {METRICS}")

    def device_of_segment(self, segment: int) -> int:
        """Index of the device that runs backbone segment ``segment``."""
        return sum(1 for b in self.boundaries if b <= segment)


def exit_shares(
    counts: ArrayLike, correct: ArrayLike | None = None
) -> tuple[list[float], list[float | None]]:
    """Share of samples leaving on each path, and the accuracy of those samples.

    ``counts`` (and ``correct``) hold one entry per path: the active exits in order, then the
    backbone classifier (K+1 entries, as in the ``exit_fractions`` and ``exit_accuracy``
    columns). Every sample takes exactly one path, so the shares sum to one; a path no sample
    takes has accuracy ``None``.
    """
    n = np.asarray(counts, dtype=np.int64)
    fractions = (n / max(int(n.sum()), 1)).tolist()
    if correct is None:
        return fractions, [None] * len(n)
    ok = np.asarray(correct, dtype=np.int64)
    return fractions, [int(o) / int(x) if x else None for o, x in zip(ok, n, strict=True)]
