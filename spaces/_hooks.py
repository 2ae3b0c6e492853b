"""Forward-hook profiling for models torch.fx cannot trace.

One real forward pass under one MAC counter; every module call that finishes
is a unit whose MACs are those counted since the previous unit finished, so
cumulative MACs at a listed module are exact. Parameters are attributed to the
first call of the module that owns them directly; working sets are module
input+output elements (functional ops outside modules are not seen).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from evaluators.graph import ModelInputError
from evaluators.macs import eval_mode, mac_counter
from spaces._units import Point, Units


class _ListedModuleError(ValueError):
    """A listed module that cannot be a candidate (runs twice, or yields no single tensor)."""


def _elems(value: Any) -> int:
    return sum(t.numel() for t in tree_leaves(value) if isinstance(t, torch.Tensor))


class _Recorder:
    """Collects units and listed-module outputs during one forward pass."""

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        self.paths: dict[nn.Module, str] = {}
        for path, module in model.named_modules(remove_duplicate=False):
            self.paths.setdefault(module, path)
        self.root = model
        self.listed = set(names)
        self.counter = mac_counter()
        self.macs: list[int] = []
        self.params: list[int] = []
        self.io: list[int] = []
        self.points: list[Point] = []
        self.seen_params: set[int] = set()
        self.pending = 0
        self.flops_at_last = 0

    def pre(self, module: nn.Module, args: Any) -> None:
        fresh = [p for p in module.parameters(recurse=False) if id(p) not in self.seen_params]
        self.seen_params.update(id(p) for p in fresh)
        self.pending += sum(p.numel() for p in fresh)

    def post(self, module: nn.Module, args: Any, output: Any) -> None:
        flops = self.counter.get_total_flops()
        self.macs.append((flops - self.flops_at_last) // 2)
        self.flops_at_last = flops
        self.params.append(self.pending)
        self.pending = 0
        self.io.append(0 if module is self.root else _elems(args) + _elems(output))
        path = self.paths[module]
        if path in self.listed:
            self._point(path, output)

    def _point(self, path: str, output: Any) -> None:
        if any(p.name == path for p in self.points):
            raise _ListedModuleError(
                f"model.candidates.modules: module {path!r} runs more than once per forward; "
                "list a module that runs once"
            )
        if not isinstance(output, torch.Tensor) or output.dim() < 1 or output.shape[0] != 1:
            raise _ListedModuleError(
                f"model.candidates.modules: module {path!r} does not output one batched tensor; "
                "list a module whose output is a single tensor"
            )
        shape = tuple(int(d) for d in output.shape[1:])
        self.points.append(
            Point(name=path, kind="module", position=len(self.macs) - 1, shape=shape)
        )


def hooked_units(
    model: nn.Module, sample: torch.Tensor, names: Sequence[str]
) -> tuple[Units, list[Point]]:
    """Units and listed-module points from one hooked forward pass on ``sample`` (batch 1)."""
    rec = _Recorder(model, names)
    handles = []
    for module in rec.paths:
        handles.append(module.register_forward_pre_hook(rec.pre))
        handles.append(module.register_forward_hook(rec.post))
    try:
        with eval_mode(model), torch.no_grad(), rec.counter:
            try:
                output = model(sample)
            except _ListedModuleError:
                raise
            except Exception as err:
                line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise ModelInputError(
                    f"example input of shape {tuple(sample.shape)} does not fit "
                    f"{type(model).__name__} ({line}); set input_shape in the model config to "
                    "the shape the model expects (without the batch dimension)"
                ) from err
    finally:
        for handle in handles:
            handle.remove()
    if not isinstance(output, torch.Tensor):
        raise ModelInputError(
            f"{type(model).__name__} returns {type(output).__name__}, not a tensor; make forward "
            "return the logits tensor (wrap the model) to search exits"
        )
    missing = [n for n in names if n not in {p.name for p in rec.points}]
    if missing:
        raise ValueError(f"model.candidates.modules: {missing} never ran in forward; remove them")
    units = Units.of(rec.macs, rec.params, rec.io).with_output(tuple(output.shape[1:]))
    return units, sorted(rec.points, key=lambda p: p.position)
