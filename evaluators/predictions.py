"""The prediction table: all that the search reads about exit quality.

For every head at every exit candidate, and for the backbone's own
classifier, and for every ``val`` and ``test`` sample: predicted class and the
three confidence scores (see :data:`evaluators.eenn.METRICS`, all "higher is
surer"). Correctness is derived from the labels, never stored twice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from evaluators._cache import atomic_write
from evaluators.eenn import METRICS

__all__ = ["PredictionTable", "SplitPredictions", "load_predictions", "save_predictions"]

_FORMAT_VERSION = 1


@dataclass(frozen=True, kw_only=True)
class SplitPredictions:
    """Predictions on one split. ``C`` candidates, ``H`` heads, ``N`` samples."""

    labels: NDArray[np.int64]  # (N,)
    head_pred: NDArray[np.int16]  # (C, H, N)
    head_conf: NDArray[np.float32]  # (len(METRICS), C, H, N)
    final_pred: NDArray[np.int16]  # (N,)
    final_conf: NDArray[np.float32]  # (len(METRICS), N)

    @property
    def head_correct(self) -> NDArray[np.bool_]:
        return np.asarray(self.head_pred == self.labels[None, None, :], dtype=np.bool_)

    @property
    def final_correct(self) -> NDArray[np.bool_]:
        return np.asarray(self.final_pred == self.labels, dtype=np.bool_)

    def conf(self, metric: str) -> NDArray[np.float32]:
        """(C, H, N) confidences of the heads under ``metric``."""
        return np.asarray(self.head_conf[METRICS.index(metric)], dtype=np.float32)


@dataclass(frozen=True, kw_only=True)
class PredictionTable:
    """Val and test predictions of a head family on a backbone's candidates."""

    candidate_names: tuple[str, ...]
    head_names: tuple[str, ...]
    val: SplitPredictions
    test: SplitPredictions


def save_predictions(table: PredictionTable, path: Path) -> None:
    """Write ``table`` as one ``.npz`` (atomic: temp file, then rename)."""
    arrays: dict[str, NDArray[np.generic]] = {}
    for split in ("val", "test"):
        sp: SplitPredictions = getattr(table, split)
        for field in ("labels", "head_pred", "head_conf", "final_pred", "final_conf"):
            arrays[f"{split}.{field}"] = getattr(sp, field)
    meta = {
        "version": _FORMAT_VERSION,
        "candidate_names": list(table.candidate_names),
        "head_names": list(table.head_names),
        "metrics": list(METRICS),
    }
    atomic_write(path, lambda tmp: np.savez(tmp, meta=np.array(json.dumps(meta)), **arrays))  # type: ignore[arg-type]


def load_predictions(path: Path) -> PredictionTable:
    """Read a table written by :func:`save_predictions`; a bad file raises ValueError."""
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            splits = {
                split: SplitPredictions(
                    **{
                        f: data[f"{split}.{f}"]
                        for f in ("labels", "head_pred", "head_conf", "final_pred", "final_conf")
                    }
                )
                for split in ("val", "test")
            }
    except (OSError, KeyError, ValueError, json.JSONDecodeError) as err:
        raise ValueError(
            f"prediction table {path} is unreadable ({err}); delete it to rebuild"
        ) from err
    if meta.get("version") != _FORMAT_VERSION or tuple(meta.get("metrics", ())) != METRICS:
        raise ValueError(f"prediction table {path} has an old format; delete it to rebuild")
    return PredictionTable(
        candidate_names=tuple(meta["candidate_names"]),
        head_names=tuple(meta["head_names"]),
        val=splits["val"],
        test=splits["test"],
    )
