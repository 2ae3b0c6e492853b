"""Multiply-accumulate counting with torch.utils.flop_counter.

``FlopCounterMode`` counts convolutions and matrix products (``mm``, ``addmm``,
``bmm``, the CUDA attention kernels), which is also what torchvision's
published ``meta["_ops"]`` figures count. It misses three CPU kernels that
run a whole attention block as one op, so a ViT on a real CPU tensor came out
at 11.3 instead of 17.6 GMACs (vit_b_16):

- ``aten._scaled_dot_product_flash_attention_for_cpu``: what
  ``F.scaled_dot_product_attention`` dispatches to on CPU (counted as 0);
- ``aten._native_multi_head_attention``: ``nn.MultiheadAttention``'s inference
  fast path (eval mode, no autograd), projections and attention in one op;
- ``aten._transformer_encoder_layer_fwd``: ``nn.TransformerEncoderLayer``'s
  fast path, which adds the feed-forward block as well.

:func:`mac_counter` registers formulas for all three (the attention matrices
as torch's own ``sdpa_flop``, plus the projections and feed-forward
matmuls), so a count does not depend on which path a module takes; on the
meta device none of the fast paths is taken and the decomposed ops are
counted directly. Element-wise ops (norms, activations, softmax, pooling) are
not MACs and are not counted, matching torchvision's figures within 1% for
every classification model (``tests/evaluators/test_macs.py``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:  # imported where used: it pulls in torch._decomp and torch.export (~1 s)
    from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_macs", "eval_mode", "mac_counter"]

_aten = torch.ops.aten
Shape = tuple[int, ...]


def _attention_macs(q: Shape, k: Shape, embed: int, heads: int) -> int:
    """MACs of QK^T and of the weighted sum of V for (..., L, E) inputs, split into heads."""
    from torch.utils.flop_counter import sdpa_flop_count

    batch = math.prod(q[:-2])
    head_dim = embed // heads
    q4, k4 = (batch, heads, q[-2], head_dim), (batch, heads, k[-2], head_dim)
    return int(sdpa_flop_count(q4, k4, k4)) // 2  # type: ignore[no-untyped-call]


def _sdpa_cpu_flop(q: Shape, k: Shape, v: Shape, *_: Any, **__: Any) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return int(sdpa_flop_count(q, k, v))  # type: ignore[no-untyped-call]


def _native_mha_flop(
    q: Shape, k: Shape, v: Shape, embed: int, heads: int, *_: Any, **__: Any
) -> int:
    """q/k/v projections, attention and output projection of ``_native_multi_head_attention``."""
    batch = math.prod(q[:-2])
    projections = batch * embed * embed * (q[-2] + k[-2] + v[-2] + q[-2])
    return 2 * (projections + _attention_macs(q, k, embed, heads))


def _encoder_layer_flop(src: Shape, embed: int, heads: int, *args: Any, **__: Any) -> int:
    """Self-attention plus the two feed-forward matmuls of ``_transformer_encoder_layer_fwd``."""
    ffn_weight_1 = args[11]  # (dim_feedforward, embed) after qkv/proj/norm arguments
    tokens = math.prod(src[:-1])
    attention = _native_mha_flop(src, src, src, embed, heads) // 2
    return 2 * (attention + 2 * tokens * embed * int(ffn_weight_1[0]))


_EXTRA_FORMULAS: dict[Any, Any] = {
    _aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flop,
    _aten._native_multi_head_attention: _native_mha_flop,
    _aten._transformer_encoder_layer_fwd: _encoder_layer_flop,
}


def mac_counter() -> FlopCounterMode:
    """A silent ``FlopCounterMode`` that also counts the fused CPU attention kernels."""
    from torch.utils.flop_counter import FlopCounterMode

    return FlopCounterMode(display=False, custom_mapping=_EXTRA_FORMULAS)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode and restore each one's own flag afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in flags:
            module.training = training


def count_macs(model: nn.Module, example_input: torch.Tensor) -> int:
    """MACs (FLOPs / 2) of one inference forward pass of ``model`` on ``example_input``.

    Runs in eval mode (no auxiliary heads, as deployed) without autograd. The
    count is for the whole ``example_input`` batch; works on the meta device.
    """
    with eval_mode(model), torch.no_grad(), mac_counter() as counter:
        model(example_input)
    return int(counter.get_total_flops()) // 2
