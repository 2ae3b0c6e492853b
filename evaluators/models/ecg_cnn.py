"""A 1D CNN for single-lead ECG beats (input 1 x L, e.g. 187 samples at 360 Hz; 5 AAMI classes).

Six Conv1d-BN-ReLU blocks with channel width growing as the sequence is halved, global average
pooling and a linear classifier: small enough for an MCU, with cheap early blocks.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["ECGCNN"]


def _block(c_in: int, c_out: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv1d(c_in, c_out, kernel_size=kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm1d(c_out),
        nn.ReLU(inplace=True),
    )


class ECGCNN(nn.Module):
    """Conv1d blocks (``widths``, ``strides``, ``kernel``), global average pool, linear head."""

    def __init__(
        self,
        num_classes: int = 5,
        *,
        in_channels: int = 1,
        widths: Sequence[int] = (16, 16, 32, 32, 64, 64),
        strides: Sequence[int] = (1, 2, 1, 2, 1, 2),
        kernel: int = 5,
    ) -> None:
        super().__init__()
        if len(widths) != len(strides) or not widths:
            raise ValueError(
                f"model.kwargs.widths={list(widths)} and strides={list(strides)} need the same "
                "non-zero length"
            )
        channels = [in_channels, *widths]
        self.features = nn.Sequential(
            *(_block(channels[i], channels[i + 1], kernel, s) for i, s in enumerate(strides))
        )
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.classifier = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.classifier(torch.flatten(self.pool(self.features(x)), 1))
        return logits
