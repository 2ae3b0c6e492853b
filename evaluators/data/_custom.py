"""Bring your own data: any torch Dataset from a ``_target_`` callable, or an ``.npz`` file.

Inputs are used as given (no normalisation); the input shape comes from the data and the
number of classes from ``data.num_classes`` or the largest label + 1.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evaluators._config import Group
from evaluators.data._pool import DataError, Pool
from evaluators.data.settings import DataSettings, LoaderOptions

__all__ = ["GenericOptions", "NpzOptions", "load_generic", "load_npz"]


@dataclass(frozen=True, kw_only=True)
class NpzOptions(LoaderOptions):
    """``conf/data/npz.yaml``: the file with arrays ``x`` and ``y`` (``data.root`` also works)."""

    path: Path | None = None

    @classmethod
    def from_group(cls, g: Group) -> NpzOptions:
        path = g.text("path", None, optional=True) or g.text("root", None, optional=True)
        if path in (None, "", "???"):
            raise DataError("data.path is not set; set data.path=<file with arrays x and y>")
        return cls(path=Path(path).expanduser())


@dataclass(frozen=True, kw_only=True)
class GenericOptions(LoaderOptions):
    """``conf/data/generic.yaml``: ``dataset`` is a Hydra node whose ``_target_`` returns a torch
    Dataset of ``(x, int label)``; its other keys are that callable's arguments (free-form)."""

    dataset: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_group(cls, g: Group) -> GenericOptions:
        node = g.values.get("dataset")
        if not isinstance(node, Mapping) or node.get("_target_") in (None, "", "???"):
            raise DataError(
                "data.loader=generic needs data.dataset._target_=<module.callable returning a "
                "torch Dataset>"
            )
        return cls(dataset=g.mapping("dataset"))


def _class_names(data: DataSettings, labels: np.ndarray, given: Any = None) -> tuple[str, ...]:
    if labels.size == 0 or labels.min() < 0:
        raise DataError(
            f"data {data.name!r} has no samples or negative labels; labels must be 0..C-1"
        )
    n = int(data.num_classes or labels.max() + 1)
    if labels.max() >= n:
        raise DataError(
            f"data.num_classes={n} but a label is {int(labels.max())}; raise data.num_classes"
        )
    names = (
        [str(c) for c in given]
        if given is not None and len(given) == n
        else [str(i) for i in range(n)]
    )
    return tuple(names)


def load_npz(data: DataSettings, *, seed: int) -> Pool:
    """Arrays ``x`` (N, ...) and ``y`` (N,) from ``data.path``; optional ``class_names`` array."""
    del seed
    assert isinstance(data.options, NpzOptions), "DataSettings picks the loader's options"
    path = data.options.path
    if path is None or not path.is_file():
        raise DataError(f"npz file not found at {path}; set data.path=<file with arrays x and y>")
    with np.load(path, allow_pickle=False) as f:
        missing = [k for k in ("x", "y") if k not in f]
        if missing:
            raise DataError(
                f"{path} has no array {missing[0]!r} (has {sorted(f.files)}); save it with "
                "np.savez(path, x=..., y=...)"
            )
        x, y = np.asarray(f["x"]), np.asarray(f["y"]).astype(np.int64).reshape(-1)
        given = f.get("class_names")
    if len(x) != len(y):
        raise DataError(f"{path}: x has {len(x)} samples but y has {len(y)}; they must match")
    inputs = torch.from_numpy(np.ascontiguousarray(x))
    return Pool(
        labels=y,
        class_names=_class_names(data, y, given),
        read=lambda idx: inputs[torch.as_tensor(idx)],
    )


def _labels_of(dataset: Any) -> np.ndarray:
    targets = getattr(dataset, "targets", None)
    if targets is not None and len(targets) == len(dataset):
        return np.asarray(targets, dtype=np.int64).reshape(-1)
    return np.array([int(dataset[i][1]) for i in range(len(dataset))], dtype=np.int64)


def load_generic(data: DataSettings, *, seed: int) -> Pool:
    """Instantiate ``data.dataset`` (a Hydra ``_target_`` node); read only the drawn samples."""
    del seed
    from hydra.utils import instantiate

    assert isinstance(data.options, GenericOptions), "DataSettings picks the loader's options"
    node = dict(data.options.dataset)
    try:
        dataset = instantiate(node)
    except Exception as err:  # Hydra wraps import and call errors alike
        raise DataError(
            f"data.dataset._target_={node['_target_']!r} failed: {str(err).splitlines()[0]}"
        ) from err
    labels = _labels_of(dataset)

    def read(idx: np.ndarray) -> torch.Tensor:
        return torch.stack([torch.as_tensor(dataset[int(i)][0], dtype=torch.float32) for i in idx])

    return Pool(
        labels=labels,
        class_names=_class_names(data, labels, getattr(dataset, "classes", None)),
        read=read,
    )
