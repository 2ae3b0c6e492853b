"""DS-CNN for keyword spotting as in MLPerf Tiny KWS (input 1 x 49 x 10 MFCC, 12 classes).

A 10 x 4 stride-2 convolution ("same" padding as in the Keras reference) followed by four
depthwise-separable blocks of 64 channels, average pooling and a linear classifier.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["DSCNN"]


def _same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow 'same' padding (before, after) for one dimension."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _ds_block(channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(channels, channels, kernel_size=3, padding=1, groups=channels, bias=False),
        nn.BatchNorm2d(channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(channels, channels, kernel_size=1, bias=False),
        nn.BatchNorm2d(channels),
        nn.ReLU(inplace=True),
    )


class DSCNN(nn.Module):
    """MLPerf Tiny DS-CNN (small): ``width`` channels, ``blocks`` depthwise-separable blocks."""

    def __init__(
        self,
        num_classes: int = 12,
        *,
        in_channels: int = 1,
        input_size: tuple[int, int] = (49, 10),
        width: int = 64,
        blocks: int = 4,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        top, bottom = _same_pad(input_size[0], 10, 2)
        left, right = _same_pad(input_size[1], 4, 2)
        self.stem = nn.Sequential(
            nn.ZeroPad2d((left, right, top, bottom)),
            nn.Conv2d(in_channels, width, kernel_size=(10, 4), stride=2, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
        )
        self.blocks = nn.Sequential(*(_ds_block(width) for _ in range(blocks)))
        self.pool = nn.Sequential(nn.Dropout(2 * dropout), nn.AdaptiveAvgPool2d(1))
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.classifier(
            torch.flatten(self.pool(self.blocks(self.stem(x))), 1)
        )
        return logits
