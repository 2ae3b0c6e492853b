"""Device profiles: measured times of every segment, head and call of an EENN on one runtime.

A profile file (JSON, ``format: eenn-device-profile/1``) belongs to one backbone (its
``weights_hash`` and exit ``candidates``) and one head family (``heads`` and
``head_family``, a hash of the members and the pooling). It holds one
:class:`ProfileTable` per ``(runtime, precision, batch)``: seconds per call at that batch
of

- ``segment_s[s]``: backbone segment ``s`` (input -> candidate 0, ..., last candidate ->
  classifier), each called on its own;
- ``head_s[c][h]``: head ``h`` at candidate ``c`` with its pooling and the exit decision
  (confidence, threshold test, the survivors' activation gathered);
- ``call_s``: the fixed cost of one EENN call (bookkeeping, the final decision);
- ``stage_call_s``: the cost of one module / session call, and ``handoff_s[c]`` that of
  handing candidate ``c``'s activation from one call to the next (onnxruntime copies a
  session's output; zero in torch): both are saved where consecutive segments run as one
  stage (no exit between them), see :meth:`ProfileTable.merge_saving_s`.

The same file comes from ``python -m search.profile`` (on this machine) or from the portable
kit (``search/deploy/_profile_kit.py``) run on the target device. :func:`stage_seconds` and
:func:`path_seconds` price a stage and a whole exit path from a table; the cost model
(:mod:`evaluators.costs`) and the vectorised proxy use the same arithmetic.
A profile is checked against the model it prices (:meth:`DeviceProfile.check`): it is never
used for another backbone or head family.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from evaluators.hashing import hash_json

__all__ = [
    "CLOCKS",
    "FORMAT",
    "PRECISIONS",
    "RUNTIMES",
    "DeviceProfile",
    "ProfileError",
    "ProfileRef",
    "ProfileTable",
    "head_family_key",
    "load_profile",
    "path_seconds",
    "stage_seconds",
    "write_profile",
]

FORMAT = "eenn-device-profile/1"
RUNTIMES = ("torch", "onnxruntime")
PRECISIONS = ("fp32", "int8")
CLOCKS = ("wall", "cpu")
HOST = "host"  # ProfileRef.file for "measure this machine now" (platform=host)


class ProfileError(ValueError):
    """A profile that does not fit the model, lacks an entry, or is malformed."""


def head_family_key(members: Sequence[Mapping[str, Any]], pool: int) -> str:
    """Hash of what a head's time depends on besides the backbone: its members and pooling."""
    return hash_json({"members": [dict(m) for m in members], "pool": int(pool)})[:16]


@dataclass(frozen=True, kw_only=True)
class ProfileRef:
    """A platform device's pointer to a profile: file (or ``host``), runtime, precision, batch.

    ``batch`` 1 prices latency per sample at batch 1; a larger batch prices per-sample time in
    the throughput (pooled) mode, where every stage runs on full batches.
    """

    file: str
    runtime: str = "torch"
    precision: str = "fp32"
    batch: int = 1

    @property
    def is_host(self) -> bool:
        return self.file == HOST


@dataclass(frozen=True, kw_only=True, eq=False)
class ProfileTable:
    """Seconds per call at ``batch`` of every piece, on one runtime and precision."""

    runtime: str
    precision: str
    batch: int
    threads: int
    segment_s: NDArray[np.float64]  # (C+1,)
    head_s: NDArray[np.float64]  # (C, H)
    call_s: float
    stage_call_s: float
    segment_spread_s: NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))
    head_spread_s: NDArray[np.float64] = field(default_factory=lambda: np.zeros((0, 0)))
    repeats: int = 0
    clock: str = "wall"  # wall-clock, or "cpu": the timing thread's CPU time (a shared machine)
    handoff_s: NDArray[np.float64] | None = None  # (C,); None: zero

    def merge_saving_s(self, seg: int) -> float:
        """Seconds per call saved when segment ``seg`` (>= 1) runs in the previous one's call."""
        handoff = 0.0 if self.handoff_s is None else float(self.handoff_s[seg - 1])
        return self.stage_call_s + handoff

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.runtime, self.precision, self.batch)

    def as_json(self) -> dict[str, Any]:
        return {"runtime": self.runtime, "precision": self.precision, "batch": self.batch,
                "threads": self.threads, "repeats": self.repeats, "clock": self.clock,
                "call_s": self.call_s,
                "stage_call_s": self.stage_call_s, "segment_s": self.segment_s.tolist(),
                "head_s": self.head_s.tolist(), "segment_spread_s": self.segment_spread_s.tolist(),
                "head_spread_s": self.head_spread_s.tolist(),
                **({} if self.handoff_s is None else {"handoff_s": self.handoff_s.tolist()})}


