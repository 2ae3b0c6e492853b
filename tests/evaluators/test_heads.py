"""Head family: costs against count_macs, config checks, batched training, cache, quality."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch import fx, nn
from torch.utils.data import TensorDataset

import evaluators.head_training as head_training
from evaluators.features import FeatureStore, extract_features, pool_features
from evaluators.head_training import load_heads, train_heads
from evaluators.heads import (
    HeadFamily,
    HeadSpec,
    HeadTraining,
    build_head,
    head_cost,
    head_costs,
    head_family_from_config,
)
from evaluators.macs import count_macs

CONF = Path(__file__).resolve().parents[2] / "conf" / "heads" / "default.yaml"
SPECS = (
    HeadSpec(name="linear", kind="linear"),
    HeadSpec(name="flat", kind="linear", flatten=True),
    HeadSpec(name="mlp9", kind="mlp", width=9),
    HeadSpec(name="conv5", kind="conv", width=5),
)


@pytest.mark.parametrize("shape", [(16, 7, 7), (8, 3, 5), (12, 30), (12, 3), (20,)])
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_head_cost_matches_count_macs_and_parameters(
    shape: tuple[int, ...], spec: HeadSpec
) -> None:
    head = build_head(spec, feature_shape=shape, pool=4, num_classes=10)
    macs, params = head_cost(spec, feature_shape=shape, pool=4, num_classes=10)
    assert macs == count_macs(head, torch.randn(1, *shape))  # on the RAW activation
    assert params == sum(p.numel() for p in head.parameters())
    raw = torch.randn(3, *shape)
    with torch.no_grad():  # the head pools first; on pooled input that step is the identity
        np.testing.assert_array_equal(head(raw).numpy(), head(pool_features(raw, 4)).numpy())
        traced = fx.symbolic_trace(head)  # pool_features is an fx leaf: heads trace and export
        np.testing.assert_array_equal(traced(raw).numpy(), head(raw).numpy())


def test_head_costs_table() -> None:
    shapes = [(4, 10, 10), (8, 5, 5), (8,)]
    macs, params = head_costs(HeadFamily(members=SPECS), shapes, pool=2, num_classes=3)
    assert macs.shape == params.shape == (3, 4) and macs.dtype == np.int64
    assert macs[0, 0] == 4 * 3 and macs[0, 1] == 4 * 4 * 3 and macs[1, 3] == 4 * 8 * 5 + 5 * 3
    assert macs[2, 2] == 8 * 9 + 9 * 3


def test_absorbed_normalization_is_the_same_function() -> None:
    torch.manual_seed(0)
    x = torch.randn(5, 6, 3, 3) * 3 + 1
    mean, std = torch.rand(6), torch.rand(6) + 0.5
    for spec in SPECS:
        head = build_head(spec, feature_shape=(6, 3, 3), pool=4, num_classes=4)
        with torch.no_grad():
            want = head((x - mean[:, None, None]) / std[:, None, None])
            head.absorb_normalization(mean, std)
            torch.testing.assert_close(head(x), want, rtol=1e-5, atol=1e-5)


def test_family_config_defaults_and_errors() -> None:
    family = head_family_from_config(OmegaConf.to_container(OmegaConf.load(CONF)))  # type: ignore[arg-type]
    assert family.names == ("linear", "mlp64", "conv32")
    assert family.members[1] == HeadSpec(name="mlp64", kind="mlp", width=64)
    assert family.training.epochs >= 1 and 0 < family.training.holdout_fraction < 1
    bad: list[tuple[dict[str, Any], str]] = [
        ({"members": []}, "heads.members is empty"),
        ({"members": [{"name": "a", "kind": "tree"}]}, "kind='tree'"),
        ({"members": [{"name": "a", "kind": "mlp"}]}, "needs width"),
        ({"members": [{"name": "a", "kind": "linear"}] * 2}, "unique"),
        ({"members": [{"name": "a", "kind": "linear", "depth": 2}]}, "unknown keys"),
        ({"members": [{"name": "a", "kind": "linear"}], "epochs": 0}, "heads.epochs=0"),
        (
            {"members": [{"name": "a", "kind": "linear"}], "holdout_fraction": 0.9},
            "heads.holdout_fraction",
        ),
    ]
    for cfg, message in bad:
        with pytest.raises(ValueError, match=message):
            head_family_from_config(cfg)


def _learnable(n: int, seed: int) -> TensorDataset:
    """Three classes told apart by where a bright blob sits, plus noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = torch.randn(n, 1, 10, 10, generator=g) * 0.7
    for cls, (r, c) in enumerate([(1, 1), (1, 6), (6, 3)]):
        x[y == cls, :, r : r + 3, c : c + 3] += 1.5
    return TensorDataset(x, y)


