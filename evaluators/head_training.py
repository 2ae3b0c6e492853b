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

_VERSION = 2  # 2: heads of one kind and feature shape are trained stacked
_FILE = "heads.pt"
_EVAL_CHUNK = 4096
_CPU_RESIDENT_BYTES = 2 * 2**30  # train features held in memory (not gathered per step) below this
_GPU_RESIDENT_SHARE = 0.5  # ... or below this share of the GPU's free memory
_STACKED_KINDS = frozenset({"linear", "mlp", "conv"})  # kinds _stacked_forward knows


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


def _resident(nbytes: int, device: torch.device) -> bool:
    """Whether ``nbytes`` of train features are copied to ``device`` once (not per step)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return nbytes <= _GPU_RESIDENT_SHARE * free
    return nbytes <= _CPU_RESIDENT_BYTES


def _to_device(arrays: Sequence[NDArray[Any]], device: torch.device) -> Tensor:
    """``(G, N, ...)`` fp16 stack of same-shaped arrays on ``device``, copied in chunks of rows.

    On a GPU each chunk goes through one of two pinned buffers: one host copy out of the
    memory map, then a copy to the device that overlaps the next chunk's host copy.
    """
    out = torch.empty((len(arrays), *arrays[0].shape), dtype=torch.float16, device=device)
    rows = max(1, (64 * 2**20) // max(1, arrays[0][:1].nbytes))
    pinned = device.type == "cuda"
    buffers = [
        torch.empty((rows, *arrays[0].shape[1:]), dtype=torch.float16, pin_memory=pinned)
        for _ in range(2 if pinned else 1)
    ]
    done: list[Any] = [None] * len(buffers)
    chunks = [(g, start) for g, arr in enumerate(arrays) for start in range(0, len(arr), rows)]
    for k, (g, start) in enumerate(chunks):
        slot = k % len(buffers)
        if done[slot] is not None:
            done[slot].synchronize()  # its last copy to the device has finished
        rows_here = min(rows, len(arrays[g]) - start)
        host = buffers[slot][:rows_here]
        np.copyto(host.numpy(), arrays[g][start : start + rows_here], casting="same_kind")
        out[g, start : start + rows_here].copy_(host, non_blocking=pinned)
        if pinned:
            done[slot] = torch.cuda.Event()  # type: ignore[no-untyped-call]
            done[slot].record()
    return out


class _Inputs:
    """Normalised float32 train features of chosen samples, ``(G, n, ...)`` per shape group.

    Per-channel mean and std come from the fitted part of train (float64 sums). With the
    features resident on the device a step gathers rows there; otherwise it gathers them
    from the memory maps and copies the batch over.
    """

    def __init__(
        self,
        store: FeatureStore,
        groups: Sequence[tuple[int, ...]],
        fit: NDArray[np.int64],
        device: torch.device,
    ) -> None:
        self.device = device
        self.arrays = [[store.features("train", store.points[c]) for c in g] for g in groups]
        nbytes = sum(a.nbytes for g in self.arrays for a in g)
        self.data: list[Tensor] | None = None
        if _resident(nbytes, device):
            self.data = [_to_device(g, device) for g in self.arrays]
        self.mean: list[Tensor] = []
        self.std: list[Tensor] = []
        fit_t = torch.from_numpy(fit).to(device)
        for i in range(len(groups)):
            mean, std = self._channel_stats(i, fit, fit_t)
            view = (mean.shape[0], 1, mean.shape[1]) + (1,) * (len(self.arrays[i][0].shape) - 2)
            self.mean.append(mean.view(view))
            self.std.append(std.view(view))

    def _rows(self, group: int, idx: NDArray[np.int64], idx_t: Tensor) -> Tensor:
        """Raw fp16 rows ``idx`` of each candidate of ``group``: ``(G, n, ...)`` on the device."""
        if self.data is not None:
            return self.data[group].index_select(1, idx_t)
        stacked = np.stack([np.asarray(a[idx]) for a in self.arrays[group]])
        return torch.from_numpy(stacked).to(self.device)

    def _channel_stats(
        self, group: int, fit: NDArray[np.int64], fit_t: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Per-candidate, per-channel mean and std ``(G, C)`` over samples and positions."""
        sums: Tensor | float = 0.0
        squares: Tensor | float = 0.0
        count = 0
        rows = max(1, _EVAL_CHUNK // len(self.arrays[group]))  # bounded float64 temporaries
        for start in range(0, len(fit), rows):
            end = start + rows
            x = self._rows(group, fit[start:end], fit_t[start:end])
            x = x.double().reshape(x.shape[0], x.shape[1], x.shape[2], -1)  # (G, n, C, positions)
            sums = sums + x.sum(dim=(1, 3))
            squares = squares + (x * x).sum(dim=(1, 3))
            count += x.shape[1] * x.shape[3]
        mean = torch.as_tensor(sums) / count
        std = (torch.as_tensor(squares) / count - mean * mean).clamp_min(0).sqrt()
        return mean.float(), torch.where(std > 1e-6, std, torch.ones_like(std)).float()

    def __call__(self, idx: NDArray[np.int64], idx_t: Tensor | None = None) -> list[Tensor]:
        """Rows ``idx`` of every shape group; ``idx_t`` is ``idx`` already on the device."""
        if idx_t is None:
            idx_t = torch.from_numpy(idx).to(self.device)
        return [
            self._rows(g, idx, idx_t).float().sub_(self.mean[g]).div_(self.std[g])
            for g in range(len(self.arrays))
        ]


def _stacked_forward(spec: HeadSpec, params: Mapping[str, Tensor], x: Tensor) -> Tensor:
    """``(G, n, K)`` outputs of G heads of kind ``spec`` on ``(G, n, C, positions)`` features.

    The forward of :mod:`evaluators.heads` (pooled features in, each ``nn.Linear`` as
    ``x @ W.T + b``), batched over the G heads with one ``baddbmm`` per layer: a handful of
    kernel launches for the whole group, where ``torch.vmap`` costs several times that in
    Python per call. tests/evaluators/test_head_stacking.py checks it against the modules.
    """
    g, n, channels, positions = x.shape

    def linear(name: str, inp: Tensor) -> Tensor:
        weight, bias = params[f"{name}.weight"], params[f"{name}.bias"]
        return torch.baddbmm(bias.unsqueeze(1), inp, weight.transpose(1, 2))

    if spec.kind == "linear":
        return linear("fc", x.flatten(2) if spec.flatten else x.mean(dim=3))
    if spec.kind == "mlp":
        return linear("fc2", F.relu(linear("fc1", x.flatten(2))))
    # conv: the same linear map (a 1x1 convolution) at every position, then their mean
    per_position = x.transpose(2, 3).reshape(g, n * positions, channels)
    hidden = F.relu(linear("conv", per_position)).reshape(g, n, positions, -1)
    return linear("fc", hidden.mean(dim=2))


class _Stack:
    """The heads of one group as one forward ``(G, n, ...) -> (G, n, K)`` and its parameters.

    Several heads are stacked (``stack_module_state``) and run by :func:`_stacked_forward`;
    a lone head is called as it is, on its own parameters.
    """

    def __init__(self, modules: Sequence[ExitHead], *, inputs: int) -> None:
        self.inputs = inputs  # which shape group feeds it
        self._module: ExitHead | None = modules[0] if len(modules) == 1 else None
        if self._module is not None:
            self.params = dict(self._module.named_parameters())
            self.buffers = dict(self._module.named_buffers())
            return
        self.params, self.buffers = torch.func.stack_module_state(list(modules))
        head = modules[0]
        self._spec, self._geometry = head.spec, (head.channels, head.positions)

    def __call__(self, x: Tensor) -> Tensor:
        if self._module is not None:
            out: Tensor = self._module(x[0])
            return out.unsqueeze(0)
        return _stacked_forward(self._spec, self.params, x.reshape(*x.shape[:2], *self._geometry))

    def state(self, i: int) -> dict[str, Tensor]:
        """The ``i``-th head's state dict (a copy)."""
        if self._module is not None:
            return {k: v.detach().clone() for k, v in self._module.state_dict().items()}
        return {k: v[i].detach().clone() for k, v in {**self.params, **self.buffers}.items()}


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
