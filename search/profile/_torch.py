"""Measure a :class:`~evaluators.device_profile.ProfileTable` of the PyTorch eager runtime.

Every piece runs the code the real EENN (:mod:`search.deploy.runtime`) runs: segments are
the :func:`~search.deploy.runtime.split_graph` GraphModules cut at every candidate, a head
is timed through :meth:`EENN._step` (head, confidence, threshold test, the survivors'
activation gathered; a threshold nobody passes, the path of the samples that go on), both in
context (:func:`search.deploy._profile_kit.time_chain`: passes along the backbone), the
per-call overhead is an EENN whose one final stage is an identity on logits (its
bookkeeping and final decision), and a stage call is an empty GraphModule's call. Inputs
are real activations of real samples at the table's batch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from functools import partial
from typing import Any

import torch
from torch import Tensor, fx, nn

from evaluators.device_profile import ProfileTable
from evaluators.eenn import EENNConfig, ExitChoice
from evaluators.graph import trace
from search.deploy._profile_kit import time_call, time_chain
from search.deploy.runtime import EENN, Stage, split_graph

__all__ = ["batch_of", "measure_torch"]


def batch_of(x: Tensor, batch: int) -> Tensor:
    """``batch`` rows of ``x`` (repeated when ``x`` has fewer), contiguous."""
    reps = -(-batch // len(x))
    return x.repeat(reps, *([1] * (x.dim() - 1)))[:batch].contiguous()


def _head_eenn(head: nn.Module) -> tuple[EENN, Stage]:
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
                  batch: int, repeats: int, threads: int, clock: str = "wall") -> ProfileTable:
    """The torch fp32 table at ``batch`` on ``threads`` intra-op threads (restored after)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            table = _measure(model, candidates, heads, n_heads, x, batch=batch, repeats=repeats,
                             clock=clock)
            return replace(table, threads=threads, repeats=repeats, clock=clock)
    finally:
        torch.set_num_threads(before)


def _measure(model: nn.Module, candidates: Sequence[str],
             heads: Mapping[tuple[int, int], nn.Module], n_heads: int, x: Tensor, *,
             batch: int, repeats: int, clock: str) -> ProfileTable:
    segments = [s.eval() for s in split_graph(trace(model.eval()), list(candidates))]
    acts = [batch_of(x.float().cpu(), batch)]
    for seg in segments:
        acts.append(seg(acts[-1]))
    n_c = len(candidates)
    missing = [(c, h) for c in range(n_c) for h in range(n_heads) if (c, h) not in heads]
    if missing:
        raise ValueError(f"no trained head for (candidate, head) {missing[:3]}; retrain heads")
    rows = torch.arange(batch)
    steps: list[list[Callable[[Any], Any]]] = [
        [partial(eenn._step, stage, rows)
         for eenn, stage in (_head_eenn(heads[(c, h)].eval()) for h in range(n_heads))]
        for c in range(n_c)]
    seg_t, head_t = time_chain(list(segments), steps, acts[0], repeats=repeats, clock=clock)
    timer = partial(time_call, repeats=repeats, clock=clock)
    caller, logits = _call_eenn(), acts[-1]
    if batch == 1:
        call = timer(lambda: caller(logits))
    else:
        call = timer(lambda: caller.run_pooled(iter([logits]), batch_size=batch))
    empty = fx.symbolic_trace(nn.Identity())
    stage_call = timer(lambda: empty(acts[1]))
    return ProfileTable(
        runtime="torch", precision="fp32", batch=batch, threads=1,
        segment_s=seg_t[:, 0], segment_spread_s=seg_t[:, 1],
        head_s=head_t[..., 0], head_spread_s=head_t[..., 1], call_s=call[0],
        stage_call_s=stage_call[0])
