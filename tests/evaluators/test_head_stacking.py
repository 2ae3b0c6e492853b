"""Stacked (vmapped) head training equals one-by-one training; resident inputs equal gathered ones.

On a GPU heads of one kind at candidates of one feature shape train as one vmapped
group and the train features sit on the device; on a CPU each head trains alone from
features in memory. These tests force each path on the CPU and compare.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import evaluators._head_batches as head_batches
import evaluators.head_training as head_training
from evaluators.features import FeatureStore, extract_features, pooled_shape
from evaluators.heads import ExitHead, HeadFamily, HeadSpec, HeadTraining, build_head
from evaluators.tables import build_prediction_table

FAMILY = HeadFamily(
    members=(
        HeadSpec(name="linear", kind="linear"),
        HeadSpec(name="mlp9", kind="mlp", width=9),
        HeadSpec(name="conv5", kind="conv", width=5),
    ),
    training=HeadTraining(epochs=6, batch_size=64, patience=2, amp=False),
)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> FeatureStore:
    """Three candidates of one shape (8, 2, 2), one of another (16, 2, 2)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, 1, 1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, 1, 1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, 1, 1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, 2, 1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 3),
    ).eval()
    g = torch.Generator().manual_seed(0)
    data = {
        s: TensorDataset(
            torch.randn(n, 1, 10, 10, generator=g), torch.randint(0, 3, (n,), generator=g)
        )
        for s, n in (("train", 500), ("val", 60), ("test", 40))
    }
    return extract_features(
        model,
        data,
        points=["_1", "_3", "_5", "_7"],
        pool=2,
        cache_dir=tmp_path_factory.mktemp("cache"),
        weights_hash="stack",
        data_fingerprint="stack",
        progress=False,
    )


def _train(
    store: FeatureStore, *, stack: bool
) -> tuple[dict[tuple[int, int], ExitHead], dict[tuple[int, int], tuple[int, float]]]:
    with torch.random.fork_rng():
        torch.manual_seed(1)
        heads = {k: h.train() for k, h in head_training._build_all(store, FAMILY).items()}
    real = head_training._shape_groups
    with pytest.MonkeyPatch.context() as patch:  # stack (or not) whatever the device
        patch.setattr(head_training, "_shape_groups", lambda s, k, **_: real(s, k, stack=stack))
        record = head_training._fit(
            store, heads, FAMILY.training, seed=2, device=torch.device("cpu"), progress=False
        )
    return heads, record


def test_stacking_groups_candidates_of_one_shape(store: FeatureStore) -> None:
    kinds = ("linear", "mlp", "conv")
    assert head_training._shape_groups(store, kinds, stack=True) == [(0, 1, 2), (3,)]
    assert head_training._shape_groups(store, kinds, stack=False) == [(0,), (1,), (2,), (3,)]
    assert head_training._shape_groups(store, ("tree",), stack=True) == [(0,), (1,), (2,), (3,)]


@pytest.mark.parametrize("shape", [(6, 3, 3), (6, 7), (6,)])
@pytest.mark.parametrize(
    "spec",
    [
        HeadSpec(name="linear", kind="linear"),
        HeadSpec(name="flat", kind="linear", flatten=True),
        HeadSpec(name="mlp", kind="mlp", width=5),
        HeadSpec(name="conv", kind="conv", width=4),
    ],
    ids=lambda s: s.name,
)
def test_stacked_forward_is_each_modules_forward(spec: HeadSpec, shape: tuple[int, ...]) -> None:
    """Outputs and gradients of the batched formula equal those of the head modules."""
    torch.manual_seed(0)
    heads = [build_head(spec, feature_shape=shape, pool=2, num_classes=3) for _ in range(3)]
    stack = head_batches._Stack(heads, inputs=0)
    pooled = (3, 5, *pooled_shape(shape, 2))
    x = torch.randn(*pooled)
    out = stack(x)
    want = torch.stack([h(x[i]) for i, h in enumerate(heads)])
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-6)
    weights = torch.randn_like(out)
    torch.autograd.backward((out * weights).sum())
    torch.autograd.backward((want * weights).sum())
    for name, stacked in stack.params.items():
        assert stacked.grad is not None
        for i, h in enumerate(heads):
            grad = dict(h.named_parameters())[name].grad
            torch.testing.assert_close(stacked.grad[i], grad, rtol=1e-5, atol=1e-6)
            assert torch.equal(stack.state(i)[name], stacked[i].detach())


def test_stacked_training_equals_one_by_one_up_to_rounding(store: FeatureStore) -> None:
    alone, rec_alone = _train(store, stack=False)
    stacked, rec_stacked = _train(store, stack=True)
    assert rec_alone.keys() == rec_stacked.keys()
    for key in alone:
        assert rec_alone[key][0] == rec_stacked[key][0], key  # same best epoch
        assert rec_alone[key][1] == pytest.approx(rec_stacked[key][1], abs=1e-6)
        for name, a in alone[key].state_dict().items():
            torch.testing.assert_close(stacked[key].state_dict()[name], a, rtol=1e-3, atol=1e-4)
    moved = max(
        (alone[k].state_dict()[n] - head_training._build_all(store, FAMILY)[k].state_dict()[n])
        .abs()
        .max()
        .item()
        for k in alone
        for n in alone[k].state_dict()
    )
    assert moved > 1e-2  # the heads were trained, not left at their initialisation


def test_resident_features_equal_features_gathered_per_step(
    store: FeatureStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    resident, rec_a = _train(store, stack=True)
    monkeypatch.setattr(head_batches, "_CPU_RESIDENT_BYTES", 0)
    gathered, rec_b = _train(store, stack=True)
    assert rec_a == rec_b
    for key, head in resident.items():
        for name, value in head.state_dict().items():
            assert torch.equal(gathered[key].state_dict()[name], value), (key, name)


def test_inputs_are_resident_only_when_they_fit(
    store: FeatureStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    fit = np.arange(100, dtype=np.int64)
    groups = head_training._shape_groups(store, ("linear",), stack=True)
    assert head_batches._Inputs(store, groups, fit, torch.device("cpu")).data is not None
    monkeypatch.setattr(head_batches, "_CPU_RESIDENT_BYTES", 0)
    assert head_batches._Inputs(store, groups, fit, torch.device("cpu")).data is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_heads_and_table_match_the_cpu(store: FeatureStore, tmp_path: Path) -> None:
    """Stacked heads on the GPU (fp32, no amp) and the GPU table agree with the CPU path."""
    cpu = head_training.train_heads(store, FAMILY, seed=2, device="cpu", progress=False)
    gpu_store = FeatureStore(**{**store.__dict__, "root": tmp_path / "features"})
    (tmp_path / "features").mkdir()
    gpu = head_training.train_heads(gpu_store, FAMILY, seed=2, device="cuda", progress=False)
    np.testing.assert_array_equal(cpu.best_epoch, gpu.best_epoch)
    for key, head in cpu.heads.items():
        for name, value in head.state_dict().items():
            got = gpu.heads[key].state_dict()[name]
            torch.testing.assert_close(got, value, rtol=1e-3, atol=1e-4)
    on_cpu = build_prediction_table(store, cpu, device="cpu")
    on_gpu = build_prediction_table(gpu_store, cpu, device="cuda")
    np.testing.assert_array_equal(on_gpu.val.head_pred, on_cpu.val.head_pred)
    np.testing.assert_allclose(on_gpu.val.head_conf, on_cpu.val.head_conf, rtol=1e-5, atol=1e-6)
