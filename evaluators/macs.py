"""Multiply-accumulate counting with torch.utils.flop_counter."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_macs"]


def count_macs(model: nn.Module, example_input: torch.Tensor) -> int:
    """Total MACs of one forward pass of ``model`` on ``example_input`` (FLOPs / 2)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(example_input)
    return int(counter.get_total_flops()) // 2
