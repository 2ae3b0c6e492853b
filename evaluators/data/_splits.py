"""Deterministic stratified train/val/test splits drawn from a pool of labelled samples.

A split's size is a count (``3000``), a fraction of the data (``0.6``) or ``None`` (every
sample still open to it). :func:`rare_classes` names the classes a split ended up without.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

__all__ = ["SPLITS", "Size", "SplitError", "rare_classes", "stratified_split"]

SPLITS: tuple[str, ...] = ("train", "val", "test")
Size = int | float | None  # a count, a fraction in (0, 1], or None for all that remain
# the groups each split may draw from (see stratified_split)
_OPEN: dict[str, tuple[str, ...]] = {
    "train": ("train", "fit"), "val": ("val", "fit"), "test": ("test",)
}


class SplitError(ValueError):
    """The requested split sizes cannot be drawn from the pool."""


def _allocate(weights: np.ndarray, size: int) -> np.ndarray:
    """Integer shares proportional to ``weights`` summing to ``size`` (largest remainder)."""
    total = float(weights.sum())
    quota = size * weights / total if total > 0 else np.zeros_like(weights, dtype=float)
    base = np.floor(quota).astype(np.int64)
    order = np.argsort(-(quota - base), kind="stable")
    base[order[: size - int(base.sum())]] += 1
    return np.asarray(base, dtype=np.int64)


def _is_fraction(size: Size) -> bool:
    return isinstance(size, float)


def _counts(labels: np.ndarray, sizes: Mapping[str, Size],
            groups: np.ndarray | None) -> dict[str, int | None]:
    """Fractions turned into counts. Without ``groups`` fractions are shares of the whole data,
    allocated together (0.6/0.2/0.2 of 5,000 is exactly 3,000/1,000/1,000); with ``groups``
    each is a share of the samples open to that split."""
    out: dict[str, int | None] = {s: v for s, v in sizes.items() if not _is_fraction(v)}  # type: ignore[misc]
    shares = {s: float(v) for s, v in sizes.items() if _is_fraction(v)}  # type: ignore[arg-type]
    if groups is not None:
        for name, share in shares.items():
            open_ = int(np.isin(groups, _OPEN[name]).sum())
            out[name] = max(1, round(share * open_))
        return out
    if sum(shares.values()) > 1.0 + 1e-9:
        listed = ", ".join(f"{s}: {v}" for s, v in shares.items())
        raise SplitError(f"data.splits fractions {{{listed}}} sum to {sum(shares.values()):.3g}, "
                         "more than the whole data; make them add up to at most 1")
    if shares:
        fixed = sum(int(v) for v in out.values() if v is not None)
        total = min(len(labels) - fixed, round(len(labels) * sum(shares.values())))
        weights = np.array([shares[s] * len(labels) for s in shares])
        out.update(zip(shares, (int(c) for c in _allocate(weights, max(total, 0))), strict=True))
    return out


def _too_many(name: str, asked: Size, pool: int, grouped: bool) -> SplitError:
    where = f" in its '{name}' partition" if grouped else ""
    if pool == 0:
        return SplitError(f"data.splits.{name}={asked} but the splits before it took every "
                          f"sample{where}; lower them or use fractions, e.g. "
                          "data.splits={train: 0.6, val: 0.2, test: 0.2}")
    return SplitError(f"data.splits.{name}={asked} but {pool} samples are available{where}; set "
                      f"data.splits.{name} to a count between 1 and {pool}, a fraction such as "
                      "0.2, or null for all")


def stratified_split(
    labels: np.ndarray,
    sizes: Mapping[str, Size],
    *,
    seed: int,
    groups: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Draw disjoint index sets for train, val and test, each keeping the class proportions.

    ``sizes[name]`` is a sample count, a fraction (see :func:`_counts`) or ``None`` for every
    sample still available. With ``groups`` (an array of split names per sample, e.g. a
    dataset's official partition) a split only draws from the samples of its own group;
    samples of group ``fit`` are open to train and then val (a partition with only train and
    test parts). Each returned index array is in a seeded random order, so taking a prefix of
    it is still a fair sample.
    """
    labels = np.asarray(labels, dtype=np.int64)
    counts = _counts(labels, sizes, groups)
    rng = np.random.default_rng(seed)
    available = np.ones(len(labels), dtype=bool)
    out: dict[str, np.ndarray] = {}
    for name in SPLITS:
        mask = available if groups is None else available & np.isin(groups, _OPEN[name])
        pool = np.flatnonzero(mask)
        size = counts.get(name)
        size = len(pool) if size is None else int(size)
        if size < 1 or size > len(pool):
            raise _too_many(name, sizes.get(name), len(pool), groups is not None)
        classes = labels[pool]
        picked = []
        per_class = np.bincount(classes, minlength=int(labels.max()) + 1)
        for cls, take in enumerate(_allocate(per_class, size)):
            if take:
                members = pool[classes == cls]
                picked.append(rng.choice(members, size=int(take), replace=False))
        chosen = rng.permutation(np.concatenate(picked))
        available[chosen] = False
        out[name] = chosen
    return out


def rare_classes(labels: np.ndarray, parts: Mapping[str, np.ndarray],
                 class_names: tuple[str, ...]) -> str | None:
    """One line naming each class missing from some split, with its sample count, else None."""
    labels = np.asarray(labels, dtype=np.int64)
    total = np.bincount(labels, minlength=len(class_names))
    found = []
    for cls, name in enumerate(class_names):
        absent = [s for s in SPLITS if not np.any(labels[parts[s]] == cls)]
        if absent:
            found.append(f"{name!r} ({int(total[cls])} samples, none in {'/'.join(absent)})")
    if not found:
        return None
    return (f"class {', '.join(found)} too rare to be in every split: its accuracy cannot be "
            "trained or measured; add samples of it or merge it into another class")
