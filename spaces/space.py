"""The one early-exit search space, declared once and adapted to every backend.

Genes, for every exit candidate ``c``: ``on{c}`` (exit present), ``head{c}``
(index into the head family) and ``thr{c}`` (threshold level on the grid, or
a float for continuous thresholds); for every link ``i`` of the device chain
``b{i}`` (a boundary, see :class:`evaluators.eenn.EENNConfig`); and
``metric`` (index into :attr:`EarlyExitSpace.metrics`) when the confidence
metric is searched. ``space.boundaries`` pins the device mapping (the
``b{i}`` genes then repair to the pinned values), for a user who already
knows which device runs which part, or to search one placement at a time.

A population is a float matrix ``(P, G)``, one row per genome and one column
per gene in :attr:`EarlyExitSpace.variables` order: the backends, repair,
duplicate detection and decoding all work on whole populations with array
operations, because the search loop must keep up with the vectorised proxy.
A single genome is also available as a plain dict ``name -> value`` (the
metric as its name), which is what Optuna's ask/tell and the tests use; the
dict methods are one-row views of the matrix ones.

:meth:`EarlyExitSpace.repair_matrix` makes genomes canonical so duplicates
are recognised: genes of a disabled exit go to one value (head 0, level 0 /
lowest threshold), at most ``max_exits`` exits stay on (the others are
dropped at random: by ``rng``, or by a hash of the exit pattern so the same
genome always repairs the same way), threshold levels with the same value
collapse to the first, boundaries are sorted and moved off devices that are
not allowed, and the metric of an exit-less genome is the first one.
Threshold grids: :mod:`spaces._thresholds`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from evaluators.eenn import METRICS, EENNConfig, ExitChoice
from evaluators.platform import Platform
from evaluators.predictions import SplitPredictions
from evaluators.proxy import ConfigBatch
from spaces._thresholds import threshold_grid
from spaces.settings import SpaceSettings

__all__ = ["EarlyExitSpace", "Genome", "Var", "build_space"]

Genome = dict[str, Any]
F64 = NDArray[np.float64]
I64 = NDArray[np.int64]


@dataclass(frozen=True, kw_only=True)
class Var:
    """One gene, sampler-neutral: ``bool``, ``int`` in [low, high], ``float`` or ``choice``."""

    name: str
    kind: str
    low: float = 0.0
    high: float = 1.0
    choices: tuple[str, ...] = ()


def _mix(x: NDArray[np.uint64]) -> NDArray[np.uint64]:
    """splitmix64 finaliser: a well-spread hash of 64-bit words (wraps by design)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@dataclass(frozen=True, kw_only=True, eq=False)