@dataclass(frozen=True, kw_only=True, eq=False)
class DeviceProfile:
    """A profile file: the model it was measured for, the machine, and its tables."""

    weights_hash: str
    candidates: tuple[str, ...]
    heads: tuple[str, ...]
    head_family: str
    tables: tuple[ProfileTable, ...]
    machine: Mapping[str, Any] = field(default_factory=dict)
    source: str = "<memory>"

    def table(self, runtime: str, precision: str, batch: int) -> ProfileTable:
        """The table of ``(runtime, precision, batch)``; a one-line error names what exists."""
        for t in self.tables:
            if t.key == (runtime, precision, batch):
                return t
        have = ", ".join(f"{r}/{p}/batch {b}" for r, p, b in (t.key for t in self.tables))
        raise ProfileError(f"profile {self.source} has no entry runtime={runtime} "
                           f"precision={precision} batch={batch} (it has: {have or 'none'}); "
                           "measure it with python -m search.profile or pick an entry it has")

    def check(self, *, weights_hash: str, candidates: Sequence[str], heads: Sequence[str],
              head_family: str) -> None:
        """Refuse a profile measured for another backbone, candidate set or head family."""
        if self.weights_hash != weights_hash:
            raise ProfileError(f"profile {self.source}: weights_hash {self.weights_hash[:12]} is "
                               f"not this backbone's {weights_hash[:12]}; it was measured for "
                               "another model, re-profile with python -m search.profile")
        if tuple(candidates) != self.candidates:
            raise ProfileError(f"profile {self.source}: candidates {list(self.candidates)} are not "
                               f"this model's {list(candidates)}; re-profile with the same "
                               "model.candidates settings")
        if tuple(heads) != self.heads or head_family != self.head_family:
            raise ProfileError(f"profile {self.source}: head family {list(self.heads)} "
                               f"({self.head_family}) is not this run's {list(heads)} "
                               f"({head_family}); re-profile with the same heads= and "
                               "features.pool")

    def as_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "weights_hash": self.weights_hash,
                "candidates": list(self.candidates), "heads": list(self.heads),
                "head_family": self.head_family, "machine": dict(self.machine),
                "tables": [t.as_json() for t in self.tables]}


