"""The real EENN: backbone segments, trained heads and the exit rule as one ``nn.Module``.

:func:`build_eenn` splits the backbone's torch.fx graph (:func:`evaluators.graph.trace`,
whose node names are the candidate names) at every active exit and every device
boundary into sub-GraphModules that share the original weights. Each
:class:`Stage` runs one such segment on one device and, if an exit sits at its
end, that exit's head; it returns ``(activation, logits)`` and holds no
decision, so it can be exported as is (:mod:`search.deploy.export`).

:meth:`EENN.forward` does true early exit at any batch size: after each head,
the samples whose confidence (:func:`evaluators.tables.exit_scores`, the
prediction table's own formula) is ``>=`` the float32 threshold leave the batch
and only the rest run the next segment. :meth:`EENN.run_pooled` is the
throughput mode over a stream of batches (what :func:`run_dataset` uses): the
samples that go on wait at the next stage until a full batch has gathered, so
deep segments do not run on a batch's few survivors.

Float32 CPU kernels (MKL/oneDNN GEMM and convolution) do not promise the same
bits for a sample in batches of different size or layout: a head's confidence
can differ from the table's in the last bit or two (~1e-8). A decision can only
flip for a sample whose confidence sits within that noise of a threshold. The
space puts each threshold halfway between two neighbouring val confidences
(``spaces._thresholds``), so on val that happens only where two val
confidences are themselves that close; test samples, and thresholds written by
hand, can sit anywhere. :func:`search.deploy.evaluate.compare_exits` counts such float32 ties
apart from real mismatches.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, cast

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor, fx, nn
from torch.utils.data import Dataset

from evaluators.eenn import METRICS, EENNConfig
from evaluators.features import iter_batches
from evaluators.graph import trace
from evaluators.tables import exit_scores
from spaces.candidates import ExitCandidate

__all__ = [
    "EENN",
    "EENNOutput",
    "RunRecord",
    "RuntimeBuildError",
    "Stage",
    "build_eenn",
    "run_dataset",
    "split_graph",
]


class RuntimeBuildError(ValueError):
    """The EENN cannot be assembled from this model, profile, heads and configuration."""


@dataclass(frozen=True, kw_only=True, eq=False)
class EENNOutput:
    """Per-sample results of one forward pass, in input order.

    ``exit`` is the index of the active exit taken, ``K`` (= number of active
    exits) for the backbone's classifier; ``device`` the platform device on
    which the sample finished; ``confidence`` its score under the config's
    metric at the exit it took.
    """

    prediction: Tensor  # (N,) int64
    exit: Tensor  # (N,) int64 in 0..K
    device: Tensor  # (N,) int64
    confidence: Tensor  # (N,) float32
    logits: Tensor  # (N, classes) float32


def _input_dependent(nodes: Sequence[fx.Node], source: fx.Node) -> set[fx.Node]:
    reached = {source}
    for n in nodes:
        if any(a in reached for a in n.all_input_nodes):
            reached.add(n)
    return reached


def _segment_graph(
    nodes: Sequence[fx.Node], pos: Mapping[fx.Node, int], start: fx.Node, end: fx.Node,
    depends: set[fx.Node],
) -> fx.Graph:
    """The nodes after ``start`` up to ``end`` as a graph with ``start`` as its one input.

    Input-free nodes from earlier segments (``get_attr``, constants) are copied
    in; an input-dependent value from before ``start`` means ``start`` is no cut.
    """
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {start: graph.placeholder(start.name)}

    def copy(n: fx.Node) -> fx.Node:
        if n not in env:
            if n.op == "placeholder" or (n in depends and not pos[start] < pos[n] <= pos[end]):
                raise RuntimeBuildError(
                    f"node {n.name!r} is used after cut point {start.name!r}; it is not a "
                    "single-tensor cut, so choose exits/boundaries at profiled candidates"
                )
            for a in n.all_input_nodes:
                copy(a)
            env[n] = graph.node_copy(n, lambda a: env[a])
        return env[n]

    stop = pos[end] if end.op == "output" else pos[end] + 1
    for n in nodes[pos[start] + 1 : stop]:
        if n.op != "placeholder" or n.users:
            copy(n)
    if end.op == "output":
        graph.output(fx.map_arg(end.args[0], copy))
    else:
        graph.output(env[end])
    graph.lint()
    return graph


def split_graph(gm: fx.GraphModule, cuts: Sequence[str]) -> list[fx.GraphModule]:
    """``len(cuts) + 1`` GraphModules, one per segment between consecutive cut nodes.

    Segment ``i`` takes the output of cut ``i-1`` (the model input for ``i=0``)
    and returns that of cut ``i`` (the model output for the last). Submodules
    and parameters are shared with ``gm``, not copied.
    """
    nodes = list(gm.graph.nodes)
    pos = {n: i for i, n in enumerate(nodes)}
    by_name = {n.name: n for n in nodes}
    unknown = [c for c in cuts if c not in by_name]
    if unknown:
        raise RuntimeBuildError(
            f"cut point(s) {unknown} are not nodes of the traced {gm.__class__.__name__}; "
            "the profile was made from another model"
        )
    cut_nodes = [by_name[c] for c in cuts]
    if [pos[n] for n in cut_nodes] != sorted({pos[n] for n in cut_nodes}):
        raise RuntimeBuildError(f"cut points {list(cuts)} are not distinct and in execution order")
    source = next(n for n in nodes if n.op == "placeholder")
    output = next(n for n in nodes if n.op == "output")
    depends = _input_dependent(nodes, source)
    starts, ends = [source, *cut_nodes], [*cut_nodes, output]
    return [
        fx.GraphModule(gm, _segment_graph(nodes, pos, s, e, depends), f"segment_to_{e.name}")
        for s, e in zip(starts, ends, strict=True)
    ]


class Stage(nn.Module):
    """One backbone segment on one device, optionally ending in an exit head.

    ``forward(x) -> (activation, logits)``: logits are the head's (``None``
    without a head) or, for the last stage, the backbone's own; the decision is
    left to the caller.
    """

    def __init__(self, *, segment: nn.Module, head: nn.Module | None, device: int,
                 end: str, exit_index: int | None, threshold: float | None,
                 final: bool = False) -> None:
        super().__init__()
        self.segment = segment
        self.head = head
        self.device = device
        self.end = end  # candidate name at the end of the segment, "output" for the last
        self.exit_index = exit_index
        self.threshold = threshold
        self.final = final
        self.threshold_f32: Tensor
        self.register_buffer("threshold_f32",
                             torch.tensor(threshold if threshold is not None else 0.0,
                                          dtype=torch.float32), persistent=False)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        act: Tensor = self.segment(x)
        if self.final:
            return act, act
        return act, (self.head(act) if self.head is not None else None)


class _Left(NamedTuple):
    """Samples leaving at one exit: their batch positions and results."""

    rows: Tensor
    prediction: Tensor
    confidence: Tensor
    logits: Tensor
    exit: int
    device: int


class EENN(nn.Module):
    """Stages in execution order plus the decision rule (metric, thresholds)."""

    def __init__(self, *, stages: Sequence[Stage], config: EENNConfig, n_devices: int) -> None:
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.config = config
        self.n_devices = n_devices
        self.metric_index = METRICS.index(config.metric)

    @property
    def n_exits(self) -> int:
        return len(self.config.exits)

    def stage_list(self) -> list[Stage]:
        """The stages in execution order (typed)."""
        return [cast(Stage, s) for s in self.stages]

    def _step(self, stage: Stage, rows: Tensor, h: Tensor
              ) -> tuple[_Left | None, Tensor, Tensor]:
        """Run one stage on samples ``rows`` (activations ``h``): who leaves, who goes on."""
        h, logits = stage(h)
        if logits is None:
            return None, rows, h
        p, scores = exit_scores(logits)
        c = scores[self.metric_index]
        if stage.final:  # the backbone classifier: everyone left finishes here
            return _Left(rows, p, c, logits, self.n_exits, stage.device), rows[:0], h[:0]
        leave = c >= stage.threshold_f32  # float32 on both sides, as in the proxy
        sel = leave.nonzero().squeeze(1)
        left = (_Left(rows[sel], p[sel], c[sel], logits[sel], int(stage.exit_index or 0),
                      stage.device) if len(sel) else None)
        if len(sel) == len(rows):
            return left, rows[:0], h[:0]
        keep = (~leave).nonzero().squeeze(1)
        return left, rows[keep], h.index_select(0, keep)

    @torch.inference_mode()
    def forward(self, x: Tensor) -> EENNOutput:
        """Run ``x`` with true early exit; see :class:`EENNOutput`."""
        rows, h = torch.arange(x.shape[0], device=x.device), x
        done: list[_Left] = []
        for stage in self.stage_list():
            left, rows, h = self._step(stage, rows, h)
            if left is not None:
                done.append(left)
            if not len(rows):
                break
        return self._gather(done, x.shape[0], x.device)

    @torch.inference_mode()
    def run_pooled(self, batches: Iterable[Tensor], *, batch_size: int) -> EENNOutput:
        """Early exit over a stream of input batches, in their concatenated order.

        The same per-sample computation as calling the module on each batch, but
        the samples that go on past an exit wait at the next stage until
        ``batch_size`` of them have gathered (from several input batches), so
        deep stages run on full batches instead of a batch's few survivors: the
        throughput mode for offline evaluation. Results come back in input order.
        """
        stages = self.stage_list()
        waiting: list[list[tuple[Tensor, Tensor]]] = [[] for _ in stages]
        done: list[_Left] = []
        n, device = 0, torch.device("cpu")

        def drain(i: int, flush: bool) -> None:
            while waiting[i]:
                count = sum(len(r) for r, _ in waiting[i])
                if count < batch_size and not flush:
                    return
                rows = torch.cat([r for r, _ in waiting[i]])
                h = torch.cat([a for _, a in waiting[i]])
                waiting[i] = [(rows[batch_size:], h[batch_size:])] if count > batch_size else []
                left, rows, h = self._step(stages[i], rows[:batch_size], h[:batch_size])
                if left is not None:
                    done.append(left)
                if len(rows):
                    waiting[i + 1].append((rows, h))

        for x in batches:
            device = x.device
            waiting[0].append((torch.arange(n, n + len(x), device=device), x))
            n += len(x)
            for i in range(len(stages)):
                drain(i, flush=False)
        for i in range(len(stages)):
            drain(i, flush=True)
        if not n:
            raise ValueError("no input batches; nothing to run the EENN on")
        return self._gather(done, n, device)

    @staticmethod
    def concat(outputs: Sequence[EENNOutput]) -> EENNOutput:
        """The outputs of consecutive batches as one, in order."""
        if not outputs:
            raise ValueError("no outputs to concatenate")
        return EENNOutput(**{f.name: torch.cat([getattr(o, f.name) for o in outputs])
                             for f in dataclasses.fields(EENNOutput)})

    @staticmethod
    def _gather(done: list[_Left], n: int, device: torch.device) -> EENNOutput:
        """Scatter the per-exit pieces back into input order."""
        order = torch.cat([d.rows for d in done])

        def place(parts: list[Tensor]) -> Tensor:
            vals = torch.cat(parts)
            out = torch.empty_like(vals)
            out[order] = vals
            return out

        def const(value: str) -> list[Tensor]:
            return [torch.full((len(d.rows),), getattr(d, value), dtype=torch.int64,
                               device=device) for d in done]

        return EENNOutput(prediction=place([d.prediction for d in done]),
                          exit=place(const("exit")), device=place(const("device")),
                          confidence=place([d.confidence for d in done]),
                          logits=place([d.logits for d in done]).float())


def _cut_plan(config: EENNConfig, n_cand: int) -> list[int]:
    """Candidate indices where the graph is cut: active exits and device boundaries."""
    for e in config.exits:
        if not 0 <= e.candidate < n_cand:
            raise RuntimeBuildError(
                f"exit at candidate {e.candidate} but the backbone has {n_cand} candidates "
                f"(0..{n_cand - 1}); the config belongs to another model profile"
            )
    for b in config.boundaries:
        if not 0 <= b <= n_cand + 1:
            raise RuntimeBuildError(f"boundary {b} is outside 0..{n_cand + 1}")
    cuts = {e.candidate for e in config.exits}
    cuts |= {b - 1 for b in config.boundaries if 1 <= b <= n_cand}
    return sorted(cuts)


def build_eenn(
    model: nn.Module,
    config: EENNConfig,
    *,
    candidates: Sequence[ExitCandidate],
    heads: Mapping[tuple[int, int], nn.Module],
    n_devices: int | None = None,
) -> EENN:
    """The runnable EENN of ``config`` on ``model`` (eval mode, weights shared with ``model``).

    ``candidates`` are the profile's (``BackboneProfile.candidates``) and
    ``heads`` maps ``(candidate index, head index)`` to trained heads.
    """
    hooked = [c.name for c in candidates if c.kind != "node"]
    if hooked:
        raise RuntimeBuildError(
            f"candidates {hooked[:3]} were profiled with forward hooks (kind='module'); such a "
            "model cannot be split into segments, make it torch.fx-traceable to run it as an EENN"
        )
    n_cand = len(candidates)
    cuts = _cut_plan(config, n_cand)
    missing = [(e.candidate, e.head) for e in config.exits if (e.candidate, e.head) not in heads]
    if missing:
        raise RuntimeBuildError(f"no trained head for (candidate, head) {missing}; retrain heads")
    segments = split_graph(trace(model), [candidates[c].name for c in cuts])
    exit_at = {e.candidate: (k, e) for k, e in enumerate(config.exits)}
    stages = []
    for i, seg in enumerate(segments):
        last = i == len(cuts)
        seg_index = n_cand if last else cuts[i]
        k, choice = exit_at.get(seg_index, (None, None)) if not last else (None, None)
        stages.append(Stage(
            segment=seg,
            head=heads[(choice.candidate, choice.head)] if choice else None,
            device=config.device_of_segment(seg_index),
            end="output" if last else candidates[seg_index].name,
            exit_index=k,
            threshold=choice.threshold if choice else None,
            final=last,
        ))
    eenn = EENN(stages=stages, config=config,
                n_devices=n_devices if n_devices is not None else len(config.boundaries) + 1)
    return eenn.eval()


@dataclass(frozen=True, kw_only=True, eq=False)
class RunRecord:
    """Per-sample results of an EENN over a whole dataset, in dataset order."""

    labels: NDArray[np.int64]
    prediction: NDArray[np.int64]
    exit: NDArray[np.int64]  # 0..K, K = backbone classifier
    device: NDArray[np.int64]
    confidence: NDArray[np.float32]

    @property
    def accuracy(self) -> float:
        return float((self.prediction == self.labels).mean()) if len(self.labels) else float("nan")


def run_dataset(
    eenn: EENN,
    dataset: Dataset[Any],
    *,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    pooled: bool = True,
) -> RunRecord:
    """Run ``eenn`` over ``dataset`` in order, ``batch_size`` samples at a time.

    ``pooled`` (default) uses :meth:`EENN.run_pooled`, the throughput mode in
    which deep stages run on full batches of survivors; ``False`` calls the
    module on each batch. Per sample both compute the same.
    """
    if not len(dataset):  # type: ignore[arg-type]
        raise ValueError("the dataset is empty; nothing to run the EENN on")
    eenn = eenn.to(device)
    labels: list[Tensor] = []

    def inputs() -> Any:
        for x, y in iter_batches(dataset, batch_size):
            labels.append(y)
            yield x.float().to(device)

    out = (eenn.run_pooled(inputs(), batch_size=batch_size) if pooled
           else EENN.concat([eenn(x) for x in inputs()]))
    return RunRecord(
        labels=torch.cat(labels).long().numpy(),
        prediction=out.prediction.cpu().numpy(),
        exit=out.exit.cpu().numpy(),
        device=out.device.cpu().numpy(),
        confidence=out.confidence.cpu().numpy(),
    )
