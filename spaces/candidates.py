"""Exit candidates: single-tensor cut points of a backbone's dataflow graph."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ExitCandidate"]


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
