"""Batched training of every head at every candidate on the cached train features.

One optimiser holds all head parameters and the loss is the sum of every
head's loss, so one pass over a minibatch trains the whole family at once.
A held-out part of ``train`` (never ``val``) early-stops each head on its own:
a head keeps its best state, and once its patience is spent it drops out of
the loss (its parameters get no gradient, so the optimiser leaves them).
Trained heads are saved atomically in the cache, keyed by the train features,
the family and the seed, and reused on a re-run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import Tensor
from tqdm.auto import tqdm

from evaluators._cache import commit_entry, ensure_writable, read_entry, reset_entry
from evaluators.features import FeatureStore, _resolve_device
from evaluators.hashing import hash_json
from evaluators.heads import ExitHead, HeadFamily, HeadSpec, HeadTraining, build_head

__all__ = ["TrainedHeads", "heads_key", "load_heads", "train_heads"]

_VERSION = 1
_FILE = "heads.pt"
_EVAL_CHUNK = 4096


@dataclass(frozen=True, kw_only=True)
class TrainedHeads:
    """Trained heads ``(candidate index, head index) -> module`` and where they are cached."""

    key: str
    path: Path  # the heads.pt file
    candidate_names: tuple[str, ...]
    head_names: tuple[str, ...]
    heads: Mapping[tuple[int, int], ExitHead]
    holdout_accuracy: NDArray[np.float64]  # (C, H) at each head's best epoch
    best_epoch: NDArray[np.int64]  # (C, H)


def heads_key(store: FeatureStore, family: HeadFamily, *, seed: int) -> str:
    """Content hash of a head set: train features, family, training recipe, seed."""
    return hash_json(
        {
            "v": _VERSION,
            "train": store.split_key("train"),
            "points": list(store.points),
            "pool": store.pool,
            "family": dataclasses.asdict(family),
            "seed": seed,
        }
    )


def _build_all(store: FeatureStore, family: HeadFamily) -> dict[tuple[int, int], ExitHead]:
    return {
        (c, h): build_head(
            spec,
            feature_shape=store.raw_shapes[point],
            pool=store.pool,
            num_classes=store.num_classes,
        )
        for c, point in enumerate(store.points)
        for h, spec in enumerate(family.members)
    }


def _channel_stats(features: NDArray[Any], rows: NDArray[np.int64]) -> tuple[Tensor, Tensor]:
    """Per-channel mean and std (over samples and positions) of ``features[rows]``, float64 sums."""
    sums: list[Tensor] = []
    squares: list[Tensor] = []
    count = 0
    for start in range(0, len(rows), _EVAL_CHUNK):
        x = torch.from_numpy(features[rows[start : start + _EVAL_CHUNK]]).double()
        x = x.reshape(x.shape[0], x.shape[1], -1)  # (n, C, positions); (n, D) -> (n, D, 1)
        sums.append(x.sum(dim=(0, 2)))
        squares.append((x * x).sum(dim=(0, 2)))
        count += x.shape[0] * x.shape[2]
    mean = torch.stack(sums).sum(0) / count
    std = (torch.stack(squares).sum(0) / count - mean * mean).clamp_min(0).sqrt()
    return mean.float(), torch.where(std > 1e-6, std, torch.ones_like(std)).float()


class _Inputs:
    """Normalised float32 train features of chosen samples at every candidate."""

    def __init__(self, store: FeatureStore, fit: NDArray[np.int64], device: torch.device) -> None:
        self.arrays = [store.features("train", p) for p in store.points]
        self.device = device
        stats = [_channel_stats(a, fit) for a in self.arrays]
        self.mean = [m.to(device) for m, _ in stats]
        self.std = [s.to(device) for _, s in stats]

    def __call__(self, idx: NDArray[np.int64]) -> list[Tensor]:
        out = []
        for arr, mean, std in zip(self.arrays, self.mean, self.std, strict=True):
            x = torch.from_numpy(arr[idx]).to(self.device).float()
            view = (1, -1) + (1,) * (x.dim() - 2)
            out.append(x.sub_(mean.view(view)).div_(std.view(view)))
        return out


def _holdout_scores(
    heads: Mapping[tuple[int, int], ExitHead],
    xs: list[Tensor],
    y: Tensor,
    keys: list[tuple[int, int]],
) -> dict[tuple[int, int], tuple[float, float]]:
    """(loss, accuracy) on the held-out samples for each head in ``keys``."""
    scores = {}
    with torch.no_grad():
        for key in keys:
            head = heads[key].eval()
            out = torch.cat(
                [head(xs[key[0]][i : i + _EVAL_CHUNK]) for i in range(0, len(y), _EVAL_CHUNK)]
            )
            scores[key] = (
                F.cross_entropy(out, y).item(),
                (out.argmax(1) == y).float().mean().item(),
            )
            head.train()
    return scores


def _bf16_supported(device: torch.device) -> bool:
    """Whether bf16 matrix products are native (and hence faster) on ``device``."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    mkldnn = torch.backends.mkldnn.is_available()  # type: ignore[no-untyped-call]
    return bool(mkldnn and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _state(head: ExitHead) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in head.state_dict().items()}


