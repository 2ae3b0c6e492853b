"""Backbone loading (state dict, TorchScript, torch.export), training once, the checkpoint cache."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from evaluators._cache import CacheError
from evaluators.backbone import BackboneError, accuracy, get_backbone, load_checkpoint
from evaluators.data import DataSettings, DataSplits, load_data
from evaluators.device import DeviceError
from evaluators.graph import trace
from evaluators.hashing import hash_state_dict as weights_hash
from evaluators.models import build_architecture
from evaluators.settings import ModelSettings

CPU = torch.device("cpu")

TINY = {"widths": [8, 16, 32], "strides": [2, 2, 2]}
MODEL: dict[str, Any] = {"arch": "mnist_cnn", "kwargs": TINY, "checkpoint": None,
                         "train": {"epochs": 3, "batch_size": 32}}  # fmt: skip


def _model(cfg: dict[str, Any]) -> ModelSettings:
    """A ``model`` mapping parsed as the entry points parse it (shape and classes of MNIST)."""
    return ModelSettings.from_mapping({"input_shape": [1, 28, 28], "num_classes": 10, **cfg})


def _load(cfg: dict[str, Any], *, seed: int) -> DataSplits:
    """``load_data`` on a ``data`` mapping, parsed as the entry points parse it."""
    return load_data(DataSettings.from_mapping(cfg), seed=seed)


@pytest.fixture(scope="module")
def data() -> DataSplits:
    splits = {"train": 300, "val": 100, "test": 100}
    return _load({"name": "mnist5k", "loader": "mnist5k", "splits": splits}, seed=0)


def _tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_architecture("mnist_cnn", num_classes=10, **TINY).eval()


def test_trains_once_then_reuses_the_cache(data: DataSplits, tmp_path: Path) -> None:
    model, info = get_backbone(_model(MODEL), data, cache_dir=tmp_path, seed=0, device="cpu")
    assert info.trained_now and info.checkpoint.is_file()
    assert info.checkpoint.parent == tmp_path / "backbones"
    assert info.checkpoint.with_suffix(".json").is_file()
    assert not [p for p in info.checkpoint.parent.iterdir() if ".tmp" in p.name]
    # 3 epochs on 300 digits: well above chance (0.1)
    assert 0.3 < accuracy(model, data.val, device=CPU) <= 1.0
    assert info.weights_hash == weights_hash(model) and not model.training
    model2, info2 = get_backbone(_model(MODEL), data, cache_dir=tmp_path, seed=0, device="cpu")
    assert not info2.trained_now and info2.checkpoint == info.checkpoint
    assert info2.weights_hash == info.weights_hash
    same = accuracy(model2, data.test, device=CPU) == accuracy(model, data.test, device=CPU)
    assert same
    other = {**MODEL, "train": {**MODEL["train"], "lr": 0.003}}
    _, info3 = get_backbone(_model(other), data, cache_dir=tmp_path, seed=0, device="cpu")
    assert info3.trained_now and info3.checkpoint != info.checkpoint


def test_training_is_deterministic_on_cpu(data: DataSplits, tmp_path: Path) -> None:
    _, a = get_backbone(_model(MODEL), data, cache_dir=tmp_path / "a", seed=0, device="cpu")
    _, b = get_backbone(_model(MODEL), data, cache_dir=tmp_path / "b", seed=0, device="cpu")
    _, c = get_backbone(_model(MODEL), data, cache_dir=tmp_path / "c", seed=1, device="cpu")
    assert a.weights_hash == b.weights_hash != c.weights_hash


def test_state_dict_checkpoint(data: DataSplits, tmp_path: Path) -> None:
    net = _tiny_model()
    path = tmp_path / "mine.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, path)
    model, info = get_backbone(_model({**MODEL, "checkpoint": str(path)}), data, cache_dir=tmp_path,
                     seed=0)
    assert not info.trained_now and info.checkpoint == path
    assert info.weights_hash == weights_hash(net)
    x = torch.randn(4, 1, 28, 28)
    assert torch.equal(model(x), net(x))


def test_mismatching_checkpoint_names_file_arch_and_key(data: DataSplits, tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    torch.manual_seed(0)
    torch.save(
        build_architecture(
            "mnist_cnn", num_classes=10, widths=[8, 12, 32], strides=[2, 2, 2]
        ).state_dict(),
        path,
    )
    with pytest.raises(BackboneError) as err:
        get_backbone(_model({**MODEL, "checkpoint": str(path)}), data, cache_dir=tmp_path,
                     seed=0)
    text = str(err.value)
    assert "\n" not in text and str(path) in text and "arch='mnist_cnn'" in text
    assert "'features.1.0.weight' has shape (12, 8, 3, 3)" in text


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")  # deprecated, still users' format
def test_torchscript_checkpoint(data: DataSplits, tmp_path: Path) -> None:
    net = _tiny_model()
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(net), str(path))
    model, info = get_backbone(_model({**MODEL, "checkpoint": str(path)}), data, cache_dir=tmp_path,
                     seed=0)
    x = torch.randn(5, 1, 28, 28)
    assert torch.allclose(model(x), net(x)) and info.weights_hash == weights_hash(net)


def test_torch_export_checkpoint_is_traceable(data: DataSplits, tmp_path: Path) -> None:
    net = _tiny_model()
    path = tmp_path / "exported.pt2"
    batch = torch.export.Dim("batch")
    torch.export.save(
        torch.export.export(net, (torch.randn(2, 1, 28, 28),), dynamic_shapes={"x": {0: batch}}),
        str(path),
    )
    model, _ = get_backbone(_model({**MODEL, "checkpoint": str(path)}), data, cache_dir=tmp_path,
                     seed=0)
    x = torch.randn(7, 1, 28, 28)
    assert torch.allclose(model(x), net(x), atol=1e-6)
    model.eval()  # an exported module would refuse; the loader re-wraps its graph
    assert torch.allclose(trace(model)(x), net(x), atol=1e-6)
    static = tmp_path / "static.pt2"
    torch.export.save(torch.export.export(net, (torch.randn(2, 1, 28, 28),)), str(static))
    with pytest.raises(BackboneError, match="dynamic batch dimension"):
        get_backbone(_model({**MODEL, "checkpoint": str(static)}), data, cache_dir=tmp_path,
                     seed=0)


def test_checkpoint_errors_are_one_line(data: DataSplits, tmp_path: Path) -> None:
    missing = tmp_path / "nope.pt"
    with pytest.raises(BackboneError, match="does not exist") as err:
        load_checkpoint(missing, arch="mnist_cnn", num_classes=10)
    assert str(missing) in str(err.value)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(BackboneError, match="not a loadable state dict"):
        load_checkpoint(junk, arch="mnist_cnn", num_classes=10)
    with pytest.raises(BackboneError, match=r"unknown model\.train key 'epoch'"):
        _model({**MODEL, "train": {"epoch": 3}})


def test_unwritable_cache_dir_names_it(data: DataSplits, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache directory should be")
    with pytest.raises(CacheError) as err:
        get_backbone(_model(MODEL), data, cache_dir=blocker, seed=0, device="cpu")
    text = str(err.value)
    assert "\n" not in text and str(blocker / "backbones") in text and "cache_dir=" in text


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")
def test_cuda_without_gpu_is_an_error(data: DataSplits, tmp_path: Path) -> None:
    with pytest.raises(DeviceError, match="device='cuda'"):
        get_backbone(_model(MODEL), data, cache_dir=tmp_path, seed=0, device="cuda")


@pytest.mark.slow
def test_default_mnist_backbone_reaches_97_percent(tmp_path: Path) -> None:
    """The recommended MnistCNN recipe on MNIST-5k; timing is the benchmark's job, not this test."""
    data = _load(
        {
            "name": "mnist5k",
            "loader": "mnist5k",
            "splits": {"train": 3000, "val": 1000, "test": 1000},
        },
        seed=0,
    )
    recipe = {"epochs": 8, "lr": 0.01, "label_smoothing": 0.1, "augment_shift": 2}
    start = time.perf_counter()
    model, info = get_backbone(
        _model({"arch": "mnist_cnn", "train": recipe}), data, cache_dir=tmp_path, seed=0,
        device="cpu"
    )
    test_accuracy = accuracy(model, data.test, device=CPU)
    assert test_accuracy >= 0.97, (test_accuracy, info)
    print(f"trained in {time.perf_counter() - start:.1f} s (load {os.getloadavg()[0]:.1f}): {info}")
