"""Stratified splits and the embedded MNIST-5k loader."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from evaluators.data import DataError, DataSettings, DataSplits, load_data
from evaluators.data._splits import SplitError, stratified_split

MNIST = {"name": "mnist5k", "loader": "mnist5k", "splits": {"train": 300, "val": 100, "test": 100}}


def _load(cfg: dict[str, Any], *, seed: int) -> DataSplits:
    """``load_data`` on a ``data`` mapping, parsed as the entry points parse it."""
    return load_data(DataSettings.from_mapping(cfg), seed=seed)


def test_split_sizes_are_exact_disjoint_and_stratified() -> None:
    labels = np.repeat(np.arange(3), [50, 30, 20])
    parts = stratified_split(labels, {"train": 50, "val": 20, "test": None}, seed=0)
    assert [len(parts[s]) for s in ("train", "val", "test")] == [50, 20, 30]
    joined = np.concatenate(list(parts.values()))
    assert len(np.unique(joined)) == 100  # disjoint and, with test=None, everything used
    assert np.bincount(labels[parts["train"]]).tolist() == [25, 15, 10]
    assert np.bincount(labels[parts["val"]]).tolist() == [10, 6, 4]


def test_split_is_seeded() -> None:
    labels = np.arange(200) % 4
    a = stratified_split(labels, {"train": 50, "val": 50, "test": 50}, seed=3)
    b = stratified_split(labels, {"train": 50, "val": 50, "test": 50}, seed=3)
    c = stratified_split(labels, {"train": 50, "val": 50, "test": 50}, seed=4)
    assert all(np.array_equal(a[s], b[s]) for s in a)
    assert not np.array_equal(a["train"], c["train"])


def test_split_respects_predefined_groups() -> None:
    labels = np.arange(30) % 2
    groups = np.array(["train"] * 20 + ["val"] * 5 + ["test"] * 5)
    parts = stratified_split(labels, {"train": None, "val": 4, "test": None}, seed=0, groups=groups)
    assert set(parts["train"]) == set(range(20))
    assert set(parts["val"]) <= set(range(20, 25)) and len(parts["val"]) == 4
    assert set(parts["test"]) == set(range(25, 30))


def test_split_too_large_names_the_key() -> None:
    with pytest.raises(SplitError, match=r"data\.splits\.val=90 but 50 samples"):
        stratified_split(np.zeros(100, int), {"train": 50, "val": 90, "test": 1}, seed=0)


def test_mnist5k_splits() -> None:
    data = _load(MNIST, seed=0)
    assert (len(data.train), len(data.val), len(data.test)) == (300, 100, 100)
    assert data.input_shape == (1, 28, 28) and data.num_classes == 10
    assert data.class_names == tuple("0123456789")
    x, y = data.train[0]
    assert x.dtype == torch.float32 and x.shape == (1, 28, 28) and isinstance(y, int)
    xs, ys = data.val.tensors()  # type: ignore[attr-defined]
    assert np.bincount(ys.numpy()).tolist() == [10] * 10
    assert (
        -0.5 < float(xs.min()) < -0.4 and 2.7 < float(xs.max()) < 2.9
    )  # (0 or 1 - 0.1307) / 0.3081
    assert _load(MNIST, seed=0).fingerprint == data.fingerprint
    assert _load(MNIST, seed=1).fingerprint != data.fingerprint


def test_bad_data_config_gives_one_line_errors() -> None:
    with pytest.raises(DataError, match=r"unknown data\.loader='mnist'"):
        _load({**MNIST, "loader": "mnist"}, seed=0)
    with pytest.raises(DataError, match=r"data.num_classes=7 but mnist5k has 10"):
        _load({**MNIST, "num_classes": 7}, seed=0)
    with pytest.raises(DataError, match=r"data.splits.test=4901"):
        _load({**MNIST, "splits": {"train": 50, "val": 50, "test": 4901}}, seed=0)
