"""Wall-clock latency of a real EENN on this machine, and its prediction from a profile.

Per-sample seconds at batch 1 (every sample alone, true early exit) and at a throughput
batch (:meth:`EENN.run_pooled`: survivors wait for a full batch at the next stage), on
``threads`` pinned torch threads, after a warm-up pass. The statistic is the profile's
(:func:`search.deploy._profile_kit.time_call`): the median of short timed blocks, so that both
sides see a shared machine's load alike. At batch 1 the samples are cut into chunks of about
``target_s`` each, every chunk is timed ``repeats`` times and the chunk medians add up; at
the throughput batch one pooled pass over all samples is timed ``repeats`` times. The clock
is the profile table's (wall-clock, or the thread's CPU time on a shared machine). The
prediction prices the exits these very samples took with the profile's table
(:func:`evaluators.device_profile.path_seconds`), so the two differ only by how well the
table's pieces add up to the running EENN.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from statistics import median

import numpy as np
import torch
from torch import Tensor

from evaluators.device_profile import ProfileTable, path_seconds
from search.deploy._profile_kit import CLOCKS
from search.deploy.runtime import EENN

__all__ = ["LatencyFigures", "measure_latency", "predicted_latency"]


@dataclass(frozen=True, kw_only=True)
class LatencyFigures:
    """Measured and predicted per-sample seconds at batch 1 and at ``batch``."""

    measured_b1_s: float
    predicted_b1_s: float
    measured_batch_s: float
    predicted_batch_s: float
    batch: int
    threads: int
    samples: int


def _singles(eenn: EENN, x: Tensor, now: Callable[[], float]) -> float:
    start = now()
    for i in range(len(x)):
        eenn(x[i:i + 1])
    return now() - start


def _pooled(eenn: EENN, x: Tensor, batch: int, now: Callable[[], float]) -> float:
    start = now()
    eenn.run_pooled(iter([x[i:i + batch] for i in range(0, len(x), batch)]), batch_size=batch)
    return now() - start


def measure_latency(eenn: EENN, x: Tensor, *, batch: int, repeats: int, threads: int,
                    clock: str = "wall", target_s: float = 2e-3) -> float:
    """Per-sample seconds of ``eenn`` over ``x`` at ``batch`` (1: one sample a call)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        eenn = eenn.cpu().eval()
        x = x.float().cpu().contiguous()
        now = CLOCKS[clock]
        with torch.inference_mode():
            if batch > 1:
                _pooled(eenn, x, batch, now)  # warm-up
                return float(median(_pooled(eenn, x, batch, now) for _ in range(repeats))) / len(x)
            per = _singles(eenn, x, now) / len(x)  # warm-up, and the chunk size
            size = max(1, int(target_s / max(per, 1e-7)))
            chunks = [x[i:i + size] for i in range(0, len(x), size)]
            total = sum(median(_singles(eenn, c, now) for _ in range(repeats)) for c in chunks)
            return float(total) / len(x)
    finally:
        torch.set_num_threads(before)


def predicted_latency(table: ProfileTable, eenn: EENN, exits_taken: np.ndarray) -> float:
    """Mean per-sample seconds the table predicts for samples that took ``exits_taken``."""
    paths = path_seconds(table, exits=[(e.candidate, e.head) for e in eenn.config.exits])
    return float(paths[np.asarray(exits_taken)].mean())


def latency_figures(eenn: EENN, x: Tensor, *, b1: ProfileTable, batched: ProfileTable,
                    repeats: int, samples_b1: int) -> LatencyFigures:
    """Measured against predicted per-sample time of ``eenn``: the first ``samples_b1`` of
    ``x`` one at a time, all of ``x`` at the throughput batch."""
    with torch.inference_mode():
        taken = eenn.cpu().eval()(x.float().cpu()).exit.numpy()
    return LatencyFigures(
        measured_b1_s=measure_latency(eenn, x[:samples_b1], batch=1, repeats=repeats,
                                      threads=b1.threads, clock=b1.clock),
        predicted_b1_s=predicted_latency(b1, eenn, taken[:samples_b1]),
        measured_batch_s=measure_latency(eenn, x, batch=batched.batch, repeats=repeats,
                                         threads=batched.threads, clock=batched.clock),
        predicted_batch_s=predicted_latency(batched, eenn, taken),
        batch=batched.batch, threads=b1.threads, samples=min(samples_b1, len(x)))
