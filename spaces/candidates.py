"""Exit candidates: single-tensor cut points of a backbone's dataflow graph.

A cut point is a node that every path from the input to the output passes
through (a dominator of the output): everything after it depends on the input
only through its one tensor, so an exit head can read it and a device boundary
can send it. :func:`cut_points` finds them on a torch.fx graph;
:func:`spaces.profile.profile_backbone` adds shapes and costs.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import fx

__all__ = ["ExitCandidate", "cut_points"]


@dataclass(frozen=True, kw_only=True)
class ExitCandidate:
    """A place where an exit head and/or a device boundary can go.

    ``name`` is the torch.fx node name (or, for untraceable models, the module
    path whose output a forward hook captures; then ``kind == "module"``).
    Segment figures describe the backbone part since the previous candidate.
    """

    name: str
    kind: str  # "node" (fx graph) or "module" (forward hook)
    index: int  # position among the candidates, execution order
    shape: tuple[int, ...]  # output shape without the batch dimension
    bytes_fp32: int
    bytes_int8: int
    cumulative_macs: int  # backbone MACs from the input up to and including this point
    segment_macs: int
    segment_param_bytes: int  # fp32 parameter bytes of the segment since the previous candidate
    segment_peak_bytes: int  # fp32 bytes of the largest single-op input+output in that segment


def _on_input_output_paths(graph: fx.Graph) -> list[fx.Node]:
    """Nodes that lie on some path from the first placeholder to the output, in graph order."""
    nodes = list(graph.nodes)
    source = next((n for n in nodes if n.op == "placeholder"), None)
    if source is None:
        return []
    reached = {source}
    for n in nodes:
        if any(a in reached for a in n.all_input_nodes):
            reached.add(n)
    sink = next(n for n in reversed(nodes) if n.op == "output")
    reaching = {sink}
    for n in reversed(nodes):
        if any(u in reaching for u in n.users):
            reaching.add(n)
    return [n for n in nodes if n in reached and n in reaching]


def cut_points(graph: fx.Graph) -> list[fx.Node]:
    """Nodes (neither the input nor the output node) that every input->output path passes.

    The fx node list is a topological order. Restricted to nodes on an
    input->output path, a node is passed by every path exactly when no edge
    jumps over it (goes from an earlier to a later node): such an edge would
    be part of a path that avoids it, and without one every path has to step
    on it. One sweep with the furthest edge end seen so far finds them all.
    Shape reads count as edges: ``n = x.shape[0]`` at the top of ``forward``
    and used at the end makes every node in between a non-cut.
    """
    relevant = _on_input_output_paths(graph)
    position = {n: i for i, n in enumerate(relevant)}
    cuts: list[fx.Node] = []
    furthest = 0
    for i, n in enumerate(relevant):
        if furthest <= i and 0 < i < len(relevant) - 1:
            cuts.append(n)
        ends = [position[u] for u in n.users if u in position]
        furthest = max([furthest, *ends])
    return cuts
