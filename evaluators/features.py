"""One-pass feature cache: pooled activations at every exit candidate, on disk.

One backbone pass per split captures every candidate at once (an fx graph whose
outputs are the candidate nodes, pooled in-graph, plus the final logits; or
forward hooks for ``kind="module"``). Each (split, candidate) is one cache
entry keyed by a content hash of weights, data, candidate, pooling and precision:

* ``train`` features are stored as fp16 (head training only needs that much)
  and computed in ``features.train_precision`` (``auto``: bf16 autocast on a
  CUDA GPU, fp32 on a CPU);
* every other split (``val``, ``test``) is stored as float32 and computed in
  ``features.eval_precision`` (default ``fp32``: IEEE float32, TF32 off), so the
  prediction table sees the numbers a live fp32 EENN sees.

The precision each split was computed in is recorded in its entries' manifests
and in :attr:`FeatureStore.precision`. On a GPU the pass runs channels-last,
inputs are normalised on the device, and pooled features are copied to pinned
host buffers without waiting, then written and checksummed by background
threads while the next batch runs (see :mod:`evaluators._feature_pass`).

The budget (``features.budget_gib``) is checked on an estimate before the
pass, from the candidate shapes of a one-sample probe.

Entries are written atomically with a checksummed manifest (see
:mod:`evaluators._cache`), so an interrupted pass resumes with the entries
that were complete, and a damaged entry is rebuilt instead of read.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn
from torch.utils.data import Dataset

from evaluators._cache import CacheError, ensure_writable, read_entry, reset_entry
from evaluators._extract import (
    PRECISIONS,
    HookExtractor,
    build_extractor,
    iter_batches,
    precision_mode,
    probe,
    resolve_precision,
)
from evaluators._feature_pass import OUTPUT, _write_split
from evaluators._pool import FeatureCacheError, pool_features, pooled_shape
from evaluators.device import resolve_device
from evaluators.hashing import hash_json

__all__ = [
    "PRECISIONS",
    "CacheError",
    "FeatureCacheError",
    "FeatureStore",
    "extract_features",
    "iter_batches",
    "pool_features",
    "pooled_shape",
    "precision_mode",
]

FORMAT_VERSION = 2  # 2: keys and manifests name the precision of the pass


@dataclass(frozen=True, kw_only=True)
class FeatureStore:
    """Cached pooled features, labels and backbone logits per split (read-only arrays)."""

    root: Path
    points: tuple[str, ...]
    kind: str
    pool: int
    raw_shapes: Mapping[str, tuple[int, ...]]  # activation shape at each candidate, no batch
    shapes: Mapping[str, tuple[int, ...]]  # pooled (stored) shape at each candidate
    keys: Mapping[tuple[str, str], str]  # (split, candidate or OUTPUT) -> entry key
    arrays: Mapping[tuple[str, str], NDArray[Any]] = field(repr=False)
    precision: Mapping[str, str] = field(default_factory=dict)  # split -> fp32, tf32, bf16, fp16

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(split for split, _ in self.keys))

    @property
    def key(self) -> str:
        """Content hash of everything in the store."""
        return hash_json(sorted(self.keys.values()))

    def split_key(self, split: str) -> str:
        """Content hash of one split's entries (features of every candidate, labels, logits)."""
        return hash_json([self.keys[(split, p)] for p in (*self.points, OUTPUT)])

    def features(self, split: str, point: str) -> NDArray[Any]:
        """``(N, *shapes[point])`` pooled features (fp16 for train, float32 otherwise)."""
        return self.arrays[(split, point)]

    def labels(self, split: str) -> NDArray[np.int64]:
        return self.arrays[(split, "labels")]

    def logits(self, split: str) -> NDArray[np.float32]:
        """``(N, K)`` output of the backbone's own classifier."""
        return self.arrays[(split, "logits")]

    def n_samples(self, split: str) -> int:
        return int(self.labels(split).shape[0])

    @property
    def num_classes(self) -> int:
        return int(self.logits(self.splits[0]).shape[1])


def _check_budget(
    sizes: Mapping[str, int],
    shapes: Mapping[str, tuple[int, ...]],
    num_classes: int,
    *,
    pool: int,
    budget_gib: float,
) -> None:
    """Raise if the store would exceed ``budget_gib`` (fp16 train, float32 otherwise)."""
    per_sample = sum(math.prod(s) for s in shapes.values())
    total = sum(
        n * (per_sample * (2 if split == "train" else 4) + 4 * num_classes + 8)
        for split, n in sizes.items()
    )
    if total > budget_gib * 2**30:
        raise FeatureCacheError(
            f"feature cache needs {total / 2**30:.2f} GiB > features.budget_gib={budget_gib} "
            f"({len(shapes)} candidates, features.pool={pool}, samples {dict(sizes)}); "
            "lower model.candidates.max_candidates, features.pool or data.splits.train, "
            "or raise features.budget_gib"
        )