class EarlyExitSpace:
    """Exits (on/off, head, threshold) at C candidates and boundaries on a D-device chain."""

    n_candidates: int
    n_heads: int
    n_devices: int
    max_exits: int
    metrics: tuple[str, ...]
    threshold_grid: Mapping[str, F64] | None  # metric -> (C, H, L) ascending
    threshold_range: tuple[float, float] = (0.0, 1.0)
    allowed_devices: tuple[int, ...] = ()
    pinned_boundaries: tuple[int, ...] = ()  # empty: the device mapping is searched
    _device_map: I64 = field(init=False, repr=False)
    _grid: F64 | None = field(init=False, repr=False)  # (M, C, H, L) in metrics order
    _first: I64 | None = field(init=False, repr=False)  # first level of equal value
    _slices: dict[str, slice] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        allowed = self.allowed_devices or tuple(range(self.n_devices))
        object.__setattr__(self, "allowed_devices", allowed)
        bad = [d for d in allowed if not 0 <= d < self.n_devices]
        if bad or not self.metrics or not self.max_exits >= 0:
            raise ValueError(f"space: devices {bad} / metrics {self.metrics} / max_exits "
                             f"{self.max_exits} invalid for a {self.n_devices}-device chain")
        ok = sorted(allowed)
        mapping = [next((a for a in ok if a >= d), ok[-1]) for d in range(self.n_devices)]
        object.__setattr__(self, "_device_map", np.array(mapping, dtype=np.int64))
        grid = first = None
        if self.threshold_grid is not None:
            grid = np.stack([np.asarray(self.threshold_grid[m], np.float64)
                             for m in self.metrics])
            steps = np.ones(grid.shape, dtype=bool)
            steps[..., 1:] = grid[..., 1:] != grid[..., :-1]
            first = np.maximum.accumulate(
                np.where(steps, np.arange(grid.shape[-1]), 0), axis=-1).astype(np.int64)
        c_n, n_links = 3 * self.n_candidates, self.n_devices - 1
        object.__setattr__(self, "_slices", {
            "on": slice(0, c_n, 3), "head": slice(1, c_n, 3), "thr": slice(2, c_n, 3),
            "b": slice(c_n, c_n + n_links),
            "metric": slice(c_n + n_links, c_n + n_links + (len(self.metrics) > 1))})
        object.__setattr__(self, "_grid", grid)
        object.__setattr__(self, "_first", first)
        if self.pinned_boundaries:
            self._check_pinned()

    def _check_pinned(self) -> None:
        pinned, top = tuple(self.pinned_boundaries), self.n_candidates + 1
        shape_ok = (len(pinned) == self.n_links and list(pinned) == sorted(pinned)
                    and all(0 <= b <= top for b in pinned))
        if not shape_ok:
            raise ValueError(f"space.boundaries={list(pinned)} must be {self.n_links} "
                             f"non-decreasing boundaries in 0..{top} (one per link); "
                             f"or null to search the device mapping")
        canonical = tuple(int(b) for b in self._searched_boundaries(np.array([pinned], float))[0])
        if canonical != pinned:
            raise ValueError(f"space.boundaries={list(pinned)} puts segments on devices outside "
                             f"space.devices {list(self.allowed_devices)}; the same mapping "
                             f"within them is {list(canonical)}")

    # ---- layout -------------------------------------------------------------------------

    @property
    def n_links(self) -> int:
        return self.n_devices - 1

    @property
    def n_levels(self) -> int:
        """Threshold levels of the grid (0 for continuous thresholds)."""
        return 0 if self._grid is None else int(self._grid.shape[-1])

    @property
    def n_genes(self) -> int:
        return 3 * self.n_candidates + self.n_links + (len(self.metrics) > 1)

    @property
    def variables(self) -> tuple[Var, ...]:
        """All genes, in the column order of a population matrix."""
        out: list[Var] = []
        lo, hi = self.threshold_range
        for c in range(self.n_candidates):
            out.append(Var(name=f"on{c}", kind="bool"))
            out.append(Var(name=f"head{c}", kind="int", low=0, high=self.n_heads - 1))
            out.append(Var(name=f"thr{c}", kind="int", low=0, high=self.n_levels - 1)
                       if self._grid is not None
                       else Var(name=f"thr{c}", kind="float", low=lo, high=hi))
        out += [Var(name=f"b{i}", kind="int", low=0, high=self.n_candidates + 1)
                for i in range(self.n_links)]
        if len(self.metrics) > 1:
            out.append(Var(name="metric", kind="choice", choices=self.metrics))
        return tuple(out)

    def _cols(self, gene: str) -> slice:
        """Columns of one gene family: ``on``, ``head``, ``thr`` (stride 3), ``b``, ``metric``."""
        return self._slices[gene]

    # ---- populations as matrices ----------------------------------------------------------

    def repair_matrix(self, X: Any, rng: np.random.Generator | None = None, *,
                      keep_inactive: bool = False) -> F64:
        """Canonical copy of every row of ``X`` (see module doc); ``rng`` picks exits to drop.

        ``keep_inactive`` leaves the (rounded, clipped) genes of disabled exits as they are,
        so an evolutionary backend keeps their information for later; such rows are not
        canonical, and duplicates must be recognised on a second repair without it.
        """
        X = np.asarray(X, dtype=np.float64).reshape(-1, self.n_genes)
        out: F64 = np.empty_like(X)
        metric = self._metric_index(X)
        on = self._limit_exits(np.rint(X[:, self._cols("on")]) != 0, rng)
        head = np.clip(np.rint(X[:, self._cols("head")]), 0, self.n_heads - 1).astype(np.int64)
        keep = on | keep_inactive
        out[:, self._cols("on")] = on
        out[:, self._cols("head")] = np.where(keep, head, 0)
        out[:, self._cols("thr")] = self._thresholds(X[:, self._cols("thr")], metric, head, keep)
        out[:, self._cols("b")] = self._boundaries(X[:, self._cols("b")])
        if len(self.metrics) > 1:
            out[:, self._cols("metric")] = np.where(on.any(axis=1), metric, 0)[:, None]
        return out

    def _metric_index(self, X: F64) -> I64:
        if len(self.metrics) == 1:
            return np.zeros(len(X), dtype=np.int64)
        col = X[:, self._cols("metric")][:, 0]
        return np.clip(np.rint(col), 0, len(self.metrics) - 1).astype(np.int64)

    def _limit_exits(self, on: NDArray[np.bool_], rng: np.random.Generator | None
                     ) -> NDArray[np.bool_]:
        """At most ``max_exits`` exits per row; the ones kept are drawn at random."""
        over = on.sum(axis=1) > self.max_exits
        if not over.any():
            return on
        sub = on[over]
        if rng is None:  # deterministic per exit pattern, unbiased across patterns
            cols = _mix(np.arange(1, sub.shape[1] + 1, dtype=np.uint64))
            pattern = (sub.astype(np.uint64) * cols[None, :]).sum(axis=1, dtype=np.uint64)
            priority = _mix(pattern[:, None] ^ cols[None, :]).astype(np.float64)
        else:
            priority = rng.random(sub.shape)
        top = np.argsort(np.where(sub, -priority, np.inf), axis=1, kind="stable")
        kept = np.zeros_like(sub)
        np.put_along_axis(kept, top[:, :self.max_exits], True, axis=1)
        on = on.copy()
        on[over] = kept & sub
        return on

    def _thresholds(self, T: F64, metric: I64, head: I64, keep: NDArray[np.bool_]) -> F64:
        lo, hi = self.threshold_range
        if self._grid is None or self._first is None:
            return np.where(keep, np.clip(T, lo, hi), lo) + 0.0  # + 0.0: no negative zero
        level = np.clip(np.rint(T), 0, self.n_levels - 1).astype(np.int64)
        cand = np.arange(self.n_candidates)[None, :]
        first = self._first[metric[:, None], cand, head, level]
        return np.where(keep, first, 0).astype(np.float64)

    def _boundaries(self, B: F64) -> F64:
        if self.pinned_boundaries:
            return np.broadcast_to(np.array(self.pinned_boundaries, np.float64),
                                   (len(B), self.n_links))
        return self._searched_boundaries(B)

    def _searched_boundaries(self, B: F64) -> F64:
        """Sorted, clipped boundaries, moved off devices that are not allowed."""
        top = self.n_candidates + 1
        b = np.sort(np.clip(np.rint(B), 0, top).astype(np.int64), axis=1)
        segments = np.arange(top)
        seg_dev = self._device_map[(b[:, None, :] <= segments[None, :, None]).sum(axis=2)]
        out = np.empty(b.shape, dtype=np.float64)
        for i in range(self.n_links):
            later = seg_dev > i  # (P, C+1): segments on a device after link i
            out[:, i] = np.where(later.any(axis=1), later.argmax(axis=1), top)
        return out

    def keys(self, X: F64) -> list[bytes]:
        """Hashable identity of every (canonical) row, for duplicate detection."""
        rows = np.ascontiguousarray(np.asarray(X, dtype=np.float64) + 0.0)
        return [r.tobytes() for r in rows]

    def sample_matrix(self, n: int, rng: np.random.Generator) -> F64:
        """``n`` random canonical rows: exit count uniform in 0..max_exits, genes uniform."""
        c_n, lo, hi = self.n_candidates, *self.threshold_range
        X = np.empty((n, self.n_genes))
        k = rng.integers(0, min(self.max_exits, c_n) + 1, size=n)
        rank = np.argsort(np.argsort(rng.random((n, c_n)), axis=1), axis=1)
        X[:, self._cols("on")] = rank < k[:, None]
        X[:, self._cols("head")] = rng.integers(self.n_heads, size=(n, c_n))
        X[:, self._cols("thr")] = (rng.integers(self.n_levels, size=(n, c_n))
                                   if self._grid is not None else rng.uniform(lo, hi, (n, c_n)))
        X[:, self._cols("b")] = rng.integers(c_n + 2, size=(n, self.n_links))
        if len(self.metrics) > 1:
            X[:, self._cols("metric")] = rng.integers(len(self.metrics), size=(n, 1))
        return self.repair_matrix(X)

    def batch(self, X: F64) -> ConfigBatch:
        """The proxy's arrays for canonical rows ``X`` (decoding without a Python loop)."""
        X = np.asarray(X, dtype=np.float64).reshape(-1, self.n_genes)
        c_n = self.n_candidates
        on = X[:, self._cols("on")] > 0.5
        k_max = int(on.sum(axis=1).max()) if len(X) else 0
        cand = np.sort(np.where(on, np.arange(c_n), c_n), axis=1)[:, :k_max]
        valid = cand < c_n
        at = np.minimum(cand, c_n - 1)
        head = np.take_along_axis(X[:, self._cols("head")], at, axis=1).astype(np.int64)
        gene = np.take_along_axis(X[:, self._cols("thr")], at, axis=1)
        metric = self._metric_index(X)
        thr = gene if self._grid is None else self._grid[metric[:, None], at, head,
                                                         gene.astype(np.int64)]
        global_metric = np.array([METRICS.index(m) for m in self.metrics], dtype=np.int64)
        return ConfigBatch(candidate=np.where(valid, cand, -1), head=np.where(valid, head, 0),
                           threshold=np.where(valid, thr, 0.0),
                           boundaries=X[:, self._cols("b")].astype(np.int64),
                           metric=global_metric[metric])

    def configs(self, X: F64) -> list[EENNConfig]:
        """The EENN of every canonical row of ``X``."""
        b = self.batch(X)
        out = []
        for p in range(len(b.metric)):
            k = int((b.candidate[p] >= 0).sum())
            exits = tuple(ExitChoice(candidate=int(c), head=int(h), threshold=float(t))
                          for c, h, t in zip(b.candidate[p, :k].tolist(), b.head[p, :k].tolist(),
                                             b.threshold[p, :k].tolist(), strict=True))
            out.append(EENNConfig(exits=exits, metric=METRICS[int(b.metric[p])],
                                  boundaries=tuple(b.boundaries[p].tolist())))
        return out

    def to_matrix(self, genomes: Sequence[Mapping[str, Any]]) -> F64:
        """Rows of the genome dicts (a metric name becomes its index; unknown names index 0)."""
        names = [v.name for v in self.variables]
        X = np.empty((len(genomes), len(names)))
        for p, g in enumerate(genomes):
            row = [g[n] for n in names[:len(names) - (len(self.metrics) > 1)]]
            if len(self.metrics) > 1:
                m = g.get("metric", self.metrics[0])
                row.append(self.metrics.index(m) if m in self.metrics else 0)
            X[p] = row
        return X

    def to_genomes(self, X: F64) -> list[Genome]:
        """Genome dicts of the rows of ``X`` (types as :attr:`variables` declare them)."""
        out = []
        for row in np.asarray(X, dtype=np.float64).reshape(-1, self.n_genes).tolist():
            g: Genome = {}
            for v, x in zip(self.variables, row, strict=True):
                g[v.name] = (bool(x) if v.kind == "bool" else int(x) if v.kind == "int"
                             else v.choices[int(x)] if v.kind == "choice" else float(x))
            out.append(g)
        return out

    # ---- single genomes (one-row views of the above) --------------------------------------

    def key(self, genome: Mapping[str, Any]) -> bytes:
        """Hashable identity of a repaired genome (for duplicate detection)."""
        return self.keys(self.to_matrix([genome]))[0]

    def repair(self, genome: Mapping[str, Any], rng: np.random.Generator | None = None, *,
               keep_inactive: bool = False) -> Genome:
        """Canonical copy of ``genome`` (see :meth:`repair_matrix`)."""
        X = self.repair_matrix(self.to_matrix([genome]), rng, keep_inactive=keep_inactive)
        return self.to_genomes(X)[0]

    def decode(self, genome: Mapping[str, Any]) -> EENNConfig:
        """The EENN a genome stands for (the genome is repaired first)."""
        return self.configs(self.repair_matrix(self.to_matrix([genome])))[0]

    def sample(self, n: int, rng: np.random.Generator) -> list[Genome]:
        """``n`` random canonical genomes (see :meth:`sample_matrix`)."""
        return self.to_genomes(self.sample_matrix(n, rng))

    def encode(self, config: EENNConfig) -> Genome:
        """The canonical genome of ``config``; off-grid thresholds snap to the nearest level."""
        if len(config.boundaries) != self.n_links or len(config.exits) > self.max_exits:
            raise ValueError(f"config with {len(config.exits)} exits / {len(config.boundaries)} "
                             f"boundaries does not fit this space (max_exits={self.max_exits}, "
                             f"{self.n_links} links)")
        if config.metric not in self.metrics:
            raise ValueError(f"config metric {config.metric!r} is not searched ({self.metrics})")
        raw: Genome = {f"b{i}": b for i, b in enumerate(config.boundaries)}
        raw["metric"] = config.metric
        for c in range(self.n_candidates):
            raw.update({f"on{c}": False, f"head{c}": 0, f"thr{c}": 0})
        for e in config.exits:
            if not (0 <= e.candidate < self.n_candidates and 0 <= e.head < self.n_heads):
                raise ValueError(f"exit {e} is outside {self.n_candidates} candidates x "
                                 f"{self.n_heads} heads")
            raw.update({f"on{e.candidate}": True, f"head{e.candidate}": e.head,
                        f"thr{e.candidate}": self._level(config.metric, e)})
        genome = self.repair(raw)
        if self.pinned_boundaries and tuple(config.boundaries) != self.pinned_boundaries:
            raise ValueError(f"config boundaries {list(config.boundaries)} differ from the pinned "
                             f"space.boundaries={list(self.pinned_boundaries)}")
        searched = self._searched_boundaries(np.array([config.boundaries], np.float64))
        if self.n_links and searched[0].tolist() != list(config.boundaries):
            raise ValueError(f"boundaries {config.boundaries} use a device outside "
                             f"allowed_devices={self.allowed_devices}")
        return genome

    def _level(self, metric: str, e: ExitChoice) -> int | float:
        if self.threshold_grid is None:
            return e.threshold
        row = self.threshold_grid[metric][e.candidate, e.head]
        return int(np.argmin(np.abs(row - e.threshold)))


def build_space(settings: SpaceSettings | Mapping[str, Any], *, val: SplitPredictions,
                platform: Platform) -> EarlyExitSpace:
    """The space of ``settings`` (a mapping is parsed first) on the val predictions."""
    if not isinstance(settings, SpaceSettings):
        settings = SpaceSettings.from_mapping(settings)
    settings.check_platform(platform)
    n_c, n_h, _ = val.head_pred.shape
    metrics = settings.metrics
    thr = settings.thresholds
    return EarlyExitSpace(
        n_candidates=n_c, n_heads=n_h, n_devices=platform.n_devices,
        max_exits=n_c if settings.max_exits is None else min(settings.max_exits, n_c),
        metrics=metrics, threshold_grid=threshold_grid(thr, val, metrics),
        threshold_range=(thr.low, thr.high),
        allowed_devices=settings.allowed_devices(platform),
        pinned_boundaries=tuple(settings.boundaries or ()),
    )
