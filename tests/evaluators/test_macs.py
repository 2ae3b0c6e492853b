"""count_macs: hand-checked formulas, fused attention kernels, torchvision's published figures."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
from torch import nn

from evaluators.macs import count_macs


def test_conv_and_linear_macs_match_hand_count() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),  # 8*3*9 MACs per output pixel, 16x16 pixels
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 16 * 16, 10),
    )
    expected = 8 * 3 * 9 * 16 * 16 + 8 * 16 * 16 * 10
    assert count_macs(model, torch.zeros(1, 3, 16, 16)) == expected
    assert count_macs(model, torch.zeros(4, 3, 16, 16)) == 4 * expected


def test_count_macs_restores_training_flags() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5))
    model.train()
    model[0].eval()
    count_macs(model, torch.zeros(2, 4))
    assert model.training and not model[0].training and model[1].training


class _Attention(nn.Module):
    def __init__(self, kv_len: int | None = None) -> None:
        super().__init__()
        self.mha = nn.MultiheadAttention(32, 4, batch_first=True)
        self.kv_len = kv_len

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kv = x if self.kv_len is None else x[:, : self.kv_len]
        return self.mha(x, kv, kv, need_weights=False)[0]


def _mha_hand_count(batch: int, lq: int, lk: int, embed: int) -> int:
    projections = batch * embed * embed * (lq + 2 * lk + lq)
    return projections + 2 * batch * lq * lk * embed


@contextmanager
def _fastpath(enabled: bool) -> Iterator[None]:
    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(enabled)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(previous)


@pytest.mark.parametrize("kv_len", [None, 7])
def test_multihead_attention_counted_on_every_path(kv_len: int | None) -> None:
    torch.manual_seed(0)
    model = _Attention(kv_len).eval()
    x = torch.randn(2, 10, 32)
    expected = _mha_hand_count(2, 10, kv_len or 10, 32)
    with _fastpath(True):  # _native_multi_head_attention on CPU
        assert count_macs(model, x) == expected
    with _fastpath(False):  # linear + _scaled_dot_product_flash_attention_for_cpu
        assert count_macs(model, x) == expected
    assert count_macs(model.to("meta"), x.to("meta")) == expected  # decomposed math path


def test_transformer_encoder_layer_fast_path_counted() -> None:
    layer = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True).eval()
    x = torch.randn(2, 10, 32)
    expected = _mha_hand_count(2, 10, 10, 32) + 2 * 2 * 10 * 32 * 64
    with _fastpath(True):
        assert count_macs(layer, x) == expected
    with _fastpath(False):
        assert count_macs(layer, x) == expected


def test_small_vit_same_count_on_cpu_and_meta() -> None:
    from torchvision.models import VisionTransformer

    vit = VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64
    )
    x = torch.randn(1, 3, 32, 32)
    on_cpu = count_macs(vit, x)
    assert on_cpu == count_macs(vit.to("meta"), x.to("meta"))
    tokens = 17
    per_block = _mha_hand_count(1, tokens, tokens, 32) + 2 * tokens * 32 * 64
    patchify = 16 * 32 * 3 * 8 * 8
    assert on_cpu == patchify + 2 * per_block + 32 * 1000


@contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Build modules whose constructors compute with tensors (RegNet): params go to meta."""
    original = nn.Module.register_parameter

    def register(self: nn.Module, name: str, param: Any) -> None:
        if param is not None:
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        original(self, name, param)

    nn.Module.register_parameter = register  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = original  # type: ignore[method-assign]


def _meta_model(name: str, **kwargs: Any) -> nn.Module:
    from torchvision.models import get_model

    try:
        with torch.device("meta"):
            return get_model(name, weights=None, **kwargs)
    except NotImplementedError:  # constructor reads tensor data
        with _parameters_on_meta():
            return get_model(name, weights=None, **kwargs).to("meta")


def _zoo() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_every_torchvision_classifier_within_one_percent_of_published_ops() -> None:
    """meta["_ops"] is GMACs at the DEFAULT weights' crop size, rounded to 3 decimals."""
    from torchvision.models import get_model_weights

    misses = []
    for name in _zoo():
        weights = get_model_weights(name).DEFAULT
        size = int(weights.transforms().crop_size[0])
        kwargs = {"image_size": size} if name.startswith("vit_") else {}  # vit_h_14: 518
        macs = count_macs(_meta_model(name, **kwargs), torch.empty(1, 3, size, size, device="meta"))
        published = float(weights.meta["_ops"]) * 1e9
        if abs(macs - published) > 0.01 * published + 0.0005e9:  # 1% plus the rounding
            misses.append(f"{name}: {macs / 1e9:.4f} vs {published / 1e9:.3f} GMACs")
    assert len(_zoo()) >= 80
    assert not misses, misses
