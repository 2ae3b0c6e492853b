"""Per-point records: exit distribution, device mapping and a one-line description.

A point is one row of ``trials.parquet``. The device-mapping record follows the
cost model's conventions (evaluators/eenn.py, evaluators/costs.py): segment
``j`` ends at candidate ``j``, segment ``C`` is the tail to the classifier, and
a link whose boundary is ``b`` sends candidate ``b-1``'s activation (the raw
input when ``b == 0``) at the activation bit-width of the link's sending device.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from evaluators.eenn import EENNConfig
from search.rundir import Run, config_from_json

__all__ = [
    "OBJECTIVE_LABELS",
    "DeviceMapping",
    "ExitDistribution",
    "ExitMark",
    "LinkTransfer",
    "Segment",
    "describe_config",
    "device_mapping",
    "exit_distribution",
]

#: Axis label of each objective name; ``error`` is always shown as accuracy.
OBJECTIVE_LABELS: dict[str, str] = {
    "error": "accuracy (val)",
    "macs": "MACs per sample",
    "energy": "energy per sample (J)",
    "latency": "latency per sample (s)",
}


@dataclass(frozen=True, kw_only=True)
class ExitDistribution:
    """Share of val samples leaving at each active exit (last: the backbone) and their accuracy."""

    trial: int
    labels: tuple[str, ...]
    fractions: NDArray[np.float64]
    accuracy: NDArray[np.float64]  # NaN where no sample leaves


@dataclass(frozen=True, kw_only=True)
class Segment:
    """Backbone segment ``index``: ``macs`` MACs starting at cumulative ``start``, on ``device``."""

    index: int
    name: str
    start: float
    macs: float
    device: int


@dataclass(frozen=True, kw_only=True)
class ExitMark:
    """An active exit on the strip: after segment ``candidate``, at cumulative MACs ``position``."""

    candidate: int
    name: str
    position: float
    device: int
    head: str
    threshold: float


@dataclass(frozen=True, kw_only=True)
class LinkTransfer:
    """What one link of the chain carries per sample; ``n_bytes`` is None when unknown."""

    link: str
    sender: str
    receiver: str
    boundary: int
    position: float
    tensor: str
    n_bytes: float | None
    used: bool


@dataclass(frozen=True, kw_only=True)
class DeviceMapping:
    """The backbone as a strip of segments coloured by device, with exits and link transfers."""

    trial: int
    devices: tuple[str, ...]
    segments: tuple[Segment, ...]
    exits: tuple[ExitMark, ...]
    links: tuple[LinkTransfer, ...]


def _json_list(text: Any) -> list[float]:
    if isinstance(text, str):
        text = json.loads(text)
    return [math.nan if v is None else float(v) for v in (text if text is not None else [])]


def _head_name(run: Run, head: int) -> str:
    heads = run.summary.get("heads") or []
    return str(heads[head]) if 0 <= head < len(heads) else f"head {head}"


def _candidate_name(run: Run, index: int) -> str:
    names = run.candidate_names
    return names[index] if 0 <= index < len(names) else f"candidate {index}"


def exit_distribution(run: Run, row: pd.Series) -> ExitDistribution:
    """Exit shares and per-exit accuracy of one trial (columns exit_fractions / exit_accuracy)."""
    trial = int(row["trial"])
    config = config_from_json(str(row["config"]), where=f"{run.path} trial {trial}")
    fractions = _json_list(row.get("exit_fractions"))
    accuracy = _json_list(row.get("exit_accuracy"))
    labels = [
        f"{_candidate_name(run, e.candidate)} ({_head_name(run, e.head)}, t={e.threshold:.3g})"
        for e in config.exits
    ] + ["final classifier"]
    if len(labels) != len(fractions):  # schema says K+1; stay readable if a writer disagrees
        labels = [f"exit {i}" for i in range(len(fractions))]
    accuracy = (accuracy + [math.nan] * len(fractions))[: len(fractions)]
    return ExitDistribution(
        trial=trial,
        labels=tuple(labels),
        fractions=np.asarray(fractions, dtype=np.float64),
        accuracy=np.asarray(accuracy, dtype=np.float64),
    )


def segment_macs(run: Run) -> NDArray[np.float64]:
    """MACs of segments ``0..C``; the tail is the backbone total minus the last candidate's."""
    cands = run.summary.get("candidates") or []
    total = float((run.summary.get("backbone") or {}).get("macs") or 0.0)
    macs = [float(c.get("segment_macs", 0)) for c in cands]
    reached = float(cands[-1].get("cumulative_macs", sum(macs))) if cands else 0.0
    return np.asarray([*macs, max(total - reached, 0.0)], dtype=np.float64)


