"""A 7-block CNN for 1 x 28 x 28 digits whose cost sits mostly in its later blocks.

Channel width grows with depth while the resolution shrinks (28 -> 14 -> 7 -> 4), so the first
three block outputs (about 21 % of the MACs) are cheap early-exit points and the deep blocks
are what an early exit saves. The recipe in conf/model/mnist_cnn.yaml trains it on MNIST-5k
(3,000 training images) on one CPU thread; benchmarks/bench_mnist_backbone.py records its time
and test accuracy, and a slow test checks the accuracy stays >= 97 %.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["MnistCNN"]


def _block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class MnistCNN(nn.Module):
    """Conv-BN-ReLU blocks (``widths``, ``strides``), global average pooling, linear classifier."""

    def __init__(
        self,
        num_classes: int = 10,
        *,
        in_channels: int = 1,
        widths: Sequence[int] = (8, 16, 32, 32, 64, 64, 128),
        strides: Sequence[int] = (1, 2, 1, 2, 1, 1, 2),
    ) -> None:
        super().__init__()
        if len(widths) != len(strides) or not widths:
            raise ValueError(
                f"model.kwargs.widths={list(widths)} and strides={list(strides)} need the same "
                "non-zero length"
            )
        channels = [in_channels, *widths]
        self.features = nn.Sequential(
            *(_block(channels[i], channels[i + 1], s) for i, s in enumerate(strides))
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.classifier(torch.flatten(self.pool(self.features(x)), 1))
        return logits
