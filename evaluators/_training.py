"""Supervised training of a backbone from a ``model.train`` recipe, and top-1 accuracy.

Seeded end to end (weights, shuffling, augmentation), so a CPU run is bit-identical; used by
:mod:`evaluators.backbone` when no checkpoint is given.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from evaluators._config import Group
from evaluators.data import DataSplits

__all__ = ["BackboneError", "TrainRecipe", "accuracy", "train"]


class BackboneError(RuntimeError):
    """The backbone cannot be loaded, trained or cached; the message names the file and the fix."""


@dataclass(frozen=True, kw_only=True)
class TrainRecipe:
    """``model.train``: how to train the backbone when no checkpoint is given.

    ``augment_shift`` translates each training sample by up to that many steps along its last
    one or two dimensions (image pixels, ECG samples); keep it 0 where that makes no sense.
    ``cpu_threads`` fixes torch's intra-op threads while training on the CPU: a fixed count keeps
    runs bit-identical, and one thread is several times faster than two on a shared, busy
    machine (OpenMP threads wait on each other); 0 keeps torch's default.
    """

    epochs: int = 10
    lr: float = 0.01
    batch_size: int = 64
    optimizer: str = "adamw"  # adamw | adam | sgd
    weight_decay: float = 5e-4
    momentum: float = 0.9  # sgd only
    schedule: str = "onecycle"  # onecycle | cosine | constant
    label_smoothing: float = 0.1
    augment_shift: int = 0
    cpu_threads: int = 1

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> TrainRecipe:
        """Read ``model.train``; unknown keys and bad values are one-line errors."""
        g = Group.of("model.train", cfg, error=BackboneError)
        g.check_keys(f.name for f in fields(cls))
        d = cls()
        return cls(
            epochs=g.integer("epochs", d.epochs, low=1),
            lr=g.number("lr", d.lr, above=0.0),
            batch_size=g.integer("batch_size", d.batch_size, low=1),
            optimizer=g.text("optimizer", d.optimizer, choices=("adamw", "adam", "sgd")),
            weight_decay=g.number("weight_decay", d.weight_decay, low=0.0),
            momentum=g.number("momentum", d.momentum, low=0.0),
            schedule=g.text("schedule", d.schedule, choices=("onecycle", "cosine", "constant")),
            label_smoothing=g.number("label_smoothing", d.label_smoothing, low=0.0, below=1.0),
            augment_shift=g.integer("augment_shift", d.augment_shift, low=0),
            cpu_threads=g.integer("cpu_threads", d.cpu_threads, low=0),
        )


def accuracy(
    model: nn.Module, dataset: Dataset[Any], *, device: torch.device, batch_size: int = 512
) -> float:
    """Top-1 accuracy of ``model`` on ``dataset`` (model in eval mode, no gradients)."""
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in DataLoader(dataset, batch_size=batch_size):
            pred = model(x.to(device)).argmax(dim=1).cpu()
            correct += int((pred == y).sum())
            total += len(y)
    return correct / max(total, 1)


def _shift(x: torch.Tensor, steps: int, gen: torch.Generator) -> torch.Tensor:
    """Shift each sample by its own random offset in [-steps, steps] along its last 1-2 dims."""
    n, c, *spatial = x.shape
    if steps <= 0 or len(spatial) not in (1, 2):
        return x
    offsets = torch.randint(0, 2 * steps + 1, (n, len(spatial)), generator=gen).to(x.device)
    padded = F.pad(x, (steps, steps) * len(spatial), mode="replicate").reshape(n, c, -1)
    flat = offsets[:, -1:] + torch.arange(spatial[-1], device=x.device)  # (n, W)
    if len(spatial) == 2:
        rows = offsets[:, :1] + torch.arange(spatial[0], device=x.device)  # (n, H)
        flat = (rows[:, :, None] * (spatial[1] + 2 * steps) + flat[:, None, :]).reshape(n, -1)
    return padded.gather(2, flat[:, None, :].expand(n, c, -1)).reshape(x.shape)


def _optimizer(
    model: nn.Module, recipe: TrainRecipe, steps: int
) -> tuple[torch.optim.Optimizer, Any]:
    params = model.parameters()
    if recipe.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(
            params,
            lr=recipe.lr,
            momentum=recipe.momentum,
            weight_decay=recipe.weight_decay,
            nesterov=True,
        )
    elif recipe.optimizer == "adam":
        opt = torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    else:
        opt = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    if recipe.schedule == "onecycle" and steps >= 8:  # fewer steps: no room for two phases
        return opt, torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=steps)
    if recipe.schedule == "cosine":
        return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    return opt, torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)


def train(
    model: nn.Module,
    data: DataSplits,
    recipe: TrainRecipe,
    *,
    seed: int,
    device: torch.device,
    desc: str = "training",
) -> None:
    """Fit ``model`` on ``data.train`` with ``recipe``; seeded (bit-identical on CPU)."""
    threads = torch.get_num_threads()
    if device.type == "cpu" and recipe.cpu_threads > 0:
        torch.set_num_threads(recipe.cpu_threads)
    try:
        _fit(model, data, recipe, seed=seed, device=device, desc=desc)
    finally:
        torch.set_num_threads(threads)
    model.eval()


def _fit(
    model: nn.Module,
    data: DataSplits,
    recipe: TrainRecipe,
    *,
    seed: int,
    device: torch.device,
    desc: str,
) -> None:
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(
        data.train,
        batch_size=recipe.batch_size,
        shuffle=True,
        generator=gen,
        drop_last=len(data.train) > recipe.batch_size,  # type: ignore[arg-type]
    )
    opt, sched = _optimizer(model, recipe, recipe.epochs * len(loader))
    model.to(device).train()
    with tqdm(total=recipe.epochs * len(loader), desc=desc, unit="batch") as bar:
        for epoch in range(recipe.epochs):
            for x, y in loader:
                x = _shift(x.to(device), recipe.augment_shift, gen)
                loss = F.cross_entropy(
                    model(x), y.to(device), label_smoothing=recipe.label_smoothing
                )
                opt.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[no-untyped-call]
                opt.step()
                sched.step()
                bar.update()
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}")
