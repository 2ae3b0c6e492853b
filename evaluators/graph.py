"""torch.fx tracing shared by candidate discovery, feature extraction and the runtime.

Every stage names a cut point by the node name that :func:`trace` gives it, so
one tracer (the default ``torch.fx`` one, whose leaf modules and node names
:func:`trace` keeps unchanged) is used everywhere. :func:`node_stats` runs the
traced graph once on a real (or meta) tensor and records, per node, the output
shape, the MACs counted by :func:`evaluators.macs.mac_counter`, the parameters
it reads and the activation elements it touches.
"""

from __future__ import annotations

import contextlib
import io
import math
import sys
from dataclasses import dataclass
from functools import reduce
from typing import Any

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

from evaluators.macs import eval_mode, mac_counter

__all__ = ["ModelInputError", "NodeStats", "UntraceableModelError", "node_stats", "trace"]


class UntraceableModelError(RuntimeError):
    """torch.fx cannot trace the model; the message names the way out."""


class ModelInputError(ValueError):
    """The example input does not fit the model, or the model does not return a tensor."""


class _PathTracer(fx.Tracer):
    """The default tracer, remembering the innermost module whose trace failed."""

    def __init__(self) -> None:
        super().__init__()
        self.failed_at: str | None = None

    def call_module(self, m: nn.Module, forward: Any, args: Any, kwargs: Any) -> Any:
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_at is None:
                self.failed_at = f"{self.path_of_module(m)} ({type(m).__name__})"
            raise


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def trace(model: nn.Module) -> fx.GraphModule:
    """Symbolically trace ``model`` (in eval mode) with torch.fx's default tracer.

    Same graph and node names as ``torch.fx.symbolic_trace``; on failure the
    error names the innermost module that could not be traced.
    """
    tracer = _PathTracer()
    with eval_mode(model):
        try:
            graph = tracer.trace(model)
        except Exception as err:  # fx raises many types; all mean "not traceable"
            where = f" in module {tracer.failed_at}" if tracer.failed_at else ""
            raise UntraceableModelError(
                f"torch.fx cannot trace {type(model).__name__}{where}: {_first_line(err)}; "
                "list exit points in model.candidates.modules (module paths) to use forward "
                "hooks instead"
            ) from err
    return fx.GraphModule(tracer.root, graph, type(model).__name__)


@dataclass(frozen=True, kw_only=True)
class NodeStats:
    """Figures of one fx node for a batch of one sample.

    ``shape`` is the output shape without the batch dimension when the node
    yields a single tensor with the input's batch size, else ``None``.
    ``param_elems`` counts the parameters (call_module) or tensor (get_attr)
    the node reads for the first time in the graph, so shared weights count
    once. ``io_elems`` is the activation elements it reads and writes
    (weights excluded): the working set of the op.
    """

    name: str
    op: str
    index: int
    shape: tuple[int, ...] | None
    macs: int
    param_elems: int
    io_elems: int


def _numel(meta: Any) -> int:
    """Elements of the tensor(s) ShapeProp recorded (TensorMetadata is itself a tuple)."""
    if isinstance(meta, TensorMetadata):
        return math.prod(meta.shape)
    if isinstance(meta, (list, tuple)):
        return sum(_numel(m) for m in meta)
    if isinstance(meta, dict):
        return sum(_numel(m) for m in meta.values())
    return 0


class _CountingShapeProp(ShapeProp):
    """ShapeProp that also records the FLOPs of each node under one counter."""

    def __init__(self, module: fx.GraphModule) -> None:
        super().__init__(module)
        self.counter = mac_counter()
        self.flops: dict[str, int] = {}

    def run_node(self, n: fx.Node) -> Any:
        before = self.counter.get_total_flops()
        # ShapeProp prints a traceback before re-raising; keep stderr for the one-line error
        with contextlib.redirect_stderr(io.StringIO()) as captured:
            try:
                result = super().run_node(n)
            except Exception as err:
                raise _NodeFailure(n, err.__cause__ or err) from err
        sys.stderr.write(captured.getvalue())  # warnings the node emitted
        self.flops[n.name] = self.counter.get_total_flops() - before
        return result


class _NodeFailure(Exception):
    def __init__(self, node: fx.Node, err: BaseException) -> None:
        self.detail = f"{node.name}: {_first_line(err)}"  # str(self) gets fx's notes appended
        super().__init__(self.detail)


def _input_hint(gm: fx.GraphModule) -> str:
    """What the first module reading the input expects, e.g. '3 input channels'."""
    placeholder = next(n for n in gm.graph.nodes if n.op == "placeholder")
    for user in placeholder.users:
        if user.op == "call_module":
            mod = gm.get_submodule(str(user.target))
            if isinstance(mod, nn.modules.conv._ConvNd):
                return f"; its first layer {user.target!r} expects {mod.in_channels} input channels"
            if isinstance(mod, nn.Linear):
                return f"; its first layer {user.target!r} expects {mod.in_features} input features"
    return ""


def _run_profiled(gm: fx.GraphModule, example_input: torch.Tensor) -> _CountingShapeProp:
    """Run ``gm`` on one sample with shape propagation and per-node FLOP counting."""
    interp = _CountingShapeProp(gm)
    with eval_mode(gm), torch.no_grad(), interp.counter:
        try:
            interp.propagate(example_input[:1])
        except _NodeFailure as err:
            raise ModelInputError(
                f"example input of shape {tuple(example_input.shape)} does not fit "
                f"{gm.__class__.__name__} (node {err.detail}){_input_hint(gm)}; set input_shape "
                "in the model config to the shape the model expects (without the batch dimension)"
            ) from err
    return interp


def _param_elems(gm: fx.GraphModule, n: fx.Node, seen: set[int]) -> int:
    if n.op == "call_module":
        tensors: list[torch.Tensor] = list(gm.get_submodule(str(n.target)).parameters())
    elif n.op == "get_attr":
        attr = reduce(getattr, str(n.target).split("."), gm)
        tensors = [attr] if isinstance(attr, torch.Tensor) else []
    else:
        return 0
    fresh = [t for t in tensors if id(t) not in seen]
    seen.update(id(t) for t in fresh)
    return sum(t.numel() for t in fresh)


def node_stats(gm: fx.GraphModule, example_input: torch.Tensor) -> list[NodeStats]:
    """Per-node shape, MACs, parameters and working set, in execution order.

    Uses the first sample of ``example_input``. The MACs of all nodes sum to
    :func:`evaluators.macs.count_macs` of the same graph.
    """
    interp = _run_profiled(gm, example_input)
    seen: set[int] = set()
    stats = []
    for index, n in enumerate(gm.graph.nodes):
        meta = n.meta.get("tensor_meta")
        single = isinstance(meta, TensorMetadata) and len(meta.shape) > 0 and meta.shape[0] == 1
        reads = [] if n.op in ("placeholder", "get_attr", "output") else n.all_input_nodes
        io = _numel(meta) if n.op not in ("placeholder", "get_attr", "output") else 0
        io += sum(_numel(a.meta.get("tensor_meta")) for a in reads if a.op != "get_attr")
        stats.append(
            NodeStats(
                name=n.name,
                op=n.op,
                index=index,
                shape=tuple(int(d) for d in meta.shape[1:]) if single else None,
                macs=interp.flops.get(n.name, 0) // 2,
                param_elems=_param_elems(gm, n, seen),
                io_elems=io,
            )
        )
    return stats