def _entry_key(
    *,
    weights_hash: str,
    data_fingerprint: str,
    split: str,
    n: int,
    point: str,
    kind: str,
    pool: int,
    precision: str,
) -> str:
    return hash_json(
        {
            "v": FORMAT_VERSION,
            "weights": weights_hash,
            "data": data_fingerprint,
            "split": split,
            "n": n,
            "point": point,
            "kind": kind,
            "pool": None if point == OUTPUT else pool,
            "precision": precision,
        }
    )


def _probe_shapes(
    net: nn.Module, points: Sequence[str], kind: str, dataset: Dataset[Any], device: torch.device
) -> tuple[int, dict[str, tuple[int, ...]]]:
    """(number of classes, raw activation shape per candidate) from a one-sample pass."""
    prober = build_extractor(net, points, kind, None)
    raw = probe(prober, dataset, device)
    if isinstance(prober, HookExtractor):
        prober.remove()
    return raw[0][0], dict(zip(points, raw[1:], strict=True))


def _load_arrays(
    root: Path, keys: Mapping[tuple[str, str], str]
) -> dict[tuple[str, str], NDArray[Any]]:
    """Read-only memory maps of every entry: features, labels and logits."""
    arrays: dict[tuple[str, str], NDArray[Any]] = {}
    for (split, point), key in keys.items():
        folder = root / key
        if point == OUTPUT:
            arrays[(split, "labels")] = np.load(folder / "labels.npy", mmap_mode="r")
            arrays[(split, "logits")] = np.load(folder / "logits.npy", mmap_mode="r")
        else:
            arrays[(split, point)] = np.load(folder / "features.npy", mmap_mode="r")
    return arrays


def extract_features(
    model: nn.Module,
    datasets: Mapping[str, Dataset[Any]],
    *,
    points: Sequence[str],
    kind: str = "node",
    pool: int,
    cache_dir: Path,
    weights_hash: str,
    data_fingerprint: str,
    batch_size: int = 256,
    budget_gib: float = 4.0,
    device: str = "cpu",
    train_precision: str = "auto",
    eval_precision: str = "fp32",
    progress: bool = True,
) -> FeatureStore:
    """Pooled features at every candidate for every split, from one backbone pass per split.

    ``points`` are fx node names of :func:`evaluators.graph.trace` (``kind="node"``)
    or module paths (``kind="module"``, forward hooks). The ``train`` split is
    computed in ``train_precision``, every other split in ``eval_precision``
    (see :data:`PRECISIONS`). Complete cache entries are reused; a split whose
    entries are all complete is not run at all. ``model`` is not modified (a
    copy is moved to ``device``). Raises :class:`FeatureCacheError` (one line)
    for a bad candidate, pool, device, precision, an exceeded budget or an
    unwritable ``cache_dir``.
    """
    if pool < 1:
        raise FeatureCacheError(f"features.pool={pool} must be >= 1")
    if not points:
        raise FeatureCacheError("no exit candidates given; check model.candidates")
    dev = resolve_device(device)
    precision = {
        split: resolve_precision(
            train_precision if split == "train" else eval_precision,
            dev,
            key=f"features.{'train' if split == 'train' else 'eval'}_precision",
        )
        for split in datasets
    }
    root = Path(cache_dir) / "features"
    ensure_writable(root)
    net = copy.deepcopy(model).float().to(dev).eval()
    if dev.type == "cuda":
        net = net.to(memory_format=torch.channels_last)
    num_classes, raw_shapes = _probe_shapes(net, points, kind, next(iter(datasets.values())), dev)
    shapes = {p: pooled_shape(s, pool) for p, s in raw_shapes.items()}
    sizes = {split: len(ds) for split, ds in datasets.items()}  # type: ignore[arg-type]
    _check_budget(sizes, shapes, num_classes, pool=pool, budget_gib=budget_gib)
    meta = {
        "version": FORMAT_VERSION,
        "weights": weights_hash,
        "data": data_fingerprint,
        "kind": kind,
        "pool": pool,
    }
    keys = {
        (split, p): _entry_key(
            weights_hash=weights_hash,
            data_fingerprint=data_fingerprint,
            split=split,
            n=sizes[split],
            point=p,
            kind=kind,
            pool=pool,
            precision=precision[split],
        )
        for split in datasets
        for p in (*points, OUTPUT)
    }
    extractor = build_extractor(net, points, kind, pool)
    for split, dataset in datasets.items():
        todo = {
            p: root / keys[(split, p)]
            for p in (*points, OUTPUT)
            if read_entry(root / keys[(split, p)]) is None
        }
        for folder in todo.values():
            reset_entry(folder)
        if todo:
            _write_split(
                extractor,
                dataset,
                split=split,
                todo=todo,
                points=points,
                shapes=shapes,
                num_classes=num_classes,
                meta=meta,
                batch_size=batch_size,
                device=dev,
                precision=precision[split],
                progress=progress,
            )
    return FeatureStore(
        root=root,
        points=tuple(points),
        kind=kind,
        pool=pool,
        raw_shapes=raw_shapes,
        shapes=shapes,
        keys=keys,
        arrays=_load_arrays(root, keys),
        precision=precision,
    )
