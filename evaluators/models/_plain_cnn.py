"""Conv-BN-ReLU blocks, global average pooling and a linear classifier, in 1D or 2D.

The shape shared by the small built-in backbones (MnistCNN for images, ECGCNN for ECG beats):
every block output is a single-tensor cut point, so each is an exit candidate.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["PlainCNN"]

_LAYERS: dict[int, tuple[type[nn.Module], type[nn.Module], type[nn.Module]]] = {
    1: (nn.Conv1d, nn.BatchNorm1d, nn.AdaptiveAvgPool1d),
    2: (nn.Conv2d, nn.BatchNorm2d, nn.AdaptiveAvgPool2d),
}


class PlainCNN(nn.Module):
    """``features`` (one Conv-BN-ReLU block per width and stride), ``pool``, ``classifier``."""

    def __init__(
        self,
        *,
        dims: int,
        num_classes: int,
        in_channels: int,
        widths: Sequence[int],
        strides: Sequence[int],
        kernel: int,
    ) -> None:
        super().__init__()
        if len(widths) != len(strides) or not widths:
            raise ValueError(
                f"model.kwargs.widths={list(widths)} and strides={list(strides)} need the same "
                "non-zero length"
            )
        conv, norm, pool = _LAYERS[dims]
        channels = [in_channels, *widths]
        self.features = nn.Sequential(
            *(
                nn.Sequential(
                    conv(channels[i], channels[i + 1], kernel_size=kernel, stride=s,
                         padding=kernel // 2, bias=False),
                    norm(channels[i + 1]),
                    nn.ReLU(inplace=True),
                )
                for i, s in enumerate(strides)
            )
        )
        self.pool = pool(1)
        self.classifier = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.classifier(torch.flatten(self.pool(self.features(x)), 1))
        return logits
