"""CIFAR-10 from the python pickles (``cifar-10-batches-py``): train and test batches form one pool.

Files are read directly (torchvision's class insists on the official checksums, which would
rule out small test fixtures in the same format); ``data.download=true`` fetches the archive
through ``torchvision.datasets.CIFAR10``.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evaluators.data._pool import DataError, Pool, missing_data
from evaluators.data.settings import DataSettings

__all__ = ["load"]

_FOLDER = "cifar-10-batches-py"
_BATCHES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch")
_MEAN = (0.4914, 0.4822, 0.4465)  # per-channel statistics of the CIFAR-10 train set
_STD = (0.2470, 0.2435, 0.2616)


def _unpickle(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return pickle.load(f, encoding="latin1")  # type: ignore[no-any-return]
    except (OSError, pickle.UnpicklingError, EOFError) as err:
        raise DataError(
            f"cannot read CIFAR-10 batch {path} ({err}); delete it and set data.download=true"
        ) from err


def _download(root: Path) -> None:
    from torchvision.datasets import CIFAR10

    CIFAR10(str(root), train=True, download=True)


def load(data: DataSettings, *, seed: int) -> Pool:
    """All 60,000 images (train batches first, then test) as uint8 (N, 3, 32, 32)."""
    del seed
    root = data.folder()
    folder = root / _FOLDER
    if not (folder / _BATCHES[0]).is_file() and data.download:
        _download(root)
    missing = [b for b in (*_BATCHES, "batches.meta") if not (folder / b).is_file()]
    if missing:
        raise missing_data(folder / missing[0], "CIFAR-10 batch file")
    batches = [_unpickle(folder / b) for b in _BATCHES]
    pixels = np.concatenate([np.asarray(b["data"], dtype=np.uint8) for b in batches])
    labels = np.concatenate([np.asarray(b["labels"], dtype=np.int64) for b in batches])
    names = tuple(str(n) for n in _unpickle(folder / "batches.meta")["label_names"])
    images = torch.from_numpy(pixels.reshape(-1, 3, 32, 32))
    return Pool(
        labels=labels,
        class_names=names,
        read=lambda idx: images[torch.as_tensor(idx)],
        scale=1.0 / 255.0,
        mean=_MEAN,
        std=_STD,
    )
