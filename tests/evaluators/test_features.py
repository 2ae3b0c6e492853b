"""Feature cache: pooling, one-pass extraction, storage dtypes, reuse, corruption and resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import fx, nn
from torch.utils.data import Dataset, TensorDataset

import evaluators.features as features
from evaluators.features import FeatureCacheError, extract_features, pool_features, pooled_shape
from evaluators.graph import trace

POINTS = ["_0_2", "_1_2", "_2_2", "_4"]


def _block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        _block(1, 4, 1),
        _block(4, 8, 2),
        _block(8, 8, 2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    )
    for m in model.modules():  # non-trivial BN statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _data(n_train: int = 40, n_eval: int = 20) -> dict[str, TensorDataset]:
    g = torch.Generator().manual_seed(1)
    return {
        s: TensorDataset(
            torch.randn(n, 1, 10, 10, generator=g), torch.randint(0, 3, (n,), generator=g)
        )
        for s, n in (("train", n_train), ("val", n_eval), ("test", n_eval))
    }


def _extract(
    model: nn.Module, data: dict[str, Any], cache: Path, **kw: Any
) -> features.FeatureStore:
    args: dict[str, Any] = {
        "points": POINTS,
        "pool": 2,
        "cache_dir": cache,
        "weights_hash": "w",
        "data_fingerprint": "d",
        "batch_size": 16,
        "progress": False,
    }
    return extract_features(model, data, **{**args, **kw})


def _raw_activations(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    acts: dict[str, torch.Tensor] = {}

    class Recorder(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            out = super().run_node(n)
            acts[n.name] = out.clone() if isinstance(out, torch.Tensor) else out
            return out

    with torch.no_grad():
        Recorder(trace(model)).run(x)
    return acts


def test_pool_features_shapes_and_identity() -> None:
    x = torch.randn(2, 3, 9, 7)
    y = pool_features(x, 4)
    assert y.shape == (2, 3, 4, 4)
    assert torch.allclose(y, nn.functional.adaptive_avg_pool2d(x, 4), atol=1e-6)
    assert pool_features(y, 4) is y  # pooling a pooled map is exactly the identity
    assert pool_features(torch.randn(2, 5, 3, 2), 4).shape == (2, 5, 3, 2)
    assert pool_features(torch.randn(2, 5, 40), 4).shape == (2, 5, 16)  # 1D: pool*pool positions
    flat = torch.randn(2, 6)
    assert pool_features(flat, 4) is flat
    for shape in [(3, 9, 7), (5, 40), (6,)]:
        assert pooled_shape(shape, 4) == tuple(pool_features(torch.randn(1, *shape), 4).shape[1:])
    with pytest.raises(FeatureCacheError, match="cannot pool"):
        pool_features(torch.randn(1, 2, 3, 4, 5), 2)


def test_one_pass_features_match_pooled_activations(tmp_path: Path) -> None:
    model, data = _model(), _data()
    store = _extract(model, data, tmp_path)
    assert store.raw_shapes == {
        "_0_2": (4, 10, 10),
        "_1_2": (8, 5, 5),
        "_2_2": (8, 3, 3),
        "_4": (8,),
    }
    assert store.shapes == {"_0_2": (4, 2, 2), "_1_2": (8, 2, 2), "_2_2": (8, 2, 2), "_4": (8,)}
    for split, ds in data.items():
        x, y = ds.tensors
        acts = _raw_activations(model, x)
        dtype = np.float16 if split == "train" else np.float32
        for point in POINTS:
            got = store.features(split, point)
            assert got.dtype == dtype and isinstance(got, np.memmap)
            want = pool_features(acts[point], 2).numpy()
            if split == "train":
                np.testing.assert_allclose(got.astype(np.float32), want, rtol=2e-3, atol=2e-3)
            else:  # fp32 val/test: what a live EENN computes, bit for bit on this machine
                np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(store.labels(split), y.numpy())
        with torch.no_grad():
            np.testing.assert_allclose(store.logits(split), model(x).numpy(), rtol=1e-5, atol=1e-6)
    assert store.num_classes == 3 and store.n_samples("val") == 20


def test_inplace_ops_after_a_candidate_do_not_leak(tmp_path: Path) -> None:
    """The BN output is a candidate although the next ReLU(inplace=True) overwrites it."""
    model, data = _model(), _data()
    store = _extract(model, data, tmp_path, points=["_0_1"])
    with torch.no_grad():
        bn_out = model[0][1](model[0][0](data["val"].tensors[0]))
    assert (bn_out < 0).any()
    np.testing.assert_allclose(
        store.features("val", "_0_1"), pool_features(bn_out, 2).numpy(), atol=1e-6
    )


def test_module_hooks_match_graph_nodes(tmp_path: Path) -> None:
    model, data = _model(), _data()
    by_node = _extract(model, data, tmp_path / "a", points=["_1_2", "_4"])
    by_hook = _extract(model, data, tmp_path / "b", points=["1.2", "4"], kind="module")
    for a, b in (("_1_2", "1.2"), ("_4", "4")):
        np.testing.assert_array_equal(by_node.features("val", a), by_hook.features("val", b))
    with pytest.raises(FeatureCacheError, match="not a submodule"):
        _extract(model, data, tmp_path / "c", points=["nope"], kind="module")
    with pytest.raises(FeatureCacheError, match="not a node of the fx graph"):
        _extract(model, data, tmp_path / "c", points=["nope"])


def test_model_is_not_modified(tmp_path: Path) -> None:
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _extract(model, _data(), tmp_path)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not model.training


class _Spy:
    """Records which entries each split pass writes."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[str, set[str]]] = []
        real = features._write_split

        def spy(*args: Any, **kw: Any) -> None:
            self.calls.append((kw["split"], set(kw["todo"])))
            real(*args, **kw)

        monkeypatch.setattr(features, "_write_split", spy)