@pytest.fixture(scope="module")
def trained_store(tmp_path_factory: pytest.TempPathFactory) -> FeatureStore:
    """A tiny CNN trained on the blob task and its feature cache."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, 1, 1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, 2, 1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 3),
    )
    data = {"train": _learnable(600, 0), "val": _learnable(300, 1), "test": _learnable(300, 2)}
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = data["train"].tensors
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    return extract_features(
        model,
        data,
        points=["_1", "_3", "_5"],
        pool=2,
        cache_dir=tmp_path_factory.mktemp("cache"),
        weights_hash="blob",
        data_fingerprint="blob",
        batch_size=128,
        progress=False,
    )


FAMILY = HeadFamily(
    members=(SPECS[0], SPECS[2], SPECS[3]),
    training=HeadTraining(epochs=12, lr=1e-2, batch_size=64, patience=3),
)


def test_heads_are_trained_deterministic_and_cached(
    trained_store: FeatureStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = train_heads(trained_store, FAMILY, seed=3, progress=False)
    assert set(first.heads) == {(c, h) for c in range(3) for h in range(3)}
    assert first.head_names == ("linear", "mlp9", "conv5")
    x = torch.from_numpy(np.array(trained_store.features("val", "_5"), dtype=np.float32))
    y = np.asarray(trained_store.labels("val"))
    backbone = (np.asarray(trained_store.logits("val")).argmax(1) == y).mean()
    assert backbone > 0.9
    with torch.no_grad():
        best = max((first.heads[(2, h)](x).argmax(1).numpy() == y).mean() for h in range(3))
    assert best >= backbone - 0.02  # the last candidate's best head is as good as the classifier
    # deterministic for a seed: an independent retrain gives identical weights
    monkeypatch.setattr(head_training, "read_entry", lambda *_a, **_k: None)
    again = train_heads(trained_store, FAMILY, seed=3, progress=False)
    monkeypatch.undo()
    for key, head in first.heads.items():
        for (name, a), b in zip(
            head.state_dict().items(), again.heads[key].state_dict().values(), strict=True
        ):
            assert torch.equal(a, b), (key, name)
    # reused from the cache, never retrained
    monkeypatch.setattr(head_training, "_fit", lambda *a, **k: pytest.fail("retrained"))
    cached = train_heads(trained_store, FAMILY, seed=3, progress=False)
    assert cached.key == first.key
    loaded = load_heads(first.path)
    xs = [
        torch.from_numpy(np.array(trained_store.features("val", p), dtype=np.float32))
        for p in trained_store.points
    ]
    with torch.no_grad():
        for (c, h), head in first.heads.items():
            assert torch.equal(loaded[(c, h)](xs[c]), head(xs[c])) and not loaded[(c, h)].training


def test_early_stopping_reads_only_train(
    trained_store: FeatureStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Held-out samples come from train; val features and labels are never touched."""
    seen: set[str] = set()
    real_features, real_labels = FeatureStore.features, FeatureStore.labels

    def features(self: FeatureStore, split: str, point: str) -> Any:
        seen.add(split)
        return real_features(self, split, point)

    def labels(self: FeatureStore, split: str) -> Any:
        seen.add(split)
        return real_labels(self, split)

    monkeypatch.setattr(FeatureStore, "features", features)
    monkeypatch.setattr(FeatureStore, "labels", labels)
    short = HeadFamily(members=FAMILY.members, training=HeadTraining(epochs=2, batch_size=128))
    result = train_heads(trained_store, short, seed=1, progress=False)
    assert seen == {"train"}
    assert np.isfinite(result.holdout_accuracy).all() and (result.best_epoch <= 1).all()


