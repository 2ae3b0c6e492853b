"""Deterministic stratified train/val/test splits drawn from a pool of labelled samples."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

__all__ = ["SPLITS", "SplitError", "stratified_split"]

SPLITS: tuple[str, ...] = ("train", "val", "test")
# the groups each split may draw from (see stratified_split)
_OPEN: dict[str, tuple[str, ...]] = {
    "train": ("train", "fit"), "val": ("val", "fit"), "test": ("test",)
}


class SplitError(ValueError):
    """The requested split sizes cannot be drawn from the pool."""


def _allocate(counts: np.ndarray, size: int) -> np.ndarray:
    """Per-class counts proportional to ``counts`` summing to ``size`` (largest remainder)."""
    quota = size * counts / max(int(counts.sum()), 1)
    base = np.floor(quota).astype(np.int64)
    order = np.argsort(-(quota - base), kind="stable")
    base[order[: size - int(base.sum())]] += 1
    return base


def stratified_split(
    labels: np.ndarray,
    sizes: Mapping[str, int | None],
    *,
    seed: int,
    groups: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Draw disjoint index sets for train, val and test, each keeping the class proportions.

    ``sizes[name]`` is a sample count, or ``None`` for every sample still available. With
    ``groups`` (an array of split names per sample, e.g. a dataset's official partition) a
    split only draws from the samples of its own group; samples of group ``fit`` are open to
    train and then val (an official partition with only a test part). Each returned index
    array is in a seeded random order, so taking a prefix of it is still a fair sample.
    """
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    available = np.ones(len(labels), dtype=bool)
    out: dict[str, np.ndarray] = {}
    for name in SPLITS:
        mask = available if groups is None else available & np.isin(groups, _OPEN[name])
        pool = np.flatnonzero(mask)
        size = sizes.get(name)
        size = len(pool) if size is None else int(size)
        if size < 1 or size > len(pool):
            where = "" if groups is None else f" in its '{name}' partition"
            raise SplitError(
                f"data.splits.{name}={sizes.get(name)} but {len(pool)} samples are "
                f"available{where}; "
                f"set data.splits.{name} to a count between 1 and {len(pool)} (or null for all)"
            )
        classes = labels[pool]
        picked = []
        counts = np.bincount(classes, minlength=int(labels.max()) + 1)
        for cls, take in enumerate(_allocate(counts, size)):
            if take:
                members = pool[classes == cls]
                picked.append(rng.choice(members, size=int(take), replace=False))
        chosen = rng.permutation(np.concatenate(picked))
        available[chosen] = False
        out[name] = chosen
    return out
