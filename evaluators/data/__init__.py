"""Datasets and their train/val/test splits, by name from ``conf/data/*.yaml``.

``train`` fits exit heads, ``val`` drives the search and calibrates thresholds, ``test`` is
only for the final check. Splits are stratified and drawn deterministically from the config
sizes and the seed; :attr:`DataSplits.fingerprint` hashes the data and split indices so
downstream caches notice any change.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from evaluators.data._pool import ArrayDataset, DataError, Pool
from evaluators.data._splits import SPLITS, SplitError, stratified_split
from evaluators.data.settings import LOADERS, DataSettings
from evaluators.hashing import hash_tensors

__all__ = ["LOADERS", "ArrayDataset", "DataError", "DataSettings", "DataSplits", "load_data"]


@dataclass(frozen=True, kw_only=True)
class DataSplits:
    """The three splits of one dataset; each yields ``(float32 input_shape tensor, int label)``."""

    train: Dataset[tuple[torch.Tensor, int]]
    val: Dataset[tuple[torch.Tensor, int]]
    test: Dataset[tuple[torch.Tensor, int]]
    input_shape: tuple[int, ...]
    num_classes: int
    class_names: tuple[str, ...]
    name: str
    fingerprint: str


def _loader(name: str) -> Callable[..., Pool]:
    module_name, _, attr = LOADERS[name][0].partition(":")
    return getattr(importlib.import_module(module_name), attr)  # type: ignore[no-any-return]


def _norm(values: tuple[float, ...], ndim: int) -> torch.Tensor:
    t = torch.tensor(values, dtype=torch.float32)
    return t.reshape(-1, *([1] * (ndim - 1))) if t.numel() > 1 else t.reshape(())


def _fit_norm(
    x: torch.Tensor, scale: float, dims: tuple[int, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature mean/std of the train inputs, shared along ``dims`` of one sample."""
    xs = x.to(torch.float32) * scale
    reduce = (0, *(d + 1 for d in dims))
    mean = xs.mean(dim=reduce, keepdim=True)[0]
    std = xs.std(dim=reduce, keepdim=True)[0].clamp_min(1e-6)
    return mean, std


def _fingerprint(name: str, parts: dict[str, ArrayDataset], indices: dict[str, np.ndarray]) -> str:
    """Hash of every split's indices, labels, inputs and normalisation (a downstream cache key)."""
    named = [
        (f"{split}.{field}", value)
        for split in SPLITS
        for field, value in (
            ("indices", indices[split]),
            ("labels", parts[split].labels),
            ("inputs", parts[split].inputs),
            ("mean", parts[split].mean),
            ("std", parts[split].std),
        )
    ]
    return hash_tensors(named, salt=f"{name}|" + "|".join(str(parts[s].scale) for s in SPLITS))


def load_data(data: DataSettings, *, seed: int) -> DataSplits:
    """Load the dataset ``data`` describes (the parsed ``conf/data`` group) and split it."""
    name = data.name
    pool = _loader(data.loader)(data, seed=seed)
    num_classes = len(pool.class_names)
    if data.num_classes not in (None, num_classes):
        raise DataError(
            f"data.num_classes={data.num_classes} but {name} has {num_classes} classes; set "
            f"data.num_classes={num_classes}"
        )
    try:
        indices = stratified_split(pool.labels, data.splits.as_mapping(), seed=seed,
                                   groups=pool.groups)
    except SplitError as err:
        raise DataError(str(err)) from None
    inputs = {s: pool.read(indices[s]) for s in SPLITS}
    sample_ndim = inputs["train"].dim() - 1
    if pool.fit_norm:
        mean, std = _fit_norm(inputs["train"], pool.scale, pool.fit_dims)
    else:
        mean, std = _norm(pool.mean, sample_ndim), _norm(pool.std, sample_ndim)
    parts = {
        s: ArrayDataset(
            inputs[s],
            torch.as_tensor(pool.labels[indices[s]]),
            scale=pool.scale,
            mean=mean,
            std=std,
        )
        for s in SPLITS
    }
    return DataSplits(
        train=parts["train"],
        val=parts["val"],
        test=parts["test"],
        input_shape=tuple(int(d) for d in inputs["train"].shape[1:]),
        num_classes=num_classes,
        class_names=pool.class_names,
        name=name,
        fingerprint=_fingerprint(name, parts, indices),
    )
