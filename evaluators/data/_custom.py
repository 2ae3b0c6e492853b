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
from evaluators.data._splits import SPLITS
from evaluators.data.settings import DataSettings, LoaderOptions

__all__ = ["GenericOptions", "NpzOptions", "load_generic", "load_npz"]


@dataclass(frozen=True, kw_only=True)
class NpzOptions(LoaderOptions):
    """``conf/data/npz.yaml``: ``path`` is one ``.npz`` file (``data.root`` also works) or a
    mapping ``{train: a.npz, val: b.npz, test: c.npz}`` of one file per split."""

    path: Path | Mapping[str, Path] | None = None

    @classmethod
    def from_group(cls, g: Group) -> NpzOptions:
        raw = g.values.get("path")
        if isinstance(raw, Mapping):
            files = g.mapping("path")
            unknown = sorted(set(files) - set(SPLITS))
            if unknown or not {"train", "test"} <= set(files):
                raise DataError(f"data.path={files!r} must map train and test (and optionally "
                                "val) to .npz files, e.g. data.path={train: a.npz, test: b.npz}")
            return cls(path={k: Path(str(files[k])).expanduser() for k in SPLITS if k in files})
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


_LAYOUT = ("save it with np.savez(path, x=..., y=...), np.savez(path, x=..., y=..., "
           "split=...) or np.savez(path, x_train=..., y_train=..., x_val=..., y_val=..., "
           "x_test=..., y_test=...)")


def _arrays(path: Path, f: Any, x_key: str, y_key: str) -> tuple[np.ndarray, np.ndarray]:
    """``f[x_key]`` and ``f[y_key]`` as inputs and int64 labels of equal length."""
    missing = [k for k in (x_key, y_key) if k not in f]
    if missing:
        raise DataError(f"{path} has no array {missing[0]!r} (has {sorted(f.files)}); {_LAYOUT}")
    x, y = np.asarray(f[x_key]), np.asarray(f[y_key])
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: {y_key} has shape {y.shape} and dtype {y.dtype}; it must be "
                        "one integer class label per sample, shape (N,)")
    if x.ndim < 2 or len(x) != len(y):
        raise DataError(f"{path}: {x_key} has shape {x.shape} but {y_key} has {len(y)} labels; "
                        f"{x_key} must be (N, ...) with one sample per label")
    return x, y.astype(np.int64)


def _split_names(path: Path, raw: np.ndarray, n: int) -> np.ndarray:
    groups = np.asarray(raw).astype(str).reshape(-1)
    bad = sorted(set(groups.tolist()) - set(SPLITS))
    if len(groups) != n or bad:
        raise DataError(f"{path}: split must hold one of train, val, test per sample ({n}); it "
                        f"has {len(groups)} entries{f' and the values {bad}' if bad else ''}")
    return groups


def _read_npz(path: Path, split: str | None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None,
                                                      Any]:
    """Inputs, labels, the split name of each sample (None: unpartitioned), class names."""
    if not path.is_file():
        raise DataError(f"npz file not found at {path}; set data.path=<file with arrays x and y>")
    with np.load(path, allow_pickle=False) as f:
        given = f.get("class_names")
        if split is not None:  # one file per split: x, y or x_<split>, y_<split>
            x_key = "x" if "x" in f else f"x_{split}"
            x, y = _arrays(path, f, x_key, "y" if x_key == "x" else f"y_{split}")
            return x, y, np.full(len(y), split), given
        if "x" not in f and "x_train" in f:
            parts = [(s, *_arrays(path, f, f"x_{s}", f"y_{s}")) for s in SPLITS
                     if s != "val" or "x_val" in f]
            x = _stack(path, [(f"x_{s}", a) for s, a, _ in parts])
            names = np.concatenate([np.full(len(b), s) for s, _, b in parts])
            return x, np.concatenate([b for _, _, b in parts]), names, given
        x, y = _arrays(path, f, "x", "y")
        groups: np.ndarray | None = _split_names(path, f["split"], len(y)) if "split" in f else None
        return x, y, groups, given


def _stack(path: Path, named: list[tuple[str, np.ndarray]]) -> np.ndarray:
    """Concatenate the splits' inputs; their samples must share one shape."""
    first, ref = named[0]
    for key, arr in named[1:]:
        if arr.shape[1:] != ref.shape[1:]:
            raise DataError(f"{path}: {key} has samples of shape {arr.shape[1:]} but {first} "
                            f"has {ref.shape[1:]}; every split's samples must have one shape")
    return np.concatenate([a for _, a in named])


def load_npz(data: DataSettings, *, seed: int) -> Pool:
    """Arrays from ``data.path``: ``x`` (N, ...) and ``y`` (N,), optionally a ``split`` array of
    train/val/test per sample; or ``x_train``/``y_train``/``x_val``/``y_val``/``x_test``/
    ``y_test``; or one such file per split. An optional ``class_names`` array names the
    classes. A given partition is kept (``fit`` when there is no val part: val is then drawn
    from train)."""
    del seed
    assert isinstance(data.options, NpzOptions), "DataSettings picks the loader's options"
    spec = data.options.path
    files: dict[str | None, Path | None] = (
        {k: Path(v) for k, v in spec.items()} if isinstance(spec, Mapping) else {None: spec})
    read = {split: _read_npz(Path(str(p)), split) for split, p in files.items()}
    x = _stack(Path(str(files.get("train", next(iter(files.values()))))),
               [(f"x of {split or 'the file'}", r[0]) for split, r in read.items()])
    y = np.concatenate([r[1] for r in read.values()])
    parts = [r[2] for r in read.values()]
    groups = None if parts[0] is None else np.concatenate([p for p in parts if p is not None])
    if groups is not None and not np.any(groups == "val"):
        groups = np.where(groups == "train", "fit", groups)
    given = next(iter(read.values()))[3]
    inputs = torch.from_numpy(np.ascontiguousarray(x))
    return Pool(labels=y, class_names=_class_names(data, y, given),
                read=lambda idx: inputs[torch.as_tensor(idx)], groups=groups)


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
