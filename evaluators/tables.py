"""Build the prediction table from cached features and trained heads.

For every head at every candidate, and for the backbone's own classifier (its
cached logits), on every ``val`` and ``test`` sample: predicted class and the
confidences of :data:`evaluators.eenn.METRICS`. Everything is IEEE float32 from
the float32 val/test features, heads in eval mode, on the CPU or a GPU (TF32
off); :func:`exit_scores` is the one function that turns logits into
(prediction, confidences), for the runtime too.
The table is cached beside the features, keyed by the heads and the features.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from evaluators._cache import commit_entry, ensure_writable, read_entry, reset_entry
from evaluators.device import resolve_device
from evaluators.eenn import METRICS
from evaluators.features import FeatureStore, precision_mode
from evaluators.hashing import hash_json, hash_state_dict
from evaluators.head_training import TrainedHeads
from evaluators.heads import head_costs
from evaluators.predictions import (
    PredictionTable,
    SplitPredictions,
    load_predictions,
    save_predictions,
)

__all__ = ["build_prediction_table", "exit_scores", "head_costs"]

_VERSION = 1
_FILE = "predictions.npz"


def exit_scores(logits: Tensor) -> tuple[Tensor, Tensor]:
    """``(pred (N,), conf (len(METRICS), N))`` of float32 logits ``(N, K)``, "higher is surer".

    max_softmax: top-1 probability; entropy: ``1 - H(p) / log K``; margin:
    top-1 minus top-2 probability. The runtime's exit decision uses this too.
    """
    logits = logits.float()
    probs = torch.softmax(logits, dim=1)
    top = probs.topk(min(2, probs.shape[1]), dim=1).values
    second = top[:, 1] if top.shape[1] > 1 else torch.zeros_like(top[:, 0])
    entropy = torch.special.entr(probs).sum(dim=1)
    by_metric = {
        "max_softmax": top[:, 0],
        "entropy": 1.0 - entropy / math.log(max(probs.shape[1], 2)),
        "margin": top[:, 0] - second,
    }
    return logits.argmax(dim=1), torch.stack([by_metric[m] for m in METRICS])


def _split(
    store: FeatureStore,
    heads: Mapping[tuple[int, int], nn.Module],
    split: str,
    n_c: int,
    n_h: int,
    batch_size: int,
    device: torch.device,
) -> SplitPredictions:
    """Predictions of every head on ``split``, computed on ``device`` in IEEE float32."""
    n = store.n_samples(split)
    pred = torch.empty((n_c, n_h, n), dtype=torch.int16, device=device)
    conf = torch.empty((len(METRICS), n_c, n_h, n), dtype=torch.float32, device=device)
    with torch.inference_mode(), precision_mode("fp32", device):
        for c, point in enumerate(store.points[:n_c]):
            modules = [copy.deepcopy(heads[(c, h)]).eval().to(device) for h in range(n_h)]
            feats = store.features(split, point)
            for start in range(0, n, batch_size):
                chunk = np.array(feats[start : start + batch_size], dtype=np.float32)
                x = torch.from_numpy(chunk).to(device)
                for h, module in enumerate(modules):
                    p, s = exit_scores(module(x))
                    pred[c, h, start : start + len(x)] = p
                    conf[:, c, h, start : start + len(x)] = s
        final_pred, final_conf = exit_scores(
            torch.from_numpy(np.array(store.logits(split), dtype=np.float32))
        )
    return SplitPredictions(
        labels=np.array(store.labels(split), dtype=np.int64),
        head_pred=pred.cpu().numpy(),
        head_conf=conf.cpu().numpy(),
        final_pred=final_pred.numpy().astype(np.int16),
        final_conf=final_conf.numpy(),
    )


def _table_key(
    store: FeatureStore,
    heads: TrainedHeads | Mapping[tuple[int, int], nn.Module],
    candidate_names: Sequence[str],
    head_names: Sequence[str],
) -> str:
    if isinstance(heads, TrainedHeads):
        heads_id = heads.key
    else:
        heads_id = hash_json(
            {f"{c},{h}": hash_state_dict(m) for (c, h), m in sorted(heads.items())}
        )
    return hash_json(
        {
            "v": _VERSION,
            "heads": heads_id,
            "val": store.split_key("val"),
            "test": store.split_key("test"),
            "candidates": list(candidate_names),
            "head_names": list(head_names),
            "metrics": list(METRICS),
        }
    )


def build_prediction_table(
    store: FeatureStore,
    heads: TrainedHeads | Mapping[tuple[int, int], nn.Module],
    *,
    candidate_names: Sequence[str] | None = None,
    head_names: Sequence[str] | None = None,
    batch_size: int = 4096,
    device: str = "cpu",
) -> PredictionTable:
    """The val/test :class:`PredictionTable` of ``heads`` on ``store`` (cached, reused).

    ``candidate_names`` default to the store's points and ``head_names`` to the
    trained heads' names; heads are indexed ``(candidate, head)`` in that order.
    The heads run on ``device`` (cpu, cuda or auto) in IEEE float32 (TF32 off), so
    a GPU gives the CPU's numbers up to float rounding.
    """
    modules = heads.heads if isinstance(heads, TrainedHeads) else heads
    cands = tuple(candidate_names if candidate_names is not None else store.points)
    if head_names is None:
        if not isinstance(heads, TrainedHeads):
            raise ValueError("head_names is required when heads is a plain mapping")
        head_names = heads.head_names
    names = tuple(head_names)
    missing = [
        (c, h) for c in range(len(cands)) for h in range(len(names)) if (c, h) not in modules
    ]
    if len(cands) != len(store.points) or missing:
        raise ValueError(
            f"heads/candidates do not match the feature store: missing heads {missing[:3]}, "
            f"{len(cands)} candidate names for {len(store.points)} cached candidates"
        )
    folder = store.root.parent / "tables" / _table_key(store, heads, cands, names)
    if read_entry(folder) is not None:
        return load_predictions(folder / _FILE)
    ensure_writable(folder.parent)
    reset_entry(folder)
    dev = resolve_device(device)
    table = PredictionTable(
        candidate_names=cands,
        head_names=names,
        val=_split(store, modules, "val", len(cands), len(names), batch_size, dev),
        test=_split(store, modules, "test", len(cands), len(names), batch_size, dev),
    )
    save_predictions(table, folder / _FILE)
    commit_entry(folder, [_FILE], {"version": _VERSION})
    return table