def _input_bytes(run: Run) -> float | None:
    """fp32 bytes of the raw input, if summary.json has input_bytes_fp32/input_elems/input_shape."""
    summary = run.summary
    if summary.get("input_bytes_fp32") is not None:
        return float(summary["input_bytes_fp32"])
    if summary.get("input_elems") is not None:
        return 4.0 * float(summary["input_elems"])
    if summary.get("input_shape"):
        return 4.0 * float(np.prod(summary["input_shape"]))
    return None


def _activation_bits(run: Run, device: int) -> int:
    devices = (run.summary.get("platform") or {}).get("devices") or []
    return int(devices[device].get("activation_bits", 32)) if device < len(devices) else 32


def _sent_bytes(run: Run, boundary: int, sender: int) -> float | None:
    """Bytes of the tensor crossing ``boundary`` at the sender's activation bit-width."""
    bits = _activation_bits(run, sender)
    if boundary == 0:
        fp32 = _input_bytes(run)
        return None if fp32 is None else fp32 * bits / 32.0
    cand = (run.summary.get("candidates") or [])[boundary - 1]
    if bits == 8 and cand.get("bytes_int8") is not None:
        return float(cand["bytes_int8"])
    return float(cand["bytes_fp32"]) * bits / 32.0


def _links(run: Run, config: EENNConfig, starts: NDArray[np.float64]) -> tuple[LinkTransfer, ...]:
    devices = run.device_names
    links = (run.summary.get("platform") or {}).get("links") or []
    n_seg = len(starts)
    out = []
    for i, b in enumerate(config.boundaries):
        used = b < n_seg
        out.append(
            LinkTransfer(
                link=str(links[i].get("name", f"link{i}")) if i < len(links) else f"link{i}",
                sender=devices[i] if i < len(devices) else f"device{i}",
                receiver=devices[i + 1] if i + 1 < len(devices) else f"device{i + 1}",
                boundary=int(b),
                position=float(starts[b]) if used else float(starts[-1]),
                tensor=("input" if b == 0 else _candidate_name(run, b - 1)) if used else "",
                n_bytes=_sent_bytes(run, b, i) if used else 0.0,
                used=used,
            )
        )
    return tuple(out)


def device_mapping(run: Run, row: pd.Series) -> DeviceMapping:
    """Segments coloured by device, active exits and per-link bytes of one trial."""
    trial = int(row["trial"])
    config = config_from_json(str(row["config"]), where=f"{run.path} trial {trial}")
    macs = segment_macs(run)
    starts = np.concatenate([[0.0], np.cumsum(macs)[:-1]])
    names = [*run.candidate_names, "classifier"][: len(macs)]
    segments = tuple(
        Segment(
            index=j,
            name=names[j],
            start=float(starts[j]),
            macs=float(macs[j]),
            device=config.device_of_segment(j),
        )
        for j in range(len(macs))
    )
    exits = tuple(
        ExitMark(
            candidate=e.candidate,
            name=_candidate_name(run, e.candidate),
            position=float(starts[e.candidate] + macs[e.candidate]),
            device=config.device_of_segment(e.candidate),
            head=_head_name(run, e.head),
            threshold=e.threshold,
        )
        for e in config.exits
        if e.candidate < len(macs)
    )
    n_dev = max(len(run.device_names), len(config.boundaries) + 1)
    devices = tuple(run.device_names) + tuple(
        f"device{i}" for i in range(len(run.device_names), n_dev)
    )
    return DeviceMapping(
        trial=trial,
        devices=devices,
        segments=segments,
        exits=exits,
        links=_links(run, config, starts),
    )


def describe_config(run: Run, config: EENNConfig) -> str:
    """One short line (HTML ``<br>`` separated) naming exits, heads, thresholds and device split."""
    exits = (
        ", ".join(
            f"{_candidate_name(run, e.candidate)}[{_head_name(run, e.head)}]@{e.threshold:.3g}"
            for e in config.exits
        )
        or "none"
    )
    devices = [config.device_of_segment(s) for s in range(len(run.candidate_names) + 1)]
    parts = []
    for d, name in enumerate(run.device_names or ("device0",)):
        segs = [s for s, on in enumerate(devices) if on == d]
        if segs:
            parts.append(
                f"{name}: seg {segs[0]}-{segs[-1]}" if len(segs) > 1 else f"{name}: seg {segs[0]}"
            )
    return f"exits: {exits}<br>devices: {' | '.join(parts) or 'one device'} ({config.metric})"
