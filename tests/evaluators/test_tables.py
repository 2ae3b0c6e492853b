"""Prediction table: confidence scores, agreement with live heads on raw activations, caching."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from torch import fx, nn
from torch.utils.data import TensorDataset

import evaluators.tables as tables
from evaluators.eenn import METRICS
from evaluators.features import FeatureStore, extract_features
from evaluators.graph import trace
from evaluators.head_training import TrainedHeads, train_heads
from evaluators.heads import HeadFamily, HeadSpec, HeadTraining
from evaluators.tables import build_prediction_table, exit_scores, head_costs

FAMILY = HeadFamily(
    members=(
        HeadSpec(name="linear", kind="linear"),
        HeadSpec(name="mlp8", kind="mlp", width=8),
        HeadSpec(name="conv4", kind="conv", width=4),
    ),
    training=HeadTraining(epochs=3, batch_size=32),
)


def test_exit_scores_by_hand() -> None:
    probs = torch.tensor([[0.7, 0.2, 0.1], [1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0.0]])
    pred, conf = exit_scores(probs.log())
    assert conf.shape == (len(METRICS), 3) and conf.dtype == torch.float32
    by = dict(zip(METRICS, conf, strict=True))
    torch.testing.assert_close(by["max_softmax"], torch.tensor([0.7, 1 / 3, 0.5]))
    torch.testing.assert_close(by["margin"], torch.tensor([0.5, 0.0, 0.0]), atol=1e-6, rtol=0)
    h0 = -(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1))
    torch.testing.assert_close(
        by["entropy"],
        torch.tensor([1 - h0 / math.log(3), 0.0, 1 - math.log(2) / math.log(3)]),
        atol=1e-6,
        rtol=0,
    )
    assert pred[0] == 0


def _raw_activations(model: nn.Module, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], Any]:
    """Every fx node's output on ``x`` (fp32, full batch) and the model's output."""
    acts: dict[str, torch.Tensor] = {}

    class Recorder(fx.Interpreter):
        def run_node(self, node: fx.Node) -> Any:
            out = super().run_node(node)
            acts[node.name] = out.clone() if isinstance(out, torch.Tensor) else out
            return out

    return acts, Recorder(trace(model)).run(x)


@pytest.fixture(scope="module")
def setup(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[nn.Module, dict[str, TensorDataset], FeatureStore, TrainedHeads]:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, 1, 1),
        nn.BatchNorm2d(4),
        nn.ReLU(inplace=True),
        nn.Conv2d(4, 8, 3, 2, 1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    ).eval()
    g = torch.Generator().manual_seed(0)
    data = {
        s: TensorDataset(
            torch.randn(n, 1, 9, 9, generator=g), torch.randint(0, 4, (n,), generator=g)
        )
        for s, n in (("train", 64), ("val", 37), ("test", 29))
    }
    store = extract_features(
        model,
        data,
        points=["_2", "_4", "_6"],
        pool=2,
        cache_dir=tmp_path_factory.mktemp("cache"),
        weights_hash="t",
        data_fingerprint="t",
        batch_size=16,
        progress=False,
    )
    return model, data, store, train_heads(store, FAMILY, seed=0, progress=False)


def _assert_same_floats(actual: Any, desired: Any) -> None:
    """Equal up to float32 rounding: a matrix product over another batch size may be blocked
    differently by the BLAS on a many-core CPU or a GPU (seen on a 16-core machine: 1 ulp of the
    logits, 2 ulps of 1.0 in an entropy confidence near 0), which is why thresholds sit halfway
    between val confidences. Two cores give bit-equal results."""
    np.testing.assert_allclose(actual, desired, rtol=2e-6, atol=5e-7)


def test_table_equals_live_heads_on_raw_fp32_activations(setup: Any) -> None:
    model, data, store, heads = setup
    table = build_prediction_table(store, heads, batch_size=10)
    assert table.candidate_names == ("_2", "_4", "_6") and table.head_names == FAMILY.names
    for split in ("val", "test"):
        sp = getattr(table, split)
        n = len(data[split])
        assert sp.head_pred.shape == (3, 3, n) and sp.head_pred.dtype == np.int16
        assert sp.head_conf.shape == (len(METRICS), 3, 3, n) and sp.head_conf.dtype == np.float32
        x, y = data[split].tensors
        np.testing.assert_array_equal(sp.labels, y.numpy())
        with torch.no_grad():
            acts, logits = _raw_activations(model, x)
            for c, point in enumerate(store.points):
                for h in range(3):  # a live head on the raw activation, as the runtime runs it
                    pred, conf = exit_scores(heads.heads[(c, h)](acts[point]))
                    np.testing.assert_array_equal(sp.head_pred[c, h], pred.numpy())
                    _assert_same_floats(sp.head_conf[:, c, h], conf.numpy())
            pred, conf = exit_scores(logits)
        np.testing.assert_array_equal(sp.final_pred, pred.numpy())
        np.testing.assert_allclose(sp.final_conf, conf.numpy(), rtol=1e-5, atol=1e-6)


def test_table_is_cached_and_rebuilt_when_damaged(
    setup: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, _, store, heads = setup
    first = build_prediction_table(store, heads)
    calls: list[str] = []
    real = tables._split
    monkeypatch.setattr(tables, "_split", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    again = build_prediction_table(store, heads)
    assert calls == []
    np.testing.assert_array_equal(again.test.head_conf, first.test.head_conf)
    folders = [p for p in (store.root.parent / "tables").iterdir() if p.is_dir()]
    file = folders[0] / "predictions.npz"
    file.write_bytes(file.read_bytes()[:-20])
    rebuilt = build_prediction_table(store, heads)
    assert calls == ["val", "test"]
    np.testing.assert_array_equal(rebuilt.val.head_pred, first.val.head_pred)
    plain = build_prediction_table(
        store, dict(heads.heads), head_names=heads.head_names
    )  # keyed by weights
    _assert_same_floats(plain.val.head_conf, first.val.head_conf)
    with pytest.raises(ValueError, match="head_names is required"):
        build_prediction_table(store, dict(heads.heads))
    with pytest.raises(ValueError, match="do not match the feature store"):
        build_prediction_table(
            store,
            {k: v for k, v in heads.heads.items() if k != (1, 2)},
            head_names=heads.head_names,
        )


def test_head_costs_for_backbone_costs(setup: Any) -> None:
    _, _, store, _ = setup
    shapes = [store.raw_shapes[p] for p in store.points]
    macs, params = head_costs(FAMILY, shapes, pool=store.pool, num_classes=store.num_classes)
    assert macs.shape == (3, 3) and params.dtype == np.int64
    assert macs[0, 0] == 4 * 4  # GAP + FC on 4 channels, 4 classes
    assert macs[2, 1] == 8 * 8 + 8 * 4  # (8,) flatten: MLP 8 -> 8 -> 4
