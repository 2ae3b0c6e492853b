"""A loader's view of a dataset (labels plus a way to read inputs) and the split Dataset type."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["ArrayDataset", "DataError", "Pool", "missing_data"]


class DataError(ValueError):
    """A data config or the data on disk is unusable; the message names the value and the fix."""


def missing_data(path: object, what: str) -> DataError:
    """The one-line error for a dataset that is not where the config says."""
    return DataError(
        f"{what} not found at {path}; set data.root=<folder that holds it> "
        "or data.download=true to fetch it (needs network)"
    )


@dataclass(frozen=True, kw_only=True)
class Pool:
    """Every sample a loader can offer: labels up front, inputs read only for the chosen indices.

    ``read(indices)`` returns the stored inputs (any dtype, e.g. uint8 images) of those samples;
    a split yields ``(inputs * scale - mean) / std`` as float32. ``mean``/``std`` are either
    fixed constants or, with ``fit_norm``, per-feature statistics of the train split along
    ``fit_dims`` (dimensions of one sample that share a statistic). ``groups`` optionally
    names a predefined partition (train/val/test) per sample.
    """

    labels: np.ndarray
    class_names: tuple[str, ...]
    read: Callable[[np.ndarray], torch.Tensor]
    groups: np.ndarray | None = None
    scale: float = 1.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    fit_norm: bool = False
    fit_dims: tuple[int, ...] = field(default=())


class ArrayDataset(Dataset[tuple[torch.Tensor, int]]):
    """Samples held in one tensor, normalised on access: ``(x * scale - mean) / std`` as float32."""

    def __init__(
        self,
        inputs: torch.Tensor,
        labels: torch.Tensor,
        *,
        scale: float,
        mean: torch.Tensor,
        std: torch.Tensor,
    ) -> None:
        self.inputs = inputs
        self.labels = labels.to(torch.int64)
        self.scale = scale
        self.mean = mean.to(torch.float32)
        self.std = std.to(torch.float32)
        self._constants: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.normalise(self.inputs[index]), int(self.labels[index])

    def normalise(self, raw: torch.Tensor) -> torch.Tensor:
        """``(raw * scale - mean) / std`` as float32 on ``raw``'s device, for one sample or a batch.

        The one formula behind every access path (a sample, a batch on a GPU, all at once), so
        they give the same floats: one elementwise op at a time, as IEEE float32 everywhere.
        """
        if raw.device not in self._constants:  # moved once: a copy per batch would sync a GPU
            self._constants[raw.device] = (self.mean.to(raw.device), self.std.to(raw.device))
        mean, std = self._constants[raw.device]
        return (raw.to(torch.float32) * self.scale - mean) / std

    def __getstate__(self) -> dict[str, object]:
        """Pickled (e.g. for DataLoader workers) without the per-device copies of mean/std."""
        return {**self.__dict__, "_constants": {}}

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All samples at once (normalised float32 inputs, int64 labels), for fast batched use."""
        return self.normalise(self.inputs), self.labels
