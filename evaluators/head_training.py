"""Batched training of every head at every candidate on the cached train features.

On a GPU, heads of one kind at candidates whose features have one shape form a group:
their parameters are stacked (``torch.func.stack_module_state``) and the group runs as
a few batched matrix products per step instead of a few small ones per head (on a CPU
each head runs alone). The loss is the sum of every head's mean loss, so one backward
trains the whole family, and a head's gradient depends on its own loss alone: grouping
changes float rounding, nothing else. A held-out part of ``train`` (never ``val``)
early-stops each head on its own: a head keeps its best state (lowest held-out loss)
among the epochs before its patience ran out; a group leaves the loss once all its
heads have stopped. The train features are copied to the training device once when
they fit (see :class:`_Inputs`), else gathered from the memory-mapped cache per step.
Trained heads are saved atomically in the cache, keyed by the train features, the
family and the seed, and reused on a re-run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import Tensor
from tqdm.auto import tqdm

from evaluators._cache import commit_entry, ensure_writable, read_entry, reset_entry
from evaluators._head_batches import _EVAL_CHUNK, _STACKED_KINDS, _Inputs, _Stack
from evaluators.device import resolve_device
from evaluators.features import FeatureStore
from evaluators.hashing import hash_json
from evaluators.heads import ExitHead, HeadFamily, HeadSpec, HeadTraining, build_head

__all__ = ["TrainedHeads", "heads_key", "load_heads", "train_heads"]

_VERSION = 2  # 2: heads of one kind and feature shape are trained stacked
_FILE = "heads.pt"


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


def _shape_groups(
    store: FeatureStore, kinds: Iterable[str], *, stack: bool
) -> list[tuple[int, ...]]:
    """Candidate indices grouped by the shape of their stored features (``stack``), else alone.

    Stacking pays where launches cost more than arithmetic (a GPU); on a CPU the heads
    run one by one, as fast and bit for bit the modules' own forward.
    """
    if not stack or not _STACKED_KINDS.issuperset(kinds):
        return [(c,) for c in range(len(store.points))]
    groups: dict[tuple[int, ...], list[int]] = {}
    for c, point in enumerate(store.points):
        groups.setdefault(tuple(store.shapes[point]), []).append(c)
    return [tuple(cands) for cands in groups.values()]


def _holdout_scores(stack: _Stack, x: Tensor, y: Tensor) -> list[tuple[float, float]]:
    """(loss, accuracy) on the held-out samples of each head of ``stack``, in float32."""
    with torch.no_grad():
        out = torch.cat(
            [stack(x[:, i : i + _EVAL_CHUNK]) for i in range(0, len(y), _EVAL_CHUNK)], dim=1
        ).float()
    return [(F.cross_entropy(o, y).item(), (o.argmax(1) == y).float().mean().item()) for o in out]


def _bf16_supported(device: torch.device) -> bool:
    """Whether bf16 matrix products are native (and hence faster) on ``device``."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    mkldnn = torch.backends.mkldnn.is_available()  # type: ignore[no-untyped-call]
    return bool(mkldnn and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _stacks(
    heads: Mapping[tuple[int, int], ExitHead], shape_groups: Sequence[tuple[int, ...]]
) -> list[tuple[list[tuple[int, int]], _Stack]]:
    """(head keys, stack) for each head kind at each shape group."""
    n_heads = 1 + max(h for _, h in heads)
    out = []
    for h in range(n_heads):
        for g, cands in enumerate(shape_groups):
            keys = [(c, h) for c in cands]
            out.append((keys, _Stack([heads[k] for k in keys], inputs=g)))
    return out


def _scheduler(
    opt: torch.optim.Optimizer, cfg: HeadTraining, steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """One-cycle learning rate; a constant one when there are too few steps for two phases."""
    if steps >= 8:  # OneCycleLR divides by its phase lengths
        return torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=cfg.lr, total_steps=steps, pct_start=0.25
        )
    return torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)


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
    kinds = {head.spec.kind for head in heads.values()}
    shape_groups = _shape_groups(store, kinds, stack=device.type == "cuda")
    inputs = _Inputs(store, shape_groups, fit, device)
    stacks = _stacks(heads, shape_groups)
    hold_x, hold_y = inputs(hold), torch.from_numpy(labels[hold]).to(device)
    labels_t = torch.from_numpy(labels.copy()).to(device)
    opt = torch.optim.AdamW(
        [p for _, stack in stacks for p in stack.params.values()],
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        fused=True,  # one kernel for all heads' parameters (CPU and CUDA)
    )
    sched = _scheduler(opt, cfg, cfg.epochs * -(-len(fit) // cfg.batch_size))
    amp = cfg.amp and _bf16_supported(device)
    active = set(heads)
    best: dict[tuple[int, int], dict[str, Tensor]] = {}
    record: dict[tuple[int, int], tuple[int, float]] = {}
    best_loss, waited = dict.fromkeys(heads, float("inf")), dict.fromkeys(heads, 0)
    for epoch in tqdm(
        range(cfg.epochs), desc="heads", unit="epoch", disable=not progress, leave=False
    ):
        live = [(keys, stack) for keys, stack in stacks if active.intersection(keys)]
        shuffled = rng.permutation(fit)
        for start in range(0, len(shuffled), cfg.batch_size):
            idx = np.sort(shuffled[start : start + cfg.batch_size])
            # no host-device synchronisation in a step: indices go over without waiting
            idx_t = torch.from_numpy(idx).to(device, non_blocking=True)
            xs, y = inputs(idx, idx_t), labels_t.index_select(0, idx_t)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                out = torch.cat([stack(xs[stack.inputs]) for _, stack in live])  # (heads, n, K)
            # the sum of every head's mean loss: one backward trains them all
            loss = F.cross_entropy(out.float().flatten(0, 1), y.repeat(out.shape[0])) * len(out)
            opt.zero_grad(set_to_none=True)
            torch.autograd.backward(loss)
            opt.step()
            sched.step()
        for keys, stack in live:
            scores = _holdout_scores(stack, hold_x[stack.inputs], hold_y)
            for i, (key, (loss_h, acc_h)) in enumerate(zip(keys, scores, strict=True)):
                if key not in active:
                    continue
                if loss_h < best_loss[key]:
                    best_loss[key], waited[key], best[key] = loss_h, 0, stack.state(i)
                    record[key] = (epoch, acc_h)
                else:
                    waited[key] += 1
        active = {key for key in active if waited[key] < cfg.patience}
        if not active:
            break
    for keys, stack in stacks:
        for i, key in enumerate(keys):
            # a head whose held-out loss was never finite keeps its last state
            heads[key].load_state_dict(best[key] if key in best else stack.state(i))
            mean, std = inputs.mean[stack.inputs][i], inputs.std[stack.inputs][i]
            heads[key].absorb_normalization(mean.reshape(-1), std.reshape(-1))
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
        dev = resolve_device(device)
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
