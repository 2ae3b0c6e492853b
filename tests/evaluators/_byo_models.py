"""Architectures a user might bring: other constructor signatures (imported by arch path)."""

from __future__ import annotations

import torch
from torch import nn


class NClasses(nn.Module):
    """A 1-D CNN whose class-count argument is called ``n_classes``."""

    def __init__(self, n_classes: int, width: int = 8) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv1d(1, width, 3, padding=1), nn.ReLU(),
                                  nn.Conv1d(width, width, 3, stride=2, padding=1), nn.ReLU(),
                                  nn.AdaptiveAvgPool1d(1), nn.Flatten())
        self.head = nn.Linear(width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class FixedFive(nn.Module):
    """A model with its class count built in (five outputs), no constructor argument."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.LazyLinear(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)  # type: ignore[no-any-return]
