"""Backbone wrappers returning ``(logits, *pooled candidate activations)`` in one forward.

For ``kind="node"`` an fx graph whose extra outputs are the candidate nodes,
pooled right after each node (before any later in-place op can change it);
for ``kind="module"`` forward hooks on named submodules. Also the batches such
a wrapper reads (normalised on the device they run on) and the arithmetic it
runs in (:func:`precision_mode`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from torch import Tensor, fx, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from evaluators._pool import FeatureCacheError, pool_features
from evaluators.data import ArrayDataset
from evaluators.graph import trace

__all__ = [
    "PRECISIONS",
    "HookExtractor",
    "build_extractor",
    "iter_batches",
    "precision_mode",
    "probe",
    "resolve_precision",
]

# fp32: IEEE float32 throughout (TF32 off); tf32: float32 tensors, TF32 matrix units on a
# CUDA GPU; bf16 / fp16: autocast; auto: bf16 on a CUDA GPU (fp16 where it lacks bf16), fp32 else
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "tf32", "bf16", "fp16")
_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(name: str, device: torch.device, *, key: str) -> str:
    """The arithmetic ``name`` stands for on ``device``: fp32, tf32, bf16 or fp16.

    ``auto`` picks bf16 on a CUDA GPU (fp16 on one without bf16) and fp32 on a CPU; tf32 off
    a CUDA GPU is fp32 (no TF32 units there). ``key`` names the setting in the error.
    """
    if name not in PRECISIONS:
        raise FeatureCacheError(
            f"{key}={name!r} is not a precision; use one of {', '.join(PRECISIONS)}"
        )
    if name == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if name == "tf32" and device.type != "cuda":
        return "fp32"
    return name


@contextmanager
def precision_mode(
    precision: str, device: torch.device, *, autotune: bool = False
) -> Iterator[None]:
    """Run the enclosed forward passes in ``precision`` (a resolved name) on ``device``.

    On a CUDA GPU the TF32 switches of cuDNN and cuBLAS are set (off for fp32, on
    otherwise), and with ``autotune`` cuDNN times its algorithms for every new input shape
    (worth it only when many batches share a shape); all are restored on exit. bf16 and
    fp16 autocast.
    """
    with ExitStack() as stack:
        if device.type == "cuda":
            tf32 = precision != "fp32"
            stack.enter_context(
                torch.backends.cudnn.flags(
                    enabled=True,
                    benchmark=autotune,
                    deterministic=torch.backends.cudnn.deterministic,
                    allow_tf32=tf32,
                )
            )
            matmul = torch.backends.cuda.matmul
            stack.callback(setattr, matmul, "allow_tf32", matmul.allow_tf32)
            matmul.allow_tf32 = tf32
        if precision in _AUTOCAST:
            stack.enter_context(torch.autocast(device.type, dtype=_AUTOCAST[precision]))
        yield


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


def iter_batches(
    dataset: Dataset[Any], batch_size: int, *, device: torch.device | None = None
) -> Iterator[tuple[Tensor, Tensor]]:
    """``(x, y)`` batches in dataset order: ``x`` on ``device`` (default: as stored), ``y`` on CPU.

    An :class:`~evaluators.data.ArrayDataset` is sliced raw (e.g. uint8 images), moved, and
    normalised there in one batched step with the same float32 formula as one sample; a
    TensorDataset is sliced; anything else goes through a DataLoader.
    """
    if isinstance(dataset, ArrayDataset):
        for start in range(0, len(dataset), batch_size):
            raw = dataset.inputs[start : start + batch_size]
            if device is not None:
                raw = raw.to(device, non_blocking=True)
            yield dataset.normalise(raw), dataset.labels[start : start + batch_size]
        return
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) >= 2:
        xs, ys = dataset.tensors[0], dataset.tensors[1]
        for start in range(0, len(xs), batch_size):
            x = xs[start : start + batch_size]
            yield (x if device is None else x.to(device)), ys[start : start + batch_size]
        return
    for x, y in DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0):
        x = torch.as_tensor(x)
        yield (x if device is None else x.to(device)), torch.as_tensor(y)


def probe(
    extractor: nn.Module, dataset: Dataset[Any], device: torch.device
) -> list[tuple[int, ...]]:
    """Output shapes (no batch) of ``(logits, *raw activations)`` on one sample."""
    x, _ = next(iter_batches(dataset, 1, device=device))
    with torch.inference_mode():
        outs = extractor(x.float())
    if not isinstance(outs[0], Tensor) or outs[0].dim() != 2:
        raise FeatureCacheError("the backbone must return one (B, num_classes) logits tensor")
    return [tuple(o.shape[1:]) for o in outs]
