"""Benchmark: wall time of the real EENN against the plain backbone, next to the MAC ratio.

Writes results/benchmarks/runtime.json. The EENN is the chosen point of a run
of the default experiment (MnistCNN on MNIST-5k, three-tier platform); pass
``--run DIR`` to use an existing run folder, otherwise the default experiment
is run first into a temporary folder (cached stages are reused). Both models
run the test split on this CPU in fp32 at batch 1 and batch 256, in
interleaved repeats; the best repeat of each counts (least disturbed by other
processes). ``mac_ratio`` = backbone MACs / expected EENN MACs on test (priced
from the exits actually taken); ``speedup`` = backbone time / EENN time;
``efficiency`` = speedup / mac_ratio (the brief asks >= 0.8 at batch 256).
``*_pooled`` is the EENN's throughput mode (:meth:`EENN.run_pooled`): the samples
that go on past an exit wait for a full batch at the next stage.

``time_model`` explains the gap: every backbone segment and every chosen head
is timed alone at batch 256, and ``ideal_eenn_s`` sums them weighted by the
share of test samples that reach them: the EENN without any exit bookkeeping.
``ideal_speedup_tuned`` does the same with each segment at its fastest of three
forms (as traced, BatchNorm folded, folded + channels-last) for both sides: an
upper bound for a runtime that tunes segments, since no EENN beats the sum of
its parts.
Torch runs on ``--threads`` threads (default 1: on a shared 2-core machine,
intra-op threads wait on each other and small ops then cost milliseconds).

Usage: python benchmarks/bench_runtime.py [--run DIR] [--repeats 7] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from evaluators.costs import path_costs
from evaluators.eenn import EENNConfig
from evaluators.features import iter_batches
from evaluators.graph import trace
from search.deploy.evaluate import LoadedRun, load_run, select_trials
from search.deploy.runtime import build_eenn, run_dataset, split_graph
from search.rundir import config_from_json

OUT = Path(__file__).resolve().parents[1] / "results" / "benchmarks" / "runtime.json"


def _default_run(folder: Path) -> Path:
    from hydra import compose, initialize_config_module
    from rich.console import Console

    from search.run import run

    with initialize_config_module(config_module="conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=["device=cpu"])
    with open(os.devnull, "w") as quiet:
        run(cfg, run_dir=folder, console=Console(file=quiet), progress=False)
    return folder


def _timed(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _measure(model: Callable[[torch.Tensor], Any], x: torch.Tensor,
             batch: int) -> Callable[[], None]:
    chunks = [x[i : i + batch].contiguous() for i in range(0, len(x), batch)]

    def go() -> None:
        with torch.inference_mode():
            for c in chunks:
                model(c)

    return go


def _measure_pooled(eenn: Any, x: torch.Tensor, batch: int) -> Callable[[], None]:
    """The EENN in its throughput mode: survivors wait for a full batch at the next stage."""
    chunks = [x[i : i + batch].contiguous() for i in range(0, len(x), batch)]

    def go() -> None:
        eenn.run_pooled(iter(chunks), batch_size=batch)

    return go


def _best(fn: Callable[[], Any], repeats: int = 15) -> float:
    with torch.inference_mode():
        fn()
        return min(_timed(fn) for _ in range(repeats))


def _time_model(run: LoadedRun, config: EENNConfig, x: torch.Tensor,
                exits: np.ndarray) -> dict[str, Any]:
    """Per-segment and per-head times at batch 256, and the EENN time they imply."""
    prep = run.prepared
    cands = prep.profile.candidates
    parts = split_graph(trace(prep.model), [c.name for c in cands])
    ins = [x[:256]]
    with torch.inference_mode():
        for part in parts:
            ins.append(part(ins[-1]))
    seg = [_best(lambda p=p, i=i: p(ins[i])) for i, (p, i) in
           enumerate(zip(parts, range(len(parts)), strict=True))]
    head = {e.candidate: _best(lambda e=e: prep.heads.heads[(e.candidate, e.head)](
        ins[e.candidate + 1])) for e in config.exits}
    last_seg = np.array([e.candidate for e in config.exits] + [len(cands)])[exits]
    reach = [float((last_seg >= s).mean()) for s in range(len(parts))]
    ideal = sum(r * (seg[s] + head.get(s, 0.0)) for s, r in enumerate(reach))
    tuned = [min(t, *_tuned_times(p, ins[i]))
             for i, (p, t) in enumerate(zip(parts, seg, strict=True))]
    ideal_tuned = sum(r * (tuned[s] + head.get(s, 0.0)) for s, r in enumerate(reach))
    return {"segment_ms_256": [1e3 * t for t in seg],
            "segment_ms_256_tuned": [1e3 * t for t in tuned],
            "segment_mac_share": (prep.costs.segment_macs / prep.costs.total_macs).tolist(),
            "head_ms_256": {cands[c].name: 1e3 * t for c, t in head.items()},
            "share_reaching_segment": reach,
            "backbone_s_per_256": sum(seg), "ideal_eenn_s_per_256": ideal,
            "ideal_speedup": sum(seg) / ideal,
            "ideal_speedup_tuned": sum(tuned) / ideal_tuned,
            "tuned": "each segment's best of: as traced, BatchNorm folded into the convolution "
            "(torch.fx.experimental.optimization.fuse), folded + channels-last; the backbone "
            "gets the same per-segment times, so both sides are tuned alike"}


def _tuned_times(part: torch.nn.Module, x: torch.Tensor) -> list[float]:
    """Seconds of ``part`` with BatchNorm folded, and folded in channels-last layout."""
    from torch.fx.experimental.optimization import fuse

    folded = fuse(part)
    times = [_best(lambda: folded(x))]
    if x.dim() == 4:
        last = folded.to(memory_format=torch.channels_last)
        xl = x.contiguous(memory_format=torch.channels_last)
        times.append(_best(lambda: last(xl)))
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    run_dir = args.run or _default_run(Path(tempfile.mkdtemp(prefix="bench-runtime-")) / "run")
    run = load_run(run_dir)
    (trial,) = select_trials(run.trials, run.chosen, "chosen")
    config = config_from_json(str(run.trials.set_index("trial").loc[trial, "config"]))
    prep = run.prepared
    model = prep.model.eval()
    eenn = build_eenn(model, config, candidates=prep.profile.candidates, heads=prep.heads.heads,
                      n_devices=prep.platform.n_devices)
    x = torch.cat([b.float() for b, _ in iter_batches(prep.data.test, 1024)])
    record = run_dataset(eenn, prep.data.test)
    paths = path_costs(config, prep.costs, prep.platform)
    eenn_macs = float(paths.macs[record.exit].mean())
    backbone_macs = float(prep.costs.total_macs)
    mac_ratio = backbone_macs / eenn_macs
    results: dict[str, Any] = {}
    for batch in (1, 256):
        fns = {"backbone": _measure(model, x, batch), "eenn": _measure(eenn, x, batch)}
        if batch > 1:
            fns["eenn_pooled"] = _measure_pooled(eenn, x, batch)
        for fn in fns.values():  # warm-up
            fn()
        times: dict[str, list[float]] = {k: [] for k in fns}
        for _ in range(args.repeats):
            for name, fn in fns.items():
                times[name].append(_timed(fn))
        best = {k: min(v) for k, v in times.items()}
        speedup = best["backbone"] / best["eenn"]
        results[f"batch_{batch}"] = {
            "backbone_s": best["backbone"], "eenn_s": best["eenn"],
            "backbone_ms_per_sample": 1e3 * best["backbone"] / len(x),
            "eenn_ms_per_sample": 1e3 * best["eenn"] / len(x),
            "speedup": speedup, "efficiency": speedup / mac_ratio,
            "all_repeats_s": times,
        }
        if "eenn_pooled" in best:
            pooled = best["backbone"] / best["eenn_pooled"]
            results[f"batch_{batch}"].update({
                "eenn_pooled_s": best["eenn_pooled"], "speedup_pooled": pooled,
                "efficiency_pooled": pooled / mac_ratio})
    model = _time_model(run, config, x, record.exit)
    out = {
        "benchmark": "runtime",
        "what": "chosen point of the default experiment (MnistCNN on MNIST-5k, three_tier "
                "platform), real EENN with true early exit vs the plain backbone, test split, "
                "fp32 on this CPU, best of interleaved repeats",
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "python": platform.python_version(), "torch": torch.__version__},
        "run": str(run_dir), "trial": trial,
        "config": json.loads(str(run.trials.set_index("trial").loc[trial, "config"])),
        "test_samples": len(x),
        "accuracy_test": {"backbone": float(prep.predictions.test.final_correct.mean()),
                          "eenn": record.accuracy},
        "exit_fractions_test": (torch.bincount(torch.from_numpy(record.exit),
                                               minlength=len(config.exits) + 1)
                                / len(x)).tolist(),
        "macs": {"backbone": backbone_macs, "eenn_expected_test": eenn_macs,
                 "ratio": mac_ratio},
        **results,
        "time_model": model,
        "efficiency_bound": {"ideal": model["ideal_speedup"] / mac_ratio,
                             "ideal_tuned": model["ideal_speedup_tuned"] / mac_ratio},
        "target": "speedup at batch 256 >= 0.8 x MAC ratio",
        "target_met": results["batch_256"]["efficiency"] >= 0.8,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(out, indent=2))
    brief = {k: out[k] for k in ("macs", "batch_1", "batch_256", "time_model",
                                 "efficiency_bound", "target_met")}
    for b in ("batch_1", "batch_256"):
        brief[b] = {k: v for k, v in brief[b].items() if k != "all_repeats_s"}
    print(json.dumps(brief, indent=2, default=str))


if __name__ == "__main__":
    main()
