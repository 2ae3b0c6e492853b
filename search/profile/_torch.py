"""Measure a :class:`~evaluators.device_profile.ProfileTable` of the PyTorch eager runtime.

Every piece runs the code the real EENN (:mod:`search.deploy.runtime`) runs: segments are
the :func:`~search.deploy.runtime.split_graph` GraphModules cut at every candidate, a head
is timed through :meth:`EENN._step` (head, confidence, threshold test, the survivors'
activation gathered; a threshold nobody passes, the path of the samples that go on), the
per-call overhead is an EENN whose one final stage is an identity on logits (its
bookkeeping and final decision), and a stage call is an empty GraphModule's call. Inputs
are real activations of real samples at the table's batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from statistics import median
from typing import Any

import numpy as np
import torch
from torch import Tensor, fx, nn

from evaluators.device_profile import ProfileTable
from evaluators.eenn import EENNConfig, ExitChoice
from evaluators.graph import trace
from search.deploy.runtime import EENN, Stage, split_graph

__all__ = ["batch_of", "measure_torch", "time_call"]


def time_call(fn: Callable[[], Any], *, repeats: int, target_s: float = 2e-3
              ) -> tuple[float, float]:
    """(median, interquartile spread) seconds per call of ``fn`` over ``repeats`` timed blocks.

    Warm-up first; each block runs ``fn`` often enough to last about ``target_s`` so that
    the clock's resolution and one-off hiccups do not dominate short calls.
    """
    fn()
    start = time.perf_counter()
    fn()
    once = max(time.perf_counter() - start, 1e-7)
    n = max(1, int(target_s / once))
    for _ in range(min(n, 3)):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        times.append((time.perf_counter() - start) / n)
    q25, q75 = np.percentile(times, [25, 75])
    return float(median(times)), float(q75 - q25)


def batch_of(x: Tensor, batch: int) -> Tensor:
    """``batch`` rows of ``x`` (repeated when ``x`` has fewer), contiguous."""
    reps = -(-batch // len(x))
    return x.repeat(reps, *([1] * (x.dim() - 1)))[:batch].contiguous()


def _head_eenn(head: nn.Module, n_classes: int) -> tuple[EENN, Stage]:
    stage = Stage(segment=nn.Identity(), head=head, device=0, end="probe", exit_index=0,
                  threshold=2.0)  # no confidence reaches 2: every sample goes on
    config = EENNConfig(exits=(ExitChoice(candidate=0, head=0, threshold=2.0),))
    return EENN(stages=[stage], config=config, n_devices=1).eval(), stage


def _call_eenn() -> EENN:
    final = Stage(segment=nn.Identity(), head=None, device=0, end="output", exit_index=None,
                  threshold=None, final=True)
    return EENN(stages=[final], config=EENNConfig(exits=()), n_devices=1).eval()


def measure_torch(model: nn.Module, candidates: Sequence[str],
                  heads: Mapping[tuple[int, int], nn.Module], n_heads: int, x: Tensor, *,
                  batch: int, repeats: int, threads: int) -> ProfileTable:
    """The torch fp32 table at ``batch`` on ``threads`` intra-op threads (restored after)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            return _measure(model, candidates, heads, n_heads, x, batch=batch, repeats=repeats,
                            threads=threads)
    finally:
        torch.set_num_threads(before)


def _measure(model: nn.Module, candidates: Sequence[str],
             heads: Mapping[tuple[int, int], nn.Module], n_heads: int, x: Tensor, *,
             batch: int, repeats: int, threads: int) -> ProfileTable:
    segments = [s.eval() for s in split_graph(trace(model.eval()), list(candidates))]
    acts = [batch_of(x.float().cpu(), batch)]
    for seg in segments:
        acts.append(seg(acts[-1]))
    seg_t = [time_call(partial(s, a), repeats=repeats)
             for s, a in zip(segments, acts, strict=False)]
    n_c, n_classes = len(candidates), acts[-1].shape[1]
    head_t = np.zeros((n_c, n_heads, 2))
    rows = torch.arange(batch)
    for (c, h), head in sorted(heads.items()):
        eenn, stage = _head_eenn(head.eval(), n_classes)
        head_t[c, h] = time_call(partial(eenn._step, stage, rows, acts[c + 1]), repeats=repeats)
    missing = [(c, h) for c in range(n_c) for h in range(n_heads) if (c, h) not in heads]
    if missing:
        raise ValueError(f"no trained head for (candidate, head) {missing[:3]}; retrain heads")
    caller, logits = _call_eenn(), acts[-1]
    if batch == 1:
        call = time_call(lambda: caller(logits), repeats=repeats)
    else:
        call = time_call(lambda: caller.run_pooled(iter([logits]), batch_size=batch),
                         repeats=repeats)
    empty = fx.symbolic_trace(nn.Identity())
    stage_call = time_call(lambda: empty(acts[1]), repeats=repeats)
    return ProfileTable(
        runtime="torch", precision="fp32", batch=batch, threads=threads, repeats=repeats,
        segment_s=np.array([t[0] for t in seg_t]), segment_spread_s=np.array([t[1] for t in seg_t]),
        head_s=head_t[..., 0], head_spread_s=head_t[..., 1], call_s=call[0],
        stage_call_s=stage_call[0])
