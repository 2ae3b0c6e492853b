"""A 7-block CNN for 1 x 28 x 28 digits whose cost sits mostly in its later blocks.

Channel width grows with depth while the resolution shrinks (28 -> 14 -> 7 -> 4), so the first
three block outputs (about 21 % of the MACs) are cheap early-exit points and the deep blocks
are what an early exit saves. The recipe in conf/model/mnist_cnn.yaml trains it on MNIST-5k
(3,000 training images) on one CPU thread; benchmarks/bench_mnist_backbone.py records its time
and test accuracy, and a slow test checks the accuracy stays >= 97 %.
"""

from __future__ import annotations

from collections.abc import Sequence

from evaluators.models._plain_cnn import PlainCNN

__all__ = ["MnistCNN"]


class MnistCNN(PlainCNN):
    """Conv-BN-ReLU blocks (``widths``, ``strides``), global average pooling, linear classifier."""

    def __init__(
        self,
        num_classes: int = 10,
        *,
        in_channels: int = 1,
        widths: Sequence[int] = (8, 16, 32, 32, 64, 64, 128),
        strides: Sequence[int] = (1, 2, 1, 2, 1, 1, 2),
    ) -> None:
        super().__init__(dims=2, num_classes=num_classes, in_channels=in_channels,
                         widths=widths, strides=strides, kernel=3)
