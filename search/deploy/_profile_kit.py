"""Portable profiler of an EENN's pieces with onnxruntime: numpy and onnxruntime only.

This one file is copied into a profiling kit (``python -m search.profile
+profile.kit=true`` or ``python -m search.deploy.export RUN --profile-kit``) next to
``kit.json``, one ONNX graph per backbone segment and per head
(float32 and, where written, int8 QDQ), ``nop.onnx`` and ``inputs.npy`` (real samples). On
the target device (a Raspberry Pi, a Jetson) run::

    python3 profile_kit.py KIT_DIR --out profile.json [--batches 1 64] [--threads 1]

and bring ``profile.json`` back: it is a device profile file (format
``eenn-device-profile/1``, :mod:`evaluators.device_profile`) for the kit's model and heads.
``python -m search.profile`` measures onnxruntime with this same code.

What is timed is what the reference runner (``search/deploy/_onnx_runner.py``) does: a
segment is one session run; a head is one session run plus the exit decision in numpy
(confidence, threshold test, the survivors' activation copied) less one session call, since
in a deployed stage the head shares its segment's session; ``stage_call_s`` is a trivial
session's call and ``handoff_s`` what else a graph boundary at each candidate costs (timed as
two segments alone against the two as one graph: onnxruntime converts layouts and hands the
output over at a boundary), both saved when segments merge into one stage;
``call_s`` is the per-batch
bookkeeping and the final decision. Segments and heads are timed in context
(:func:`time_chain`): in passes along the backbone with a head after every candidate.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np

FORMAT = "eenn-device-profile/1"
KIT_FORMAT = "eenn-profile-kit/1"


# wall: time.perf_counter; cpu: the calling thread's CPU time (time.thread_time), which a
# shared machine's other processes do not inflate (with one intra-op thread, the work runs in
# the calling thread)
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.thread_time}


def time_call(fn: Callable[[], Any], *, repeats: int, target_s: float = 2e-3,
              clock: str = "wall") -> tuple[float, float]:
    """(median, interquartile spread) seconds per call of ``fn`` over ``repeats`` blocks.

    Warm-up first; each block runs ``fn`` often enough to last about ``target_s`` so that
    the clock's resolution and one-off hiccups do not dominate short calls.
    """
    now = CLOCKS[clock]
    fn()
    start = now()
    fn()
    once = max(now() - start, 1e-7)
    n = max(1, int(target_s / once))
    for _ in range(min(n, 3)):
        fn()
    times = []
    for _ in range(repeats):
        start = now()
        for _ in range(n):
            fn()
        times.append((now() - start) / n)
    q25, q75 = np.percentile(times, [25, 75])
    return float(median(times)), float(q75 - q25)


def time_chain(segments: list[Callable[[Any], Any]], heads: list[list[Callable[[Any], Any]]],
               x: Any, *, repeats: int, clock: str = "wall") -> tuple[Any, Any]:
    """Times of every segment and head in context: ((S, 2), (C, H, 2)) median and spread.

    Segments: passes along the backbone, each call timed on its own, as a path runs them
    (caches hold the previous piece's data, not the same piece's). Heads: passes with head
    ``h`` after every candidate, one pass per head. ``repeats`` passes of each kind after a
    warm-up pass.
    """
    now = CLOCKS[clock]
    n_h = len(heads[0]) if heads else 0
    seg_t: list[list[float]] = [[] for _ in segments]
    head_t: list[list[list[float]]] = [[[] for _ in row] for row in heads]
    for rep in range(repeats + 1):
        for h in range(-1, n_h):  # -1: the segments alone
            a = x
            for i, seg in enumerate(segments):
                start = now()
                a = seg(a)
                if h < 0:
                    seg_t[i].append(now() - start)
                elif i < len(heads):
                    start = now()
                    heads[i][h](a)
                    head_t[i][h].append(now() - start)
        if rep == 0:  # warm-up pass: dropped
            seg_t = [[] for _ in segments]
            head_t = [[[] for _ in row] for row in heads]

    def stats(v: list[float]) -> tuple[float, float]:
        q25, q50, q75 = np.percentile(v, [25, 50, 75])
        return float(q50), float(q75 - q25)

    return (np.array([stats(v) for v in seg_t]),
            np.array([[stats(v) for v in row] for row in head_t]).reshape(len(heads), n_h, 2))


def max_softmax(logits: Any) -> Any:
    """Top-1 softmax probability of float32 logits (the runner's max_softmax)."""
    z = np.asarray(logits, dtype=np.float32)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).max(axis=1)


def _session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _batch(x: Any, batch: int) -> Any:
    reps = -(-batch // len(x))
    return np.ascontiguousarray(np.concatenate([x] * reps)[:batch], dtype=np.float32)


def _run(sess: Any, x: Any) -> Any:
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _segment_fn(sess: Any) -> Callable[[Any], Any]:
    return lambda a: np.ascontiguousarray(_run(sess, a))


def _head_fn(sess: Any) -> Callable[[Any], Any]:
    """A head's session and the runner's exit decision on its logits (nobody leaves)."""
    name = sess.get_inputs()[0].name

    def go(act: Any) -> Any:
        (logits,) = sess.run(None, {name: act})
        pred = logits.argmax(axis=1)
        leave = max_softmax(logits) >= np.float32(2.0)  # nobody leaves: all go on
        alive = np.arange(len(act))[~leave]
        return pred[leave], alive, np.ascontiguousarray(act[~leave])

    return go


def _call_fn(x: Any, n_classes: int) -> Callable[[], Any]:
    """The runner's per-batch bookkeeping and the final decision (everyone leaves)."""
    logits = np.random.default_rng(0).standard_normal((len(x), n_classes)).astype(np.float32)

    def go() -> Any:
        h = np.ascontiguousarray(x, dtype=np.float32)
        n = len(h)
        pred, taken = np.zeros(n, dtype=np.int64), np.full(n, 0, dtype=np.int64)
        device, conf = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.float32)
        alive = np.arange(n)
        outs = dict(zip(["logits"], [logits], strict=True))
        c = max_softmax(outs["logits"])
        p = outs["logits"].argmax(axis=1)
        leave = np.ones(len(c), dtype=bool)
        idx = alive[leave]
        pred[idx], conf[idx], device[idx] = p[leave], c[leave], 0
        taken[idx] = 1
        return alive[~leave]

    return go