def _fit(
    store: FeatureStore,
    heads: dict[tuple[int, int], ExitHead],
    cfg: HeadTraining,
    *,
    seed: int,
    device: torch.device,
    progress: bool,
) -> dict[tuple[int, int], tuple[int, float]]:
    """Train ``heads`` together, leave each in its best state; return (best epoch, holdout acc).

    Inputs are standardised per channel (statistics of the fitted part of
    train), which the heads absorb into their first layer at the end. The
    learning rate follows one one-cycle schedule shared by all heads; matrix
    products run in bf16 autocast where the hardware has native bf16 (``amp``).
    """
    rng = np.random.default_rng(seed)
    labels = np.asarray(store.labels("train"))
    order = rng.permutation(len(labels))
    n_hold = max(1, round(cfg.holdout_fraction * len(labels)))
    hold, fit = np.sort(order[:n_hold]), np.sort(order[n_hold:])
    inputs = _Inputs(store, fit, device)
    hold_x, hold_y = inputs(hold), torch.from_numpy(labels[hold]).to(device)
    opt = torch.optim.AdamW(
        [p for h in heads.values() for p in h.parameters()],
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        fused=True,  # one kernel for all heads' parameters (CPU and CUDA)
    )
    amp = cfg.amp and _bf16_supported(device)
    steps = cfg.epochs * -(-len(fit) // cfg.batch_size)
    # OneCycleLR divides by its phase lengths: too few steps for two phases -> constant rate
    sched: torch.optim.lr_scheduler.LRScheduler = (
        torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps, pct_start=0.25)
        if steps >= 8
        else torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)
    )
    active = sorted(heads)
    best: dict[tuple[int, int], dict[str, Tensor]] = {}
    record: dict[tuple[int, int], tuple[int, float]] = {}
    best_loss, waited = dict.fromkeys(active, float("inf")), dict.fromkeys(active, 0)
    for epoch in tqdm(
        range(cfg.epochs), desc="heads", unit="epoch", disable=not progress, leave=False
    ):
        shuffled = rng.permutation(fit)
        for start in range(0, len(shuffled), cfg.batch_size):
            idx = np.sort(shuffled[start : start + cfg.batch_size])
            xs, y = inputs(idx), torch.from_numpy(labels[idx]).to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                out = torch.cat([heads[key](xs[key[0]]) for key in active])
            # the sum of every head's mean loss: one backward trains them all
            loss = F.cross_entropy(out.float(), y.repeat(len(active))) * len(active)
            opt.zero_grad(set_to_none=True)
            torch.autograd.backward(loss)
            opt.step()
            sched.step()
        for key, (loss_h, acc_h) in _holdout_scores(heads, hold_x, hold_y, active).items():
            if loss_h < best_loss[key]:
                best_loss[key], waited[key], best[key], record[key] = (
                    loss_h,
                    0,
                    _state(heads[key]),
                    (epoch, acc_h),
                )
            else:
                waited[key] += 1
        active = [key for key in active if waited[key] < cfg.patience]
        if not active:
            break
    for key, head in heads.items():
        if key in best:  # else never finite: keep the last state
            head.load_state_dict(best[key])
        head.absorb_normalization(inputs.mean[key[0]], inputs.std[key[0]])
        record.setdefault(key, (cfg.epochs - 1, float("nan")))
    return record


def train_heads(
    store: FeatureStore,
    family: HeadFamily,
    *,
    seed: int,
    device: str = "cpu",
    progress: bool = True,
) -> TrainedHeads:
    """Train (or load from the cache) every head of ``family`` at every candidate of ``store``."""
    key = heads_key(store, family, seed=seed)
    folder = store.root.parent / "heads" / key
    if read_entry(folder) is None:
        ensure_writable(folder.parent)
        reset_entry(folder)
        dev = _resolve_device(device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            heads = {k: h.to(dev).train() for k, h in _build_all(store, family).items()}
        record = _fit(store, heads, family.training, seed=seed, device=dev, progress=progress)
        payload = {
            "version": _VERSION,
            "points": list(store.points),
            "pool": store.pool,
            "num_classes": store.num_classes,
            "specs": [dataclasses.asdict(m) for m in family.members],
            "raw_shapes": [list(store.raw_shapes[p]) for p in store.points],
            "states": {
                f"{c},{h}": {k: v.cpu() for k, v in head.state_dict().items()}
                for (c, h), head in heads.items()
            },
            "best_epoch": {f"{c},{h}": r[0] for (c, h), r in record.items()},
            "holdout_accuracy": {f"{c},{h}": r[1] for (c, h), r in record.items()},
        }
        torch.save(payload, folder / f"{_FILE}.part")
        commit_entry(folder, [_FILE], {"version": _VERSION, "key": key})
    return _load(folder / _FILE, key=key)


def _load(path: Path, *, key: str) -> TrainedHeads:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    specs = [HeadSpec(**s) for s in payload["specs"]]
    heads: dict[tuple[int, int], ExitHead] = {}
    n_c, n_h = len(payload["points"]), len(specs)
    acc, epoch = np.zeros((n_c, n_h)), np.zeros((n_c, n_h), dtype=np.int64)
    for c in range(n_c):
        for h, spec in enumerate(specs):
            head = build_head(
                spec,
                feature_shape=payload["raw_shapes"][c],
                pool=payload["pool"],
                num_classes=payload["num_classes"],
            )
            head.load_state_dict(payload["states"][f"{c},{h}"])
            heads[(c, h)] = head.eval()
            acc[c, h], epoch[c, h] = (
                payload["holdout_accuracy"][f"{c},{h}"],
                payload["best_epoch"][f"{c},{h}"],
            )
    return TrainedHeads(
        key=key,
        path=path,
        candidate_names=tuple(payload["points"]),
        head_names=tuple(s.name for s in specs),
        heads=heads,
        holdout_accuracy=acc,
        best_epoch=epoch,
    )


def load_heads(path: Path) -> dict[tuple[int, int], ExitHead]:
    """Heads saved by :func:`train_heads` (the cache folder or its heads.pt), in eval mode.

    A folder is checked against its manifest first; a damaged one raises ValueError.
    """
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    if read_entry(folder) is None:
        raise ValueError(f"trained heads at {path} are missing or corrupt; rerun to retrain them")
    return dict(_load(folder / _FILE, key=folder.name).heads)
