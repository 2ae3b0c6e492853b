"""Feature pass precision (explicit, recorded, keyed) and batches normalised where they run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import evaluators.features as features
from evaluators._extract import resolve_precision
from evaluators.data import ArrayDataset
from evaluators.features import FeatureCacheError, extract_features, iter_batches

POINTS = ["_1", "_3"]
CUDA = torch.cuda.is_available()


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, 1, 1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, 2, 1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 4),
    ).eval()


def _images(n: int, seed: int) -> ArrayDataset:
    """uint8 CIFAR-like images normalised on access, as the cifar10 loader builds them."""
    g = torch.Generator().manual_seed(seed)
    return ArrayDataset(
        torch.randint(0, 256, (n, 3, 8, 8), generator=g, dtype=torch.uint8),
        torch.randint(0, 4, (n,), generator=g),
        scale=1.0 / 255.0,
        mean=torch.tensor([0.49, 0.48, 0.45]).view(3, 1, 1),
        std=torch.tensor([0.25, 0.24, 0.26]).view(3, 1, 1),
    )


def _data() -> dict[str, ArrayDataset]:
    return {"train": _images(30, 0), "val": _images(20, 1), "test": _images(10, 2)}


def _extract(data: dict[str, Any], cache: Path, **kw: Any) -> features.FeatureStore:
    args: dict[str, Any] = {
        "points": POINTS,
        "pool": 2,
        "cache_dir": cache,
        "weights_hash": "w",
        "data_fingerprint": "d",
        "batch_size": 8,
        "progress": False,
    }
    return extract_features(_model(), data, **{**args, **kw})


def test_precision_names_resolve_per_device_and_bad_ones_are_one_line_errors() -> None:
    cpu = torch.device("cpu")
    assert [resolve_precision(p, cpu, key="k") for p in ("auto", "fp32", "tf32", "bf16")] == [
        "fp32",
        "fp32",
        "fp32",  # no TF32 units off a CUDA GPU
        "bf16",
    ]
    with pytest.raises(FeatureCacheError) as err:
        _extract(_data(), Path("/nonexistent"), eval_precision="fp8")
    msg = str(err.value)
    assert "\n" not in msg and "features.eval_precision='fp8'" in msg and "bf16" in msg


def test_precision_is_recorded_keyed_and_changes_only_its_splits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _data()
    exact = _extract(data, tmp_path, device="cpu")
    assert exact.precision == {"train": "fp32", "val": "fp32", "test": "fp32"}
    calls: list[str] = []
    real = features._write_split

    def spy(*args: Any, **kw: Any) -> None:
        calls.append(kw["split"])
        real(*args, **kw)

    monkeypatch.setattr(features, "_write_split", spy)
    mixed = _extract(data, tmp_path, device="cpu", eval_precision="bf16")
    assert calls == ["val", "test"]  # train's entries (same precision) are reused
    assert mixed.precision == {"train": "fp32", "val": "bf16", "test": "bf16"}
    assert mixed.keys[("train", "_1")] == exact.keys[("train", "_1")]
    assert mixed.keys[("val", "_1")] != exact.keys[("val", "_1")]
    manifest = json.loads((mixed.root / mixed.keys[("val", "_3")] / "manifest.json").read_text())
    assert manifest["precision"] == "bf16" and manifest["dtype"] == "float32"
    a, b = np.asarray(exact.features("val", "_3")), np.asarray(mixed.features("val", "_3"))
    assert not np.array_equal(a, b)  # bf16 arithmetic did happen ...
    np.testing.assert_allclose(b, a, rtol=5e-2, atol=5e-2)  # ... at bf16 accuracy


def test_array_batches_equal_samples_bit_for_bit() -> None:
    ds = _images(23, 3)
    x = torch.cat([b for b, _ in iter_batches(ds, 7)])
    y = torch.cat([b for _, b in iter_batches(ds, 7, device=torch.device("cpu"))])
    want = torch.stack([ds[i][0] for i in range(len(ds))])
    assert torch.equal(x, want) and x.dtype == torch.float32
    assert torch.equal(y, ds.labels)
    if CUDA:  # normalised on the GPU: the same IEEE float32 operations, one at a time
        on_gpu = torch.cat([b.cpu() for b, _ in iter_batches(ds, 7, device=torch.device("cuda"))])
        assert torch.equal(on_gpu, want)


def test_array_dataset_features_equal_tensor_dataset_features(tmp_path: Path) -> None:
    data = _data()
    tensors = {s: TensorDataset(*ds.tensors()) for s, ds in data.items()}
    a = _extract(data, tmp_path / "a")
    b = _extract(tensors, tmp_path / "b")
    for split in ("train", "val", "test"):
        for point in POINTS:
            np.testing.assert_array_equal(a.features(split, point), b.features(split, point))
        np.testing.assert_array_equal(a.logits(split), b.logits(split))


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_gpu_pass_matches_the_cpu_within_its_precision(tmp_path: Path) -> None:
    data = _data()
    cpu = _extract(data, tmp_path / "cpu", device="cpu")
    gpu = _extract(data, tmp_path / "gpu", device="cuda")  # train auto (bf16), eval fp32
    assert gpu.precision["val"] == "fp32" and gpu.precision["train"] in ("bf16", "fp16")
    for point in POINTS:
        np.testing.assert_allclose(
            gpu.features("val", point), cpu.features("val", point), rtol=1e-4, atol=1e-5
        )
        np.testing.assert_allclose(
            np.asarray(gpu.features("train", point), dtype=np.float32),
            np.asarray(cpu.features("train", point), dtype=np.float32),
            rtol=5e-2,
            atol=5e-2,
        )
    np.testing.assert_allclose(gpu.logits("test"), cpu.logits("test"), rtol=1e-4, atol=1e-5)
