"""Benchmark: does the latency the search optimises hold when the EENN runs?

Writes results/benchmarks/latency_fidelity.json. The default experiment (MnistCNN on
MNIST-5k) is searched twice on this machine with objectives [error, latency]:

- ``profile``: ``platform=host``, latency priced from a profile of this machine (torch fp32,
  batch 1, measured on the fly: segments, heads with pooling and decision, per-call overhead);
- ``macs``: the same one-device host priced analytically, MACs over a rate calibrated so that
  the backbone's MAC-priced time equals its profiled time (so only the shape differs).

Every Pareto point of both fronts (main strategy) and the backbone alone then run for real in
torch (:mod:`search.deploy._latency`): per-sample time at batch 1 (``--b1-samples`` test
samples one at a time) and in the pooled throughput mode at ``--batch`` (the whole test split),
against the time a fresh profile predicts for the exits those samples took. The machine is
shared (2 cores, other jobs running), so each round measures a fresh profile and then every
point, ``--rounds`` times, and the median over rounds counts; the clock is ``--clock`` (default
``cpu``: the timing thread's CPU time, which other processes' time slices do not inflate; torch
and onnxruntime run one intra-op thread, in the calling thread). onnxruntime: the profile
front's points are exported (:func:`search.deploy.export.export_eenn`) and timed with the
reference runner's stage loop at batch 1 and pooled at ``--batch``
(:class:`search.deploy._onnx_timing.OnnxEENN`) against the onnxruntime fp32 profile.

Usage: python benchmarks/bench_latency_fidelity.py [--rounds 3] [--clock cpu] [--batch 256]
[--out results/benchmarks/latency_fidelity.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform as _platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _provenance import code_state

from evaluators.device_profile import ProfileTable, path_seconds
from evaluators.eenn import EENNConfig
from evaluators.features import iter_batches
from evaluators.platform import Device, Platform
from search.deploy._latency import measure_latency, predicted_latency
from search.deploy._loaded import LoadedRun, load_run, select_trials
from search.deploy._onnx_timing import OnnxEENN
from search.deploy.runtime import EENN, build_eenn
from search.profile import ProfileSettings, measure_profile
from search.profile._subject import subject_of
from search.rundir import config_from_json

OUT = Path(__file__).resolve().parents[1] / "results" / "benchmarks" / "latency_fidelity.json"


def _search(folder: Path, cache: Path, mac_platform: Platform | None = None) -> Path:
    from hydra import compose, initialize_config_module
    from rich.console import Console

    from search.config import parse_config
    from search.run import run

    with initialize_config_module(config_module="conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            "device=cpu", "platform=host", "objectives=[error,latency]", f"cache_dir={cache}"])
    settings = parse_config(cfg)
    if mac_platform is not None:
        settings = replace(settings, platform=mac_platform)
    with open(os.devnull, "w") as quiet:
        run(settings, run_dir=folder, console=Console(file=quiet), progress=False)
    return folder


def _mac_platform(run: LoadedRun) -> Platform:
    """The host as an analytic device whose MAC rate gives the backbone its profiled time."""
    table = run.prepared.platform.devices[0].measured
    assert table is not None
    backbone_s = float(path_seconds(table, exits=[])[0])
    rate = float(run.prepared.costs.total_macs) / backbone_s
    host = run.prepared.platform.devices[0]
    return Platform(name="host_macs", links=(), devices=(Device(
        name="host_cpu", macs_per_second=rate, energy_per_mac_j=15.0 / rate, static_power_w=0.0,
        ram_bytes=host.ram_bytes, flash_bytes=host.flash_bytes),))


def _points(run: LoadedRun) -> dict[int, EENNConfig]:
    trials = run.trials.set_index("trial")
    ids = select_trials(run.trials, run.chosen, "pareto", strategy=run.summary.get("strategy"))
    # and the chosen point, which a certified run may take off the front (a path step)
    ids = sorted({*ids, *select_trials(run.trials, run.chosen, "chosen")})
    return {t: config_from_json(str(trials.loc[t, "config"])) for t in ids}


def _torch_round(eenns: dict[str, EENN], x: torch.Tensor, tables: tuple[ProfileTable, ...],
                 *, n_b1: int, repeats: int) -> dict[str, dict[str, float]]:
    b1, batched = tables
    out = {}
    for key, eenn in eenns.items():
        with torch.inference_mode():
            taken = eenn(x).exit.numpy()
        out[key] = {
            "measured_b1_s": measure_latency(eenn, x[:n_b1], batch=1, repeats=repeats,
                                             threads=1, clock=b1.clock),
            "predicted_b1_s": predicted_latency(b1, eenn, taken[:n_b1]),
            "measured_batch_s": measure_latency(eenn, x, batch=batched.batch, repeats=repeats,
                                                threads=1, clock=b1.clock),
            "predicted_batch_s": predicted_latency(batched, eenn, taken)}
    return out


def _onnx_round(runners: dict[str, OnnxEENN], x: np.ndarray, tables: tuple[ProfileTable, ...],
                *, n_b1: int, repeats: int) -> dict[str, dict[str, float]]:
    b1, batched = tables
    out = {}
    for key, runner in runners.items():
        taken = runner.exits(x)
        out[key] = {
            "measured_b1_s": runner.latency(x[:n_b1], repeats=repeats, clock=b1.clock),
            "predicted_b1_s": float(path_seconds(b1, exits=runner.exit_pieces)[
                taken[:n_b1]].mean()),
            "measured_batch_s": runner.latency_pooled(x, batch=batched.batch, repeats=repeats,
                                                      clock=b1.clock),
            "predicted_batch_s": float(path_seconds(batched, exits=runner.exit_pieces)[
                taken].mean())}
    return out


def _summarise(rounds: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Median over rounds of every figure, and the relative errors of the medians."""
    out: dict[str, dict[str, float]] = {}
    for key in rounds[0]:
        fig = {k: float(median(r[key][k] for r in rounds)) for k in rounds[0][key]}
        for b in ("b1", "batch"):
            if f"measured_{b}_s" in fig:
                fig[f"rel_error_{b}"] = fig[f"predicted_{b}_s"] / fig[f"measured_{b}_s"] - 1.0
        out[key] = fig
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--profile-repeats", type=int, default=15)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--b1-samples", type=int, default=200)
    parser.add_argument("--clock", default="cpu", choices=["cpu", "wall"])
    parser.add_argument("--cache", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.time()
    tmp = Path(tempfile.mkdtemp(prefix="bench-fidelity-"))
    cache = args.cache or tmp / "cache"
    prof_run = load_run(_search(tmp / "profile", cache))
    mac_run = load_run(_search(tmp / "macs", cache, _mac_platform(prof_run)))
    prep = prof_run.prepared
    runs = {"profile": prof_run, "macs": mac_run}
    points = {name: _points(r) for name, r in runs.items()}
    configs: dict[str, EENNConfig] = {"backbone": EENNConfig(exits=())}
    for name, pts in points.items():
        configs.update({f"{name}:{t}": c for t, c in pts.items()})
    eenns = {k: build_eenn(prep.model, c, candidates=prep.profile.candidates,
                           heads=prep.heads.heads, n_devices=1).cpu().eval()
             for k, c in configs.items()}
    x = torch.cat([b.float() for b, _ in iter_batches(prep.data.test, 1024)])
    onnx_keys = ["backbone", *(f"profile:{t}" for t in points["profile"])]
    runners = {k: OnnxEENN.export(eenns[k], out=tmp / "onnx" / k.replace(":", "_"),
                                  example=x[:64], platform=prep.platform, costs=prep.costs,
                                  candidates=prep.profile.candidates) for k in onnx_keys}
    subject = subject_of(prep)
    settings = {rt: ProfileSettings(entries=(f"{rt}/fp32",), batches=(1, args.batch),
                                    repeats=args.profile_repeats, threads=1, clock=args.clock)
                for rt in ("torch", "onnxruntime")}
    torch_rounds, onnx_rounds, profiles = [], [], []
    for _ in range(args.rounds):  # each runtime profiled right before its points are timed
        profile = measure_profile(subject, settings["torch"])
        tables = (profile.table("torch", "fp32", 1), profile.table("torch", "fp32", args.batch))
        torch_rounds.append(_torch_round(eenns, x, tables, n_b1=args.b1_samples,
                                         repeats=args.repeats))
        onnx_profile = measure_profile(subject, settings["onnxruntime"])
        profiles.append([profile.as_json(), onnx_profile.as_json()])
        onnx_tables = (onnx_profile.table("onnxruntime", "fp32", 1),
                       onnx_profile.table("onnxruntime", "fp32", args.batch))
        onnx_rounds.append(_onnx_round(runners, x.numpy(), onnx_tables, n_b1=args.b1_samples,
                                       repeats=args.repeats))
    torch_fig, onnx_fig = _summarise(torch_rounds), _summarise(onnx_rounds)
    out = _report(args, runs, points, configs, torch_fig, onnx_fig, prep)
    out.update({"seconds": time.time() - started, "profiles_per_round": profiles})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(json.dumps({k: v for k, v in out.items() if k not in ("points", "profiles_per_round")},
                     indent=1))


def _speedups(fig: dict[str, dict[str, float]], key: str, mac_ratio: float) -> dict[str, float]:
    bb, pt = fig["backbone"], fig[key]
    return {"measured_speedup_b1": bb["measured_b1_s"] / pt["measured_b1_s"],
            "predicted_speedup_b1": bb["predicted_b1_s"] / pt["predicted_b1_s"],
            "measured_speedup_batch": bb["measured_batch_s"] / pt["measured_batch_s"],
            "predicted_speedup_batch": bb["predicted_batch_s"] / pt["predicted_batch_s"],
            "mac_ratio_test": mac_ratio}


def _mac_ratio(prep: Any, eenn: EENN, x: torch.Tensor) -> float:
    from evaluators.costs import path_costs

    with torch.inference_mode():
        taken = eenn(x).exit.numpy()
    macs = path_costs(eenn.config, prep.costs, prep.platform).macs
    return float(prep.costs.total_macs) / float(macs[taken].mean())


def _report(args: argparse.Namespace, runs: dict[str, LoadedRun],
            points: dict[str, dict[int, EENNConfig]], configs: dict[str, EENNConfig],
            torch_fig: dict[str, dict[str, float]], onnx_fig: dict[str, dict[str, float]],
            prep: Any) -> dict[str, Any]:
    profile_keys = [f"profile:{t}" for t in points["profile"]]
    all_keys = [k for k in configs if k != "backbone"]
    err = {b: [abs(torch_fig[k][f"rel_error_{b}"]) for k in all_keys] for b in ("b1", "batch")}
    chosen: dict[str, Any] = {}
    x = torch.cat([b.float() for b, _ in iter_batches(prep.data.test, 1024)])
    for name, run in runs.items():
        t = int(run.chosen["trial"])
        key = f"{name}:{t}"
        eenn = build_eenn(prep.model, configs[key], candidates=prep.profile.candidates,
                          heads=prep.heads.heads, n_devices=1)
        chosen[name] = {"trial": t, "config": json.loads(str(run.trials.set_index(
            "trial").loc[t, "config"])), **_speedups(torch_fig, key, _mac_ratio(prep, eenn, x))}
    ratio = (chosen["profile"]["measured_speedup_b1"]
             / chosen["profile"]["predicted_speedup_b1"])
    onnx_err = {b: [abs(onnx_fig[k][f"rel_error_{b}"]) for k in onnx_fig if k != "backbone"]
                for b in ("b1", "batch")}
    return {
        "benchmark": "latency_fidelity",
        "what": "default experiment (MnistCNN, MNIST-5k) searched with objectives [error, "
                "latency] on platform=host (profile-priced) and on the same host MAC-priced "
                "(rate calibrated on the backbone); every Pareto point of both fronts run for "
                "real in torch and, for the profile front, in onnxruntime fp32 (batch 1 and pooled "
                "throughput); predicted = a fresh profile of this machine priced "
                "over the exits the measured samples took; median over rounds",
        "code": code_state(),
        "machine": {"cpus": os.cpu_count(), "torch_threads": 1, "onnxruntime_threads": 1,
                    "python": _platform.python_version(), "torch": torch.__version__,
                    "load_average_at_end": list(os.getloadavg()),
                    "note": "a shared 2-core machine with other engineers' jobs running: each "
                            "round re-profiles before measuring, medians over rounds; clock "
                            f"{args.clock!r} (cpu = the timing thread's CPU time, not inflated "
                            "by other processes' time slices; one intra-op thread, so the work "
                            "runs in that thread)"},
        "settings": {"rounds": args.rounds, "repeats": args.repeats,
                     "profile_repeats": args.profile_repeats, "batch": args.batch,
                     "b1_samples": args.b1_samples, "batch_samples": len(x),
                     "clock": args.clock},
        "median_abs_rel_error_b1": float(np.median(err["b1"])),
        "median_abs_rel_error_batch": float(np.median(err["batch"])),
        "median_abs_rel_error_b1_profile_front": float(np.median(
            [abs(torch_fig[k]["rel_error_b1"]) for k in profile_keys])),
        "onnxruntime": {f"median_abs_rel_error_{b}": float(np.median(v)) for b, v in
                        onnx_err.items()},
        "chosen_measured_over_predicted_speedup": ratio,
        "chosen": chosen,
        "targets": {"median_abs_rel_error <= 0.15 (b1, batch)": bool(
            max(np.median(err["b1"]), np.median(err["batch"])) <= 0.15),
            "chosen measured/predicted speed-up >= 0.8 (b1)": bool(ratio >= 0.8)},
        "points": {"torch": torch_fig, "onnxruntime": onnx_fig,
                   "fronts": {n: sorted(p) for n, p in points.items()}},
    }


if __name__ == "__main__":
    main()
