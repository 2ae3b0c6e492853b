"""Execution-ordered cost units (fx nodes or module calls) and the candidate rules over them.

Both the graph path and the hook path of :mod:`spaces.profile` reduce a
backbone to a sequence of units (MACs, parameter elements and working-set
elements each) plus the points where a candidate may sit; the rules that keep
points and the segment sums are shared here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
from numpy.typing import NDArray

from spaces.candidates import ExitCandidate

_FP32 = 4


@dataclass(frozen=True, kw_only=True)
class Point:
    """A possible candidate: the output of unit ``position``."""

    name: str
    kind: str
    position: int
    shape: tuple[int, ...]


@dataclass(frozen=True, kw_only=True)
class Segment:
    """Sums over a run of units: MACs, parameter elements, largest working set (elements)."""

    macs: int
    params: int
    peak: int


@dataclass(frozen=True, kw_only=True)
class Units:
    """Per-unit figures in execution order and the per-sample output shape."""

    macs: NDArray[np.int64]
    params: NDArray[np.int64]
    io: NDArray[np.int64]
    output_shape: tuple[int, ...] = ()
    cumulative: NDArray[np.int64] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "cumulative", np.cumsum(self.macs, dtype=np.int64))

    @classmethod
    def of(cls, macs: list[int], params: list[int], io: list[int]) -> Units:
        return cls(
            macs=np.asarray(macs, np.int64).reshape(-1),
            params=np.asarray(params, np.int64).reshape(-1),
            io=np.asarray(io, np.int64).reshape(-1),
        )

    def with_output(self, shape: tuple[int, ...]) -> Units:
        return replace(self, output_shape=shape)

    @property
    def total_macs(self) -> int:
        return int(self.macs.sum())

    @property
    def total_params(self) -> int:
        return int(self.params.sum())

    def cum(self, point: Point) -> int:
        return int(self.cumulative[point.position])

    def segment(self, start: int, stop: int) -> Segment:
        """Units after position ``start`` up to and including ``stop`` (``start=-1``: from 0)."""
        sl = slice(start + 1, stop + 1)
        io = self.io[sl]
        return Segment(
            macs=int(self.macs[sl].sum()),
            params=int(self.params[sl].sum()),
            peak=int(io.max()) if io.size else 0,
        )

    def collapse(self, points: list[Point], *, tail_fraction: float) -> list[Point]:
        """Keep the last of each zero-MAC chain; drop points with < tail_fraction MACs left."""
        total = self.total_macs
        kept = []
        for point, following in zip(points, [*points[1:], None], strict=True):
            after = self.cum(following) if following else total
            if after - self.cum(point) > 0 and total - self.cum(point) >= tail_fraction * total:
                kept.append(point)
        return kept

    def thin(
        self, points: list[Point], *, max_candidates: int | None, min_mac_fraction: float
    ) -> list[Point]:
        """Apply ``min_mac_fraction`` (greedy, from the input), then ``max_candidates``."""
        total = self.total_macs
        spaced, last = [], 0
        for point in points:
            if self.cum(point) - last >= min_mac_fraction * total:
                spaced.append(point)
                last = self.cum(point)
        if max_candidates is None or max_candidates >= len(spaced):
            return spaced
        chosen: set[int] = set()
        for i in range(1, max_candidates + 1):
            target = total * i / (max_candidates + 1)
            free = [j for j in range(len(spaced)) if j not in chosen]
            chosen.add(min(free, key=lambda j: (abs(self.cum(spaced[j]) - target), j)))
        return [spaced[j] for j in sorted(chosen)]

    def candidates(self, points: list[Point]) -> tuple[list[ExitCandidate], Segment]:
        """Candidates with segment figures against the previous kept point, and the tail."""
        out = []
        previous = -1
        for index, point in enumerate(points):
            seg = self.segment(previous, point.position)
            numel = math.prod(point.shape)
            out.append(
                ExitCandidate(
                    name=point.name,
                    kind=point.kind,
                    index=index,
                    shape=point.shape,
                    bytes_fp32=numel * _FP32,
                    bytes_int8=numel,
                    cumulative_macs=self.cum(point),
                    segment_macs=seg.macs,
                    segment_param_bytes=seg.params * _FP32,
                    segment_peak_bytes=seg.peak * _FP32,
                )
            )
            previous = point.position
        return out, self.segment(previous, len(self.macs) - 1)
