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
    counts: ArrayLike, correct: ArrayLike | None = None, *, lengths: ArrayLike | None = None
) -> tuple[list[list[float]], list[list[float | None]]]:
    """Per configuration: the share of samples leaving on each path, and their accuracy.

    ``counts`` (and ``correct``) are (P, W) (or one row of W): the samples leaving at each
    active exit in order, then at the backbone classifier, as in the ``exit_fractions`` and
    ``exit_accuracy`` columns. ``lengths`` (P,) is how many entries of each row are paths
    (K+1, when rows of different exit counts share one array; all W by default). Every sample
    takes exactly one path, so a row's shares sum to one; a path no sample takes (or any path,
    without ``correct``) has accuracy ``None``.
    """
    n = np.atleast_2d(np.asarray(counts, dtype=np.int64))
    ok = np.zeros_like(n) if correct is None else np.atleast_2d(np.asarray(correct, np.int64))
    k = np.full(len(n), n.shape[1]) if lengths is None else np.asarray(lengths, dtype=np.int64)
    shares = (n / np.maximum(n.sum(axis=1, keepdims=True), 1)).tolist()
    acc = np.divide(ok, n, out=np.zeros(n.shape), where=n > 0).tolist()
    known = ((n > 0) & (correct is not None)).tolist()
    return (
        [row[:kk] for row, kk in zip(shares, k.tolist(), strict=True)],
        [
            [a if seen else None for a, seen in zip(ra[:kk], rs[:kk], strict=True)]
            for ra, rs, kk in zip(acc, known, k.tolist(), strict=True)
        ],
    )