def write_profile(profile: DeviceProfile, path: Path) -> Path:
    """Write ``profile`` as JSON to ``path`` (parents created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(profile.as_json(), indent=1))
    return path


def _seconds(raw: Any, shape: tuple[int, ...], *, where: str, key: str) -> NDArray[np.float64]:
    try:
        arr = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError):
        raise ProfileError(f"{where}: {key}={raw!r} is not a list of numbers; "
                           "re-profile to rewrite the file") from None
    if arr.shape != shape:
        raise ProfileError(f"{where}: {key} has shape {list(arr.shape)}, the profile's candidates "
                           f"and heads need {list(shape)} (a segment or head is missing); "
                           "re-profile to measure every entry")
    if not np.isfinite(arr).all() or (arr < 0).any():
        raise ProfileError(f"{where}: {key} holds a negative or non-finite time; re-profile")
    return arr


def _number(raw: Mapping[str, Any], key: str, *, where: str, kind: type = float) -> Any:
    if key not in raw:
        raise ProfileError(f"{where} is missing {key!r}; re-profile to rewrite the file")
    try:
        value = kind(raw[key])
    except (TypeError, ValueError):
        raise ProfileError(f"{where}: {key}={raw[key]!r} is not a number; re-profile") from None
    if not math.isfinite(value) or value < 0:
        raise ProfileError(f"{where}: {key}={raw[key]!r} must be a finite number >= 0")
    return value


def _clock(raw: Any, where: str) -> str:
    if raw not in CLOCKS:
        raise ProfileError(f"{where}: clock={raw!r}; use {' or '.join(CLOCKS)}")
    return str(raw)


def _table(raw: Any, n_c: int, n_h: int, where: str) -> ProfileTable:
    if not isinstance(raw, Mapping):
        raise ProfileError(f"{where} is not a mapping; re-profile to rewrite the file")
    runtime, precision = raw.get("runtime"), raw.get("precision")
    if runtime not in RUNTIMES or precision not in PRECISIONS:
        raise ProfileError(f"{where}: runtime={runtime!r} precision={precision!r}; use runtime "
                           f"{'/'.join(RUNTIMES)} and precision {'/'.join(PRECISIONS)}")
    batch = _number(raw, "batch", where=where, kind=int)
    if batch < 1:
        raise ProfileError(f"{where}: batch={batch} must be >= 1")
    where = f"{where} ({runtime}/{precision}/batch {batch})"
    spread_s = raw.get("segment_spread_s") or [0.0] * (n_c + 1)
    spread_h = raw.get("head_spread_s") or [[0.0] * n_h] * n_c
    return ProfileTable(
        runtime=str(runtime), precision=str(precision), batch=batch,
        threads=_number(raw, "threads", where=where, kind=int),
        repeats=int(raw.get("repeats", 0)), clock=_clock(raw.get("clock", "wall"), where),
        segment_s=_seconds(raw.get("segment_s"), (n_c + 1,), where=where, key="segment_s"),
        head_s=_seconds(raw.get("head_s"), (n_c, n_h), where=where, key="head_s"),
        call_s=_number(raw, "call_s", where=where), stage_call_s=_number(raw, "stage_call_s",
                                                                        where=where),
        segment_spread_s=_seconds(spread_s, (n_c + 1,), where=where, key="segment_spread_s"),
        head_spread_s=_seconds(spread_h, (n_c, n_h), where=where, key="head_spread_s"),
        handoff_s=(None if raw.get("handoff_s") is None else
                   _seconds(raw["handoff_s"], (n_c,), where=where, key="handoff_s")),
    )


def profile_from_json(raw: Any, *, source: str) -> DeviceProfile:
    """A :class:`DeviceProfile` from a parsed profile file, every entry checked."""
    if not isinstance(raw, Mapping) or raw.get("format") != FORMAT:
        got = raw.get("format") if isinstance(raw, Mapping) else type(raw).__name__
        raise ProfileError(f"profile {source}: format={got!r} is not {FORMAT!r}; write it with "
                           "python -m search.profile or the profiling kit")
    for key in ("weights_hash", "candidates", "heads", "head_family", "tables"):
        if key not in raw:
            raise ProfileError(f"profile {source} is missing {key!r}; re-profile")
    cands, heads = tuple(map(str, raw["candidates"])), tuple(map(str, raw["heads"]))
    tables = tuple(_table(t, len(cands), len(heads), f"profile {source} tables[{i}]")
                   for i, t in enumerate(raw["tables"]))
    keys = [t.key for t in tables]
    if len(set(keys)) < len(keys):
        raise ProfileError(f"profile {source} lists one runtime/precision/batch twice; keep one")
    return DeviceProfile(weights_hash=str(raw["weights_hash"]), candidates=cands, heads=heads,
                         head_family=str(raw["head_family"]), tables=tables,
                         machine=dict(raw.get("machine") or {}), source=source)


def load_profile(path: Path | str) -> DeviceProfile:
    """Read and check a profile file; a missing or unreadable file is a one-line error."""
    path = Path(path).expanduser()
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ProfileError(f"profile file {path} does not exist; write it with python -m "
                           "search.profile (or the profiling kit) or fix platform.devices[].profile"
                           ) from None
    except (OSError, ValueError) as err:
        raise ProfileError(f"profile file {path} is not readable JSON ({err}); re-profile") \
            from None
    return profile_from_json(raw, source=str(path))


def stage_seconds(table: ProfileTable, *, first: int, last: int,
                  head: tuple[int, int] | None = None) -> float:
    """Seconds per sample of one stage: segments ``first..last`` run as one call, then the head
    ``(candidate, head)`` at its end (if any) with its decision."""
    segs = float(table.segment_s[first:last + 1].sum())
    segs -= sum(table.merge_saving_s(s) for s in range(first + 1, last + 1))
    extra = float(table.head_s[head]) if head is not None else 0.0
    return (segs + extra) / table.batch


def path_seconds(table: ProfileTable, *, exits: Sequence[tuple[int, int]]) -> NDArray[np.float64]:
    """Seconds per sample of every exit path of a one-device EENN with exits ``(candidate,
    head)`` in order: index ``k`` leaves at exit ``k``, the last index runs the backbone."""
    out, total, first = [], table.call_s / table.batch, 0
    for cand, h in exits:
        total += stage_seconds(table, first=first, last=cand, head=(cand, h))
        out.append(total)
        first = cand + 1
    total += stage_seconds(table, first=first, last=len(table.segment_s) - 1)
    return np.asarray([*out, total])