def _handoffs(kit: Path, files: dict[str, Any], acts: list[Any], threads: int,
              timer: Callable[[Callable[[], Any]], tuple[float, float]],
              stage_call: float) -> list[float]:
    """Per candidate ``c``: what running segments ``c`` and ``c+1`` as one graph saves beyond
    one session call (onnxruntime converts layouts and hands an output over at every graph
    boundary): both alone minus the pair, each timed alone."""
    out = []
    for c, pair in enumerate(files.get("pairs") or []):
        first, second = (_segment_fn(_session(kit / files["segments"][i], threads))
                         for i in (c, c + 1))
        both = _segment_fn(_session(kit / pair, threads))
        alone = (timer(functools.partial(first, acts[c]))[0]
                 + timer(functools.partial(second, acts[c + 1]))[0])
        out.append(max(alone - timer(functools.partial(both, acts[c]))[0] - stage_call, 0.0))
    return out or [0.0] * (len(acts) - 2)


def measure(kit: Path, *, precision: str, batch: int, repeats: int, threads: int,
            clock: str = "wall") -> dict[str, Any]:
    """One profile table (a mapping) of the kit's pieces at ``batch``."""
    meta = json.loads((kit / "kit.json").read_text())
    files = meta["files"][precision]
    chain = [_session(kit / f, threads) for f in meta["files"]["fp32"]["segments"]]
    acts = [_batch(np.load(kit / meta["inputs"]), batch)]
    for sess in chain:  # inputs of every piece: the float32 activations
        acts.append(np.ascontiguousarray(_run(sess, acts[-1])))
    segments = [_segment_fn(_session(kit / f, threads)) for f in files["segments"]]
    heads = [[_head_fn(_session(kit / f, threads)) for f in row] for row in files["heads"]]
    segs, head_t = time_chain(segments, heads, acts[0], repeats=repeats, clock=clock)
    nop = _session(kit / meta["nop"], threads)
    nop_x = np.zeros((batch, 1), dtype=np.float32)
    timer = functools.partial(time_call, repeats=repeats, clock=clock)
    stage_call = timer(lambda: _run(nop, nop_x))[0]
    handoff = _handoffs(kit, files, acts, threads, timer, stage_call)
    call = timer(_call_fn(acts[0], int(meta["num_classes"])))[0]
    return {"runtime": "onnxruntime", "precision": precision, "batch": batch, "threads": threads,
            "repeats": repeats, "clock": clock, "call_s": call, "stage_call_s": stage_call,
            "segment_s": segs[:, 0].tolist(), "segment_spread_s": segs[:, 1].tolist(),
            "head_s": np.maximum(head_t[..., 0] - stage_call, 0.0).tolist(),
            "head_spread_s": head_t[..., 1].tolist(), "handoff_s": handoff}


def machine(threads: int) -> dict[str, Any]:
    """What the profile was measured on."""
    import onnxruntime as ort

    return {"host": platform.node(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "system": platform.platform(), "python": sys.version.split()[0],
            "onnxruntime": ort.__version__, "threads": threads}


def profile_kit(kit: Path, *, batches: list[int], precisions: list[str], repeats: int,
                threads: int, clock: str = "wall") -> dict[str, Any]:
    """The device profile (a mapping in the profile file's format) of a kit folder."""
    kit = Path(kit)
    meta = json.loads((kit / "kit.json").read_text())
    if meta.get("format") != KIT_FORMAT:
        raise SystemExit(f"error: {kit / 'kit.json'} is not a profiling kit ({KIT_FORMAT})")
    missing = [p for p in precisions if p not in meta["files"]]
    if missing:
        raise SystemExit(f"error: kit {kit} has no {missing[0]} graphs; use --precision "
                         f"{' '.join(meta['files'])}")
    tables = [measure(kit, precision=p, batch=b, repeats=repeats, threads=threads, clock=clock)
              for p in precisions for b in batches]
    return {"format": FORMAT, "weights_hash": meta["weights_hash"],
            "candidates": meta["candidates"], "heads": meta["heads"],
            "head_family": meta["head_family"], "machine": machine(threads), "tables": tables}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Profile an EENN's pieces with onnxruntime.")
    parser.add_argument("kit", type=Path, help="the kit folder (with kit.json)")
    parser.add_argument("--out", type=Path, default=Path("profile.json"))
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "int8"])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", default="wall", choices=sorted(CLOCKS),
                        help="wall-clock (default) or this thread's CPU time (a busy machine)")
    args = parser.parse_args(argv)
    if min(args.batches) < 1 or args.repeats < 1 or args.threads < 1:
        parser.error("--batches, --repeats and --threads must be >= 1")
    profile = profile_kit(args.kit, batches=args.batches, precisions=args.precision,
                          repeats=args.repeats, threads=args.threads, clock=args.clock)
    args.out.write_text(json.dumps(profile, indent=1))
    print(f"profile written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