def test_complete_cache_is_reused_without_a_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, data = _model(), _data()
    first = _extract(model, data, tmp_path)
    spy = _Spy(monkeypatch)
    again = _extract(model, data, tmp_path)
    assert spy.calls == []
    np.testing.assert_array_equal(first.features("test", "_1_2"), again.features("test", "_1_2"))
    assert first.key == again.key
    _extract(model, data, tmp_path, pool=3)  # another pooling is another entry
    assert {s for s, _ in spy.calls} == {"train", "val", "test"}


@pytest.mark.parametrize("damage", ["flip_byte", "truncate", "no_manifest"])
def test_damaged_entry_is_rebuilt_never_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    model, data = _model(), _data()
    store = _extract(model, data, tmp_path)
    good = np.array(store.features("val", "_2_2"))
    folder = store.root / store.keys[("val", "_2_2")]
    file = folder / "features.npy"
    if damage == "flip_byte":
        raw = bytearray(file.read_bytes())
        raw[-3] ^= 0xFF
        file.write_bytes(bytes(raw))
    elif damage == "truncate":
        file.write_bytes(file.read_bytes()[:-8])
    else:
        (folder / "manifest.json").unlink()
    spy = _Spy(monkeypatch)
    rebuilt = _extract(model, data, tmp_path)
    assert spy.calls == [("val", {"_2_2"})]
    np.testing.assert_array_equal(rebuilt.features("val", "_2_2"), good)


class _Interrupting(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """A dataset whose reading stops (as if the process were killed) at ``fail_at``."""

    def __init__(self, inner: TensorDataset, fail_at: int) -> None:
        self.inner, self.fail_at = inner, fail_at

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if i >= self.fail_at:
            raise KeyboardInterrupt
        return self.inner[i]  # type: ignore[no-any-return]


def test_interrupted_pass_resumes_from_complete_entries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, data = _model(), _data()
    broken = {**data, "val": _Interrupting(data["val"], fail_at=17)}
    with pytest.raises(KeyboardInterrupt):
        _extract(model, broken, tmp_path)
    spy = _Spy(monkeypatch)
    store = _extract(model, data, tmp_path)
    assert [s for s, _ in spy.calls] == ["val", "test"]  # train was complete and is reused
    x = data["val"].tensors[0]
    np.testing.assert_allclose(
        store.features("val", "_1_2"),
        pool_features(_raw_activations(model, x)["_1_2"], 2).numpy(),
        atol=1e-6,
    )


def test_budget_and_unwritable_cache_give_one_line_errors(tmp_path: Path) -> None:
    model, data = _model(), _data()
    with pytest.raises(FeatureCacheError) as err:
        _extract(model, data, tmp_path, budget_gib=1e-6)
    msg = str(err.value)
    assert "\n" not in msg and "GiB" in msg
    for knob in (
        "features.budget_gib",
        "model.candidates.max_candidates",
        "features.pool",
        "data.splits.train",
    ):
        assert knob in msg
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(features.CacheError, match="is not writable") as err2:
        _extract(model, data, blocker / "cache")
    assert "\n" not in str(err2.value)
    with pytest.raises(FeatureCacheError, match=r"features\.pool=0"):
        _extract(model, data, tmp_path, pool=0)
