"""Typed settings of the ``space`` group (:mod:`spaces.space` builds the search space from them).

The field defaults are the one place a default lives; ``conf/space/default.yaml`` chooses
nothing else. What needs the platform (device names, one boundary per link) is checked by
:meth:`SpaceSettings.check_platform`, at the entry point too; what needs the exit candidates
(boundary values up to C+1) is checked when the space is built.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from evaluators.eenn import METRICS
from evaluators.platform import Platform
from evaluators.settings import ConfigError, Group, strict_int

__all__ = ["THRESHOLD_MODES", "SpaceSettings", "ThresholdSettings"]

THRESHOLD_MODES: tuple[str, ...] = ("quantile", "uniform", "continuous")


@dataclass(frozen=True, kw_only=True)
class ThresholdSettings:
    """``space.thresholds``: the grid an exit's threshold is chosen from.

    ``quantile``: per (candidate, head) the ``1-(1-l/L)^2`` quantiles of val confidence, so
    level ``l`` lets about ``(1-l/L)^2`` of val pass (dense where few pass, where
    accuracy-constrained exits live); ``uniform``: ``linspace(low, high, levels)``;
    ``continuous``: a real gene in ``[low, high]`` (slower proxy: bitsets built per batch).
    """

    mode: str = "quantile"
    levels: int = 32
    low: float = 0.0
    high: float = 1.0

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any] | None) -> ThresholdSettings:
        g = Group.of("space.thresholds", cfg)
        g.check_keys(f.name for f in fields(cls))
        d = cls()
        mode = g.text("mode", d.mode, choices=THRESHOLD_MODES)
        levels = g.integer("levels", d.levels)
        if not 2 <= levels <= 4096:
            raise ConfigError(f"space.thresholds.levels={levels!r} must be in 2..4096")
        low, high = g.number("low", d.low), g.number("high", d.high)
        if not low < high:
            raise ConfigError(f"space.thresholds.low={low} must be below space.thresholds.high="
                              f"{high}")
        return cls(mode=mode, levels=levels, low=low, high=high)


def _device(value: Any) -> str | int:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise TypeError(value)
    return value


@dataclass(frozen=True, kw_only=True)
class SpaceSettings:
    """``space``: what the search may choose.

    ``max_exits``: most exits an EENN may have (``None``: one at every candidate).
    ``metric``: the exit decision's confidence metric, or ``search`` to make it a gene.
    ``devices``: devices (names or chain indices) that may run segments (``None``: all).
    ``boundaries``: pins the device mapping, one boundary per link of the chain,
    non-decreasing, each in ``0..C+1`` (``b``: the next device starts with segment ``b``;
    ``C+1``: the link is never used), e.g. ``[3, 7]``; ``None``: searched.
    """

    max_exits: int | None = 4
    metric: str = "max_softmax"
    thresholds: ThresholdSettings = ThresholdSettings()
    devices: tuple[str | int, ...] | None = None
    boundaries: tuple[int, ...] | None = None

    @property
    def metrics(self) -> tuple[str, ...]:
        """The metrics the search chooses from (all of them for ``metric: search``)."""
        return METRICS if self.metric == "search" else (self.metric,)

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any] | None) -> SpaceSettings:
        g = Group.of("space", cfg)
        known = sorted(f.name for f in fields(cls))
        if set(g.values) - set(known):
            raise ConfigError(f"unknown space option(s) {sorted(set(g.values) - set(known))}; "
                              f"use {known}")
        d = cls()
        metric = g.text("metric", d.metric)
        if metric != "search" and metric not in METRICS:
            raise ConfigError(f"space.metric={metric!r} must be one of {METRICS} or 'search'")
        pinned = g.values.get("boundaries")
        if pinned is not None and (isinstance(pinned, (str, int, Mapping))
                                   or not all(isinstance(b, int) and not isinstance(b, bool)
                                              for b in pinned)):
            raise ConfigError(f"space.boundaries={pinned!r} must be a list of integers, one per "
                              "link (e.g. [3]), or null to search the device mapping")
        return cls(
            max_exits=g.integer("max_exits", d.max_exits, low=0, optional=True),
            metric=metric,
            thresholds=ThresholdSettings.from_mapping(g.values.get("thresholds")),
            devices=g.items("devices", d.devices, item=_device, optional=True,
                            what="a list of device names or indices"),
            boundaries=None if pinned is None else tuple(strict_int(b) for b in pinned),
        )

    def allowed_devices(self, platform: Platform) -> tuple[int, ...]:
        """Chain indices of ``devices`` on ``platform`` (sorted; empty: all devices)."""
        names = [d.name for d in platform.devices]
        out = set()
        for d in self.devices or ():
            if d in names:
                out.add(names.index(str(d)))
            elif isinstance(d, int) and 0 <= d < len(names):
                out.add(d)
            else:
                raise ConfigError(f"space.devices entry {d!r} is not a device of {names}")
        return tuple(sorted(out))

    def check_platform(self, platform: Platform) -> None:
        """``devices`` name devices of ``platform`` and ``boundaries`` has one entry per link."""
        self.allowed_devices(platform)
        n = platform.n_devices
        if self.boundaries is not None and len(self.boundaries) != n - 1:
            raise ConfigError(f"space.boundaries={list(self.boundaries)} must have one boundary "
                              f"per link of the {n}-device chain ({n - 1}), or be null to search "
                              "the device mapping")
