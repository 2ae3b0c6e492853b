"""Backbone wrappers returning ``(logits, *pooled candidate activations)`` in one forward.

For ``kind="node"`` an fx graph whose extra outputs are the candidate nodes,
pooled right after each node (before any later in-place op can change it);
for ``kind="module"`` forward hooks on named submodules.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, fx, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from evaluators._pool import FeatureCacheError, pool_features
from evaluators.graph import trace

__all__ = ["HookExtractor", "build_extractor", "iter_batches", "probe"]


def _snapshot(x: Tensor, pool: int | None) -> Tensor:
    """The pooled activation as a tensor of its own, safe from later in-place ops."""
    if pool is None:
        return x.detach().clone()
    pooled = pool_features(x, pool)
    return pooled.clone() if pooled is x else pooled


class HookExtractor(nn.Module):
    """Returns ``(logits, *features)`` captured by forward hooks on named submodules."""

    def __init__(self, model: nn.Module, points: Sequence[str], pool: int | None) -> None:
        super().__init__()
        self.model = model
        self.points = tuple(points)
        self.pool = pool
        self._seen: dict[str, Tensor] = {}
        self._handles: list[Any] = []
        for point in self.points:
            try:
                module = model.get_submodule(point)
            except AttributeError:
                raise FeatureCacheError(
                    f"candidate module {point!r} is not a submodule of {type(model).__name__}; "
                    "fix model.candidates.modules (dotted paths from named_modules())"
                ) from None
            self._handles.append(module.register_forward_hook(self._hook(point)))

    def remove(self) -> None:
        """Detach the hooks from the model."""
        for handle in self._handles:
            handle.remove()

    def _hook(self, point: str) -> Any:
        def hook(_module: nn.Module, _args: Any, output: Any) -> None:
            if not isinstance(output, Tensor):
                raise FeatureCacheError(
                    f"candidate module {point!r} returns {type(output).__name__}, not a tensor"
                )
            self._seen[point] = _snapshot(output, self.pool)

        return hook

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        self._seen.clear()
        logits = self.model(x)
        return (logits, *(self._seen[p] for p in self.points))


def _graph_extractor(model: nn.Module, points: Sequence[str], pool: int | None) -> fx.GraphModule:
    """fx graph of ``model`` whose output is ``(logits, *pooled candidate nodes)``."""
    gm = trace(model)
    graph = gm.graph
    nodes = {n.name: n for n in graph.nodes}
    for point in points:
        if point not in nodes:
            raise FeatureCacheError(
                f"candidate {point!r} is not a node of the fx graph of {type(model).__name__}; "
                f"use node names from evaluators.graph.trace (e.g. {list(nodes)[1:4]})"
            )
    outs = []
    for point in points:  # pool right after the node, before any later in-place op can touch it
        with graph.inserting_after(nodes[point]):
            outs.append(graph.call_function(_snapshot, (nodes[point], pool)))
    output = next(n for n in graph.nodes if n.op == "output")
    output.args = ((output.args[0], *outs),)
    graph.lint()
    gm.recompile()
    return gm


def build_extractor(
    model: nn.Module, points: Sequence[str], kind: str, pool: int | None
) -> nn.Module:
    if kind == "node":
        return _graph_extractor(model, points, pool).eval()
    if kind == "module":
        return HookExtractor(model, points, pool).eval()
    raise FeatureCacheError(f"candidate kind={kind!r} is not 'node' or 'module'")


def iter_batches(dataset: Dataset[Any], batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
    """``(x, y)`` batches in dataset order; a TensorDataset is sliced without a DataLoader."""
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) >= 2:
        xs, ys = dataset.tensors[0], dataset.tensors[1]
        for start in range(0, len(xs), batch_size):
            yield xs[start : start + batch_size], ys[start : start + batch_size]
        return
    for x, y in DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0):
        yield torch.as_tensor(x), torch.as_tensor(y)


def probe(
    extractor: nn.Module, dataset: Dataset[Any], device: torch.device
) -> list[tuple[int, ...]]:
    """Output shapes (no batch) of ``(logits, *raw activations)`` on one sample."""
    x, _ = next(iter_batches(dataset, 1))
    with torch.inference_mode():
        outs = extractor(x.float().to(device))
    if not isinstance(outs[0], Tensor) or outs[0].dim() != 2:
        raise FeatureCacheError("the backbone must return one (B, num_classes) logits tensor")
    return [tuple(o.shape[1:]) for o in outs]
