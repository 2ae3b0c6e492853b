"""ResNets for 32x32 inputs (He et al. 2016's ImageNet depths, CIFAR stem).

torchvision's ResNet with its stem swapped for a 3x3 stride-1 convolution and
no max-pool, so the four stages run at 32, 16, 8 and 4 pixels. Blocks
(BasicBlock / Bottleneck), stages, initialisation and module names are
torchvision's, so checkpoints and node names line up with the ImageNet models.
ResNet-152 at 10 classes costs 3.72 GMACs per 32x32 image.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

__all__ = [
    "CifarResNet",
    "cifar_resnet18",
    "cifar_resnet34",
    "cifar_resnet50",
    "cifar_resnet101",
    "cifar_resnet152",
]


class CifarResNet(ResNet):  # type: ignore[misc]  # torchvision is untyped
    """torchvision ResNet with a 3x3 stride-1 stem and the max-pool removed."""

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        layers: list[int],
        *,
        num_classes: int = 10,
        in_channels: int = 3,
        **kwargs: Any,
    ) -> None:
        super().__init__(block, layers, num_classes=num_classes, **kwargs)
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.maxpool = nn.Identity()


def cifar_resnet18(*, num_classes: int = 10, **kwargs: Any) -> CifarResNet:
    """ResNet-18 (BasicBlock, [2, 2, 2, 2]) for 32x32 inputs."""
    return CifarResNet(BasicBlock, [2, 2, 2, 2], num_classes=num_classes, **kwargs)


def cifar_resnet34(*, num_classes: int = 10, **kwargs: Any) -> CifarResNet:
    """ResNet-34 (BasicBlock, [3, 4, 6, 3]) for 32x32 inputs."""
    return CifarResNet(BasicBlock, [3, 4, 6, 3], num_classes=num_classes, **kwargs)


def cifar_resnet50(*, num_classes: int = 10, **kwargs: Any) -> CifarResNet:
    """ResNet-50 (Bottleneck, [3, 4, 6, 3]) for 32x32 inputs."""
    return CifarResNet(Bottleneck, [3, 4, 6, 3], num_classes=num_classes, **kwargs)


def cifar_resnet101(*, num_classes: int = 10, **kwargs: Any) -> CifarResNet:
    """ResNet-101 (Bottleneck, [3, 4, 23, 3]) for 32x32 inputs."""
    return CifarResNet(Bottleneck, [3, 4, 23, 3], num_classes=num_classes, **kwargs)


def cifar_resnet152(*, num_classes: int = 10, **kwargs: Any) -> CifarResNet:
    """ResNet-152 (Bottleneck, [3, 8, 36, 3]) for 32x32 inputs."""
    return CifarResNet(Bottleneck, [3, 8, 36, 3], num_classes=num_classes, **kwargs)
