"""The one early-exit search space, declared once and adapted to every backend.

Genes, for every exit candidate ``c``: ``on{c}`` (exit present), ``head{c}``
(index into the head family) and ``thr{c}`` (threshold level on the grid, or
a float for continuous thresholds); for every link ``i`` of the device chain
``b{i}`` (a boundary, see :class:`evaluators.eenn.EENNConfig`); and
``metric`` when the confidence metric is searched. ``space.boundaries`` pins
the device mapping (the ``b{i}`` genes then repair to the pinned values), for
a user who already knows which device runs which part, or to search one
placement at a time. A genome is a plain dict
``name -> value`` with every gene present, which is what pymoo's mixed
variables and Optuna's ask/tell (with fixed distributions) both need.

:meth:`EarlyExitSpace.repair` makes genomes canonical so duplicates are
recognised: genes of a disabled exit go to one value (head 0, level 0 /
lowest threshold), at most ``max_exits`` exits stay on, threshold levels with
the same value collapse to the first, boundaries are sorted and moved off
devices that are not allowed, and the metric of an exit-less genome is the
first one.

Threshold grid (``thresholds.mode``): ``quantile`` (default) takes, for each
(metric, candidate, head), the ``1 - (1 - l/L)^2`` quantiles (``l = 0..L-1``)
of that head's val confidences, so level ``l`` lets about ``(1 - l/L)^2`` of
val pass: every level is a distinct exit rate whatever the head's
calibration, and levels are densest where few samples pass, which is where
exits that keep the accuracy constraint live;
``uniform`` is a fixed grid ``linspace(low, high, L)``; ``continuous`` makes
thresholds real genes in ``[low, high]`` (the proxy then builds bitsets per
batch, slower).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from evaluators.eenn import METRICS, EENNConfig, ExitChoice
from evaluators.platform import Platform
from evaluators.predictions import SplitPredictions

__all__ = ["EarlyExitSpace", "Genome", "Var", "build_space"]

Genome = dict[str, Any]
_MODES = ("quantile", "uniform", "continuous")


@dataclass(frozen=True, kw_only=True)
class Var:
    """One gene, sampler-neutral: ``bool``, ``int`` in [low, high], ``float`` or ``choice``."""

    name: str
    kind: str
    low: float = 0.0
    high: float = 1.0
    choices: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True, eq=False)
class EarlyExitSpace:
    """Exits (on/off, head, threshold) at C candidates and boundaries on a D-device chain."""

    n_candidates: int
    n_heads: int
    n_devices: int
    max_exits: int
    metrics: tuple[str, ...]
    threshold_grid: Mapping[str, NDArray[np.float64]] | None  # metric -> (C, H, L) ascending
    threshold_range: tuple[float, float] = (0.0, 1.0)
    allowed_devices: tuple[int, ...] = ()
    pinned_boundaries: tuple[int, ...] = ()  # empty: the device mapping is searched
    _device_map: tuple[int, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        allowed = self.allowed_devices or tuple(range(self.n_devices))
        object.__setattr__(self, "allowed_devices", allowed)
        bad = [d for d in allowed if not 0 <= d < self.n_devices]
        if bad or not self.metrics or not self.max_exits >= 0:
            raise ValueError(f"space: devices {bad} / metrics {self.metrics} / max_exits "
                             f"{self.max_exits} invalid for a {self.n_devices}-device chain")
        ok = sorted(allowed)
        mapping = [next((a for a in ok if a >= d), ok[-1]) for d in range(self.n_devices)]
        object.__setattr__(self, "_device_map", tuple(mapping))
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
        canonical = tuple(self._searched_boundaries(pinned).values())
        if canonical != pinned:
            raise ValueError(f"space.boundaries={list(pinned)} puts segments on devices outside "
                             f"space.devices {list(self.allowed_devices)}; the same mapping "
                             f"within them is {list(canonical)}")

    @property
    def n_links(self) -> int:
        return self.n_devices - 1

    @property
    def n_levels(self) -> int:
        """Threshold levels of the grid (0 for continuous thresholds)."""
        grid = self.threshold_grid
        return 0 if grid is None else int(next(iter(grid.values())).shape[2])

    @property
    def variables(self) -> tuple[Var, ...]:
        """All genes, in a fixed order (the flat encoding)."""
        out: list[Var] = []
        lo, hi = self.threshold_range
        for c in range(self.n_candidates):
            out.append(Var(name=f"on{c}", kind="bool"))
            out.append(Var(name=f"head{c}", kind="int", low=0, high=self.n_heads - 1))
            out.append(Var(name=f"thr{c}", kind="int", low=0, high=self.n_levels - 1)
                       if self.threshold_grid is not None
                       else Var(name=f"thr{c}", kind="float", low=lo, high=hi))
        out += [Var(name=f"b{i}", kind="int", low=0, high=self.n_candidates + 1)
                for i in range(self.n_links)]
        if len(self.metrics) > 1:
            out.append(Var(name="metric", kind="choice", choices=self.metrics))
        return tuple(out)

    def key(self, genome: Mapping[str, Any]) -> tuple[Any, ...]:
        """Hashable identity of a repaired genome (for duplicate detection)."""
        return tuple(genome[v.name] for v in self.variables)

    def repair(self, genome: Mapping[str, Any], rng: np.random.Generator | None = None, *,
               keep_inactive: bool = False) -> Genome:
        """Canonical copy of ``genome`` (see module doc); ``rng`` picks exits to drop.

        ``keep_inactive`` leaves the (rounded, clipped) genes of disabled exits as
        they are, so an evolutionary backend keeps their information for later.
        """
        c_n = self.n_candidates
        metric = str(genome.get("metric", self.metrics[0]))
        if metric not in self.metrics:
            metric = self.metrics[0]
        on = [c for c in range(c_n) if bool(round(float(genome[f"on{c}"])))]
        if len(on) > self.max_exits:
            if rng is None:  # deterministic per genome, unbiased across genomes
                rng = np.random.default_rng(zlib.crc32(repr(sorted(on)).encode()))
            on = sorted(int(c) for c in rng.choice(on, self.max_exits, replace=False))
        out: Genome = {}
        for c in range(c_n):
            active = c in on
            out[f"on{c}"] = active
            head = int(np.clip(round(float(genome[f"head{c}"])), 0, self.n_heads - 1))
            out[f"head{c}"] = head if active or keep_inactive else 0
            out[f"thr{c}"] = self._canonical_threshold(genome[f"thr{c}"], metric, c, head,
                                                       active or keep_inactive)
        out.update(self._repair_boundaries([genome[f"b{i}"] for i in range(self.n_links)]))
        if len(self.metrics) > 1:
            out["metric"] = metric if on else self.metrics[0]
        return out

    def _canonical_threshold(self, value: Any, metric: str, c: int, head: int,
                             active: bool) -> int | float:
        lo, hi = self.threshold_range
        if self.threshold_grid is None:
            return float(np.clip(float(value), lo, hi)) if active else float(lo)
        if not active:
            return 0
        row = self.threshold_grid[metric][c, head]
        level = int(np.clip(round(float(value)), 0, len(row) - 1))
        return int(np.searchsorted(row, row[level], side="left"))  # first level of equal value

    def _repair_boundaries(self, raw: Sequence[Any]) -> dict[str, int]:
        if self.pinned_boundaries:
            return {f"b{i}": b for i, b in enumerate(self.pinned_boundaries)}
        return self._searched_boundaries(raw)

    def _searched_boundaries(self, raw: Sequence[Any]) -> dict[str, int]:
        """Sorted, clipped boundaries, moved off devices that are not allowed."""
        c_n = self.n_candidates
        bnd = sorted(int(np.clip(round(float(b)), 0, c_n + 1)) for b in raw)
        seg_dev = [self._device_map[sum(1 for b in bnd if b <= s)] for s in range(c_n + 1)]
        return {f"b{i}": next((s for s in range(c_n + 1) if seg_dev[s] > i), c_n + 1)
                for i in range(self.n_links)}

    def decode(self, genome: Mapping[str, Any]) -> EENNConfig:
        """The EENN a genome stands for (the genome is repaired first)."""
        g = self.repair(genome)
        metric = str(g.get("metric", self.metrics[0]))
        exits = []
        for c in range(self.n_candidates):
            if g[f"on{c}"]:
                h, t = g[f"head{c}"], g[f"thr{c}"]
                thr = float(t) if self.threshold_grid is None else float(
                    self.threshold_grid[metric][c, h, t])
                exits.append(ExitChoice(candidate=c, head=h, threshold=thr))
        return EENNConfig(exits=tuple(exits), metric=metric,
                          boundaries=tuple(g[f"b{i}"] for i in range(self.n_links)))

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
        if self._repair_boundaries(config.boundaries) != {
                f"b{i}": b for i, b in enumerate(config.boundaries)}:
            raise ValueError(f"boundaries {config.boundaries} use a device outside "
                             f"allowed_devices={self.allowed_devices}")
        return genome

    def _level(self, metric: str, e: ExitChoice) -> int | float:
        if self.threshold_grid is None:
            return e.threshold
        row = self.threshold_grid[metric][e.candidate, e.head]
        return int(np.argmin(np.abs(row - e.threshold)))

    def sample(self, n: int, rng: np.random.Generator) -> list[Genome]:
        """``n`` random canonical genomes: exit count uniform in 0..max_exits, genes uniform."""
        out = []
        c_n, lo, hi = self.n_candidates, *self.threshold_range
        for _ in range(n):
            k = int(rng.integers(0, min(self.max_exits, c_n) + 1))
            on = set(rng.choice(c_n, k, replace=False).tolist())
            g: Genome = {}
            for c in range(c_n):
                g[f"on{c}"] = c in on
                g[f"head{c}"] = int(rng.integers(self.n_heads))
                g[f"thr{c}"] = (int(rng.integers(self.n_levels)) if self.threshold_grid is not None
                                else float(rng.uniform(lo, hi)))
            g.update({f"b{i}": int(rng.integers(c_n + 2)) for i in range(self.n_links)})
            g["metric"] = self.metrics[int(rng.integers(len(self.metrics)))]
            out.append(self.repair(g))
        return out


def _grid(cfg: Mapping[str, Any], val: SplitPredictions,
          metrics: Sequence[str]) -> dict[str, NDArray[np.float64]] | None:
    mode = str(cfg.get("mode", "quantile"))
    levels = int(cfg.get("levels", 32))
    lo, hi = float(cfg.get("low", 0.0)), float(cfg.get("high", 1.0))
    if mode not in _MODES:
        raise ValueError(f"space.thresholds.mode={mode!r} is not one of {_MODES}")
    if mode == "continuous":
        return None
    if not 2 <= levels <= 4096:
        raise ValueError(f"space.thresholds.levels={levels!r} must be in 2..4096")
    n_c, n_h, _ = val.head_pred.shape
    if mode == "uniform":
        row = np.linspace(lo, hi, levels)
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


def build_space(cfg: Mapping[str, Any], *, val: SplitPredictions,
                platform: Platform) -> EarlyExitSpace:
    """Build the space from ``conf/space`` options, the val predictions and the platform."""
    known = {"max_exits", "metric", "thresholds", "devices", "boundaries"}
    if set(cfg) - known:
        raise ValueError(f"unknown space option(s) {sorted(set(cfg) - known)}; use {sorted(known)}")
    n_c, n_h, _ = val.head_pred.shape
    metric = str(cfg.get("metric", "max_softmax"))
    if metric != "search" and metric not in METRICS:
        raise ValueError(f"space.metric={metric!r} must be one of {METRICS} or 'search'")
    metrics = METRICS if metric == "search" else (metric,)
    max_exits = cfg.get("max_exits")
    max_exits = n_c if max_exits is None else int(max_exits)
    names = [d.name for d in platform.devices]
    devices = []
    for d in cfg.get("devices") or []:
        if d in names:
            devices.append(names.index(d))
        elif isinstance(d, int) and 0 <= d < len(names):
            devices.append(d)
        else:
            raise ValueError(f"space.devices entry {d!r} is not a device of {names}")
    thr = cfg.get("thresholds") or {}
    pinned = cfg.get("boundaries")
    if pinned is not None and (isinstance(pinned, (str, int))
                               or not all(isinstance(b, int) for b in pinned)):
        raise ValueError(f"space.boundaries={pinned!r} must be a list of integers, one per link "
                         f"(e.g. [3]), or null to search the device mapping")
    if pinned is not None and len(pinned) != platform.n_devices - 1:
        raise ValueError(f"space.boundaries={list(pinned)} must have one boundary per link of the "
                         f"{platform.n_devices}-device chain ({platform.n_devices - 1}), "
                         f"or be null to search the device mapping")
    return EarlyExitSpace(
        n_candidates=n_c, n_heads=n_h, n_devices=platform.n_devices,
        max_exits=min(max_exits, n_c), metrics=metrics,
        threshold_grid=_grid(thr, val, metrics),
        threshold_range=(float(thr.get("low", 0.0)), float(thr.get("high", 1.0))),
        allowed_devices=tuple(sorted(set(devices))),
        pinned_boundaries=tuple(pinned or ()),
    )