def test_damaged_heads_are_retrained(trained_store: FeatureStore) -> None:
    short = HeadFamily(members=FAMILY.members[:1], training=HeadTraining(epochs=1))
    first = train_heads(trained_store, short, seed=0, progress=False)
    first.path.write_bytes(first.path.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(ValueError, match="missing or corrupt"):
        load_heads(first.path)
    again = train_heads(trained_store, short, seed=0, progress=False)
    assert again.path.is_file() and set(again.heads) == set(first.heads)


def _heads_files(store: FeatureStore) -> dict[str, tuple[int, int]]:
    """Every cached head set: its folder name -> (inode, mtime) of its heads file."""
    root = store.root.parent / "heads"
    return {f.parent.name: (f.stat().st_ino, f.stat().st_mtime_ns) for f in root.glob("*/heads.pt")}


def _weights(heads: Any) -> dict[tuple[int, int], list[torch.Tensor]]:
    return {k: [t.clone() for t in h.state_dict().values()] for k, h in heads.heads.items()}


def _differ(a: dict[tuple[int, int], list[torch.Tensor]],
            b: dict[tuple[int, int], list[torch.Tensor]]) -> bool:
    """True when every head's weights differ somewhere (a retrained set, not a copy)."""
    return all(
        any(x.shape != y.shape or not torch.equal(x, y) for x, y in zip(a[k], b[k], strict=True))
        for k in a
    )


def test_changed_family_or_data_retrains_and_unchanged_reads_the_cache(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, 2, 1), nn.ReLU(), nn.Flatten(), nn.Linear(100, 3))
    model.eval()

    def store(train_seed: int, fingerprint: str) -> FeatureStore:
        data = {"train": _learnable(400, train_seed), "val": _learnable(100, 1),
                "test": _learnable(100, 2)}
        return extract_features(model, data, points=["_1"], pool=2, cache_dir=tmp_path,
                                weights_hash="tiny", data_fingerprint=fingerprint,
                                batch_size=200, progress=False)

    base = store(0, "data-a")
    family = HeadFamily(members=(SPECS[0], SPECS[2]),
                        training=HeadTraining(epochs=2, batch_size=128, lr=1e-2))
    first = train_heads(base, family, seed=0, progress=False)
    files = _heads_files(base)
    assert list(files) == [first.path.parent.name]
    # unchanged: read from the cache, the file untouched
    again = train_heads(base, family, seed=0, progress=False)
    assert again.path == first.path and _heads_files(base) == files
    assert not _differ(_weights(first), _weights(again))
    # another training recipe: a new cache entry with retrained weights, the old one kept
    slower = HeadFamily(members=family.members,
                        training=HeadTraining(epochs=2, batch_size=128, lr=2e-3))
    changed = train_heads(base, slower, seed=0, progress=False)
    assert changed.path != first.path and _differ(_weights(first), _weights(changed))
    # another member: retrained too
    wider = HeadFamily(members=(SPECS[0], HeadSpec(name="mlp12", kind="mlp", width=12)),
                       training=family.training)
    assert train_heads(base, wider, seed=0, progress=False).path not in (first.path, changed.path)
    # other training data under the same family: retrained
    other = store(7, "data-b")
    moved = train_heads(other, family, seed=0, progress=False)
    assert moved.path != first.path and _differ(_weights(first), _weights(moved))
    after = _heads_files(base)
    assert len(after) == 4 and after[first.path.parent.name] == files[first.path.parent.name]
