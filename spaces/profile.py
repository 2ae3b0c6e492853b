"""Backbone profile: exit candidates with their costs, and the cost table for the evaluators.

Traced models (the default): the torch.fx graph of :func:`evaluators.graph.trace`
is run once on one sample (:func:`evaluators.graph.node_stats`); its cut points
(:func:`spaces.candidates.cut_points`) become candidates after three rules:

1. collapse: of a chain of cut points with no MACs between them
   (conv -> bn -> relu -> maxpool), only the last is kept;
2. tail: a point after which less than ``tail_fraction`` (default 1%) of the
   total MACs remain is dropped: only the classifier (pooling, flatten, a
   linear layer) follows it, so an exit there saves next to nothing;
3. thinning, only when asked: ``min_mac_fraction`` keeps a point only if it
   is at least that share of the total MACs past the previous kept one (or
   the input); ``max_candidates`` then keeps the points nearest to evenly
   spaced MAC targets ``total * i / (k + 1)``.

Segment figures (MACs, parameters, peak working set) are summed over the nodes
between two kept points in execution order, so every MAC of the graph lands in
exactly one segment or the tail.

Untraceable models: ``modules=[...]`` names module paths; forward hooks capture
their outputs in one real forward pass (``kind="module"``). MACs are exact
per hook interval (one counter, read at each hook). Not guaranteed, and the
user's responsibility: that a listed module is a true cut point (a residual
branch around it would bypass it), and peaks, which only see module calls
(a functional op outside any module is invisible). Rules 1-2 are not applied
to listed modules; rule 3 is.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike
from torch import nn

from evaluators.costs import BackboneCosts
from evaluators.graph import ModelInputError, node_stats, trace
from spaces._hooks import hooked_units
from spaces._units import Point, Units
from spaces.candidates import ExitCandidate, cut_points

__all__ = [
    "BackboneProfile",
    "find_exit_candidates",
    "profile_backbone",
    "to_backbone_costs",
]

_FP32 = 4


@dataclass(frozen=True, kw_only=True)
class BackboneProfile:
    """Exit candidates of one backbone plus whole-model and tail figures (one sample, fp32).

    The tail is the segment from the last candidate to the output (the whole
    model when there is no candidate).
    """

    candidates: tuple[ExitCandidate, ...]
    total_macs: int
    total_param_bytes: int
    tail_macs: int
    tail_param_bytes: int
    tail_peak_bytes: int
    input_shape: tuple[int, ...]  # without the batch dimension
    output_size: int  # elements of the output per sample (classes)

    def to_backbone_costs(
        self, *, head_macs: ArrayLike, head_params: ArrayLike, head_names: Sequence[str] = ()
    ) -> BackboneCosts:
        """See :func:`to_backbone_costs`."""
        return to_backbone_costs(
            self, head_macs=head_macs, head_params=head_params, head_names=head_names
        )


def to_backbone_costs(
    profile: BackboneProfile,
    *,
    head_macs: ArrayLike,
    head_params: ArrayLike,
    head_names: Sequence[str] = (),
) -> BackboneCosts:
    """The evaluators' cost table: (C+1,) segments (last = tail) and (C, H) head figures.

    Bytes become element / parameter counts (fp32 / 4), as BackboneCosts wants.
    """
    n_cand = len(profile.candidates)
    macs = np.asarray(head_macs, dtype=np.int64).reshape(n_cand, -1)
    params = np.asarray(head_params, dtype=np.int64).reshape(n_cand, -1)
    if macs.shape != params.shape:
        raise ValueError(f"head_macs {macs.shape} and head_params {params.shape} differ in shape")
    if head_names and len(head_names) != macs.shape[1]:
        raise ValueError(f"{len(head_names)} head_names for {macs.shape[1]} heads; give one each")
    cands = profile.candidates
    return BackboneCosts(
        candidate_names=tuple(c.name for c in cands),
        segment_macs=np.asarray([*(c.segment_macs for c in cands), profile.tail_macs], np.int64),
        segment_params=np.asarray(
            [*(c.segment_param_bytes for c in cands), profile.tail_param_bytes], np.int64
        )
        // _FP32,
        segment_peak_elems=np.asarray(
            [*(c.segment_peak_bytes for c in cands), profile.tail_peak_bytes], np.int64
        )
        // _FP32,
        activation_elems=np.asarray([c.bytes_int8 for c in cands], np.int64).reshape(n_cand),
        input_elems=math.prod(profile.input_shape),
        head_macs=macs,
        head_params=params,
        head_names=tuple(head_names),
    )


def _check_options(max_candidates: int | None, min_mac_fraction: float, tail: float) -> None:
    if max_candidates is not None and (isinstance(max_candidates, bool) or max_candidates < 0):
        raise ValueError(f"max_candidates={max_candidates!r} must be null or an integer >= 0")
    if not 0.0 <= min_mac_fraction < 1.0:
        raise ValueError(f"min_mac_fraction={min_mac_fraction!r} must be in [0, 1)")
    if not 0.0 <= tail < 1.0:
        raise ValueError(f"tail_fraction={tail!r} must be in [0, 1)")


def _graph_points(
    model: nn.Module, example_input: torch.Tensor, tail_fraction: float
) -> tuple[Units, list[Point]]:
    """Per-node units and the cut points kept after the collapse and tail rules."""
    gm = trace(model)
    stats = node_stats(gm, example_input)
    by_name = {s.name: s for s in stats}
    out = next(n for n in gm.graph.nodes if n.op == "output").args[0]
    if not isinstance(out, torch.fx.Node) or by_name[out.name].shape is None:
        raise ModelInputError(
            f"{type(model).__name__} does not return one tensor per batch; make forward "
            "return the logits tensor (wrap the model) to search exits"
        )
    units = Units.of(
        [s.macs for s in stats], [s.param_elems for s in stats], [s.io_elems for s in stats]
    )
    points = [
        Point(name=n.name, kind="node", position=by_name[n.name].index, shape=shape)
        for n in cut_points(gm.graph)
        if (shape := by_name[n.name].shape) is not None
    ]
    points = units.collapse(points, tail_fraction=tail_fraction)
    return units.with_output(by_name[out.name].shape or ()), points


def _check_modules(model: nn.Module, modules: Sequence[str]) -> list[str]:
    known = dict(model.named_modules())
    names = [str(m) for m in modules]
    for name in names:
        if name not in known or name == "":
            close = difflib.get_close_matches(name, [k for k in known if k], n=3)
            hint = f"did you mean {', '.join(close)}?" if close else "see model.named_modules()"
            raise ValueError(
                f"model.candidates.modules: {type(model).__name__} has no module {name!r}; {hint}"
            )
    return names


def profile_backbone(
    model: nn.Module,
    example_input: torch.Tensor,
    *,
    max_candidates: int | None = None,
    min_mac_fraction: float = 0.0,
    modules: Sequence[str] | None = None,
    tail_fraction: float = 0.01,
) -> BackboneProfile:
    """Exit candidates and costs of ``model`` for one sample shaped like ``example_input[0]``.

    ``example_input`` has a batch dimension; only its first sample is run.
    With ``modules`` (module paths), forward hooks replace graph tracing.
    """
    _check_options(max_candidates, min_mac_fraction, tail_fraction)
    if example_input.dim() < 1 or example_input.shape[0] < 1:
        raise ModelInputError(
            f"example input of shape {tuple(example_input.shape)} has no batch dimension; "
            "pass a batch of at least one sample"
        )
    if modules:
        units, points = hooked_units(model, example_input[:1], _check_modules(model, modules))
    else:
        units, points = _graph_points(model, example_input, tail_fraction)
    points = units.thin(points, max_candidates=max_candidates, min_mac_fraction=min_mac_fraction)
    candidates, tail = units.candidates(points)
    return BackboneProfile(
        candidates=tuple(candidates),
        total_macs=units.total_macs,
        total_param_bytes=units.total_params * _FP32,
        tail_macs=tail.macs,
        tail_param_bytes=tail.params * _FP32,
        tail_peak_bytes=tail.peak * _FP32,
        input_shape=tuple(int(d) for d in example_input.shape[1:]),
        output_size=math.prod(units.output_shape),
    )


def find_exit_candidates(
    model: nn.Module, example_input: torch.Tensor, **options: Any
) -> list[ExitCandidate]:
    """Exit candidates of ``model`` in execution order (``options``: see profile_backbone)."""
    return list(profile_backbone(model, example_input, **options).candidates)
