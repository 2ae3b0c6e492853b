"""Bring-your-own data: fractions by default, the user's own partition, errors, rare classes."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from evaluators.data import DataError, DataSettings, DataSplits, load_data
from evaluators.data._splits import SplitError, stratified_split


def _load(cfg: dict[str, Any], *, seed: int = 0) -> DataSplits:
    return load_data(DataSettings.from_mapping({"name": "mine", "loader": "npz", **cfg}),
                     seed=seed)


def _arrays(n: int, classes: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 1, 12)).astype(np.float32), np.arange(n) % classes


def _sizes(data: DataSplits) -> tuple[int, int, int]:
    return len(data.train), len(data.val), len(data.test)  # type: ignore[arg-type]


def test_default_splits_are_fractions_that_fit_a_small_dataset(tmp_path: Path) -> None:
    x, y = _arrays(200)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    assert _sizes(_load({"path": str(tmp_path / "d.npz")})) == (120, 40, 40)
    counts = _load({"path": str(tmp_path / "d.npz"), "splits": {"train": 50, "val": 30,
                                                                 "test": None}})
    assert _sizes(counts) == (50, 30, 120)


def test_fractions_of_5000_are_the_old_counts() -> None:
    labels = np.arange(5000) % 10
    old = stratified_split(labels, {"train": 3000, "val": 1000, "test": 1000}, seed=0)
    new = stratified_split(labels, {"train": 0.6, "val": 0.2, "test": 0.2}, seed=0)
    assert all(np.array_equal(old[s], new[s]) for s in old)


def test_split_errors_name_the_fix() -> None:
    with pytest.raises(SplitError, match=r"sum to 1\.2.*at most 1"):
        stratified_split(np.arange(100) % 2, {"train": 0.6, "val": 0.3, "test": 0.3}, seed=0)
    with pytest.raises(SplitError, match=r"data\.splits\.val=None but the splits before it took "
                                         r"every sample.*fractions"):
        stratified_split(np.arange(100) % 2, {"train": None, "val": None, "test": None}, seed=0)
    with pytest.raises(DataError, match=r"data\.splits\.val=1\.5 must be in \(0\.0, 1\.0\]"):
        DataSettings.from_mapping({"loader": "mnist5k", "splits": {"val": 1.5}})


def test_npz_with_its_own_partition_is_kept_whole(tmp_path: Path) -> None:
    parts = {s: _arrays(n, seed=i) for i, (s, n) in enumerate([("train", 60), ("val", 20),
                                                                ("test", 24)])}
    arrays = {f"{k}_{s}": a for s, (x, y) in parts.items() for k, a in (("x", x), ("y", y))}
    np.savez(tmp_path / "p.npz", **arrays)
    data = _load({"path": str(tmp_path / "p.npz")})
    assert _sizes(data) == (60, 20, 24)
    xs, _ = data.val.tensors()  # type: ignore[attr-defined]
    assert {tuple(r.ravel()) for r in xs.numpy()} == {tuple(r.ravel()) for r in parts["val"][0]}
    x, y = _arrays(100)
    split = np.array(["train"] * 70 + ["val"] * 10 + ["test"] * 20)
    np.savez(tmp_path / "s.npz", x=x, y=y, split=split)
    data = _load({"path": str(tmp_path / "s.npz")})
    assert _sizes(data) == (70, 10, 20)
    test_x, _ = data.test.tensors()  # type: ignore[attr-defined]
    assert {tuple(r.ravel()) for r in test_x.numpy()} == {tuple(r.ravel()) for r in x[80:]}


def test_one_file_per_split_and_no_val_part(tmp_path: Path) -> None:
    for split, n in (("train", 80), ("test", 30)):
        np.savez(tmp_path / f"{split}.npz", x=_arrays(n)[0], y=_arrays(n)[1])
    data = _load({"path": {"train": str(tmp_path / "train.npz"),
                           "test": str(tmp_path / "test.npz")}})
    assert _sizes(data) == (60, 20, 30)  # val is a quarter of the train file; test kept whole


@pytest.mark.parametrize(("arrays", "message"), [
    ({"x_train": (10, 1, 4), "y_train": 10, "x_test": (5, 1, 4)},
     "has no array 'y_test'"),
    ({"x_train": (10, 1, 4), "y_train": 10, "x_test": (5, 2, 4), "y_test": 5},
     "x_test has samples of shape (2, 4) but x_train has (1, 4)"),
    ({"x": (10, 1, 4), "y": 9}, "x has shape (10, 1, 4) but y has 9 labels"),
    ({"x": (10, 1, 4), "y": 10, "split": ["train"] * 9 + ["dev"]},
     "split must hold one of train, val, test"),
    ({"inputs": (10, 1, 4)}, "has no array 'x'"),
])
def test_bad_npz_layout_is_one_line_naming_the_key(tmp_path: Path, arrays: dict[str, Any],
                                                  message: str) -> None:
    saved = {k: (np.zeros(v, np.float32) if isinstance(v, tuple)
                 else np.arange(v) % 2 if isinstance(v, int) else np.array(v))
             for k, v in arrays.items()}
    np.savez(tmp_path / "bad.npz", **saved)
    with pytest.raises(DataError) as err:
        _load({"path": str(tmp_path / "bad.npz")})
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_class_too_rare_for_every_split_is_named(tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    x, y = _arrays(101, classes=3)
    y[-1] = 3  # class 3: one sample
    np.savez(tmp_path / "r.npz", x=x, y=y)
    with caplog.at_level(logging.WARNING, logger="evaluators.data"):
        _load({"path": str(tmp_path / "r.npz")})
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "'3' (1 samples, none in" in lines[0], lines
    caplog.clear()
    np.savez(tmp_path / "ok.npz", x=x[:100], y=y[:100])
    with caplog.at_level(logging.WARNING, logger="evaluators.data"):
        _load({"path": str(tmp_path / "ok.npz")})
    assert caplog.records == []
