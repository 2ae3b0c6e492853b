"""Benchmark: a run's points deployed as one process per tier, measured against the model.

Writes results/benchmarks/deploy.json. Points: the chosen point of the default experiment
(MnistCNN on MNIST-5k, nRF52840 -> Raspberry Pi 4 -> T4 over BLE and Ethernet) and the Pareto
point whose stages span the most tiers. Each is deployed in network namespaces with the links
shaped by ``tc tbf`` to the platform's bandwidth and each link's latency added by its receiver
(loopback when namespaces are unavailable, said in ``mode``), and on plain loopback:

- ``low_load``: ``--low-load`` test samples, one in flight: end-to-end latency against the
  prediction (each stage timed alone with onnxruntime at batch 1 on this host, and each stage
  priced from this host's onnxruntime device profile, :mod:`evaluators.device_profile`; plus
  the link model bytes * 8 / bandwidth + latency for each link a sample crosses);
- ``throughput``: every test sample with 8 and 64 in flight (and 1 from ``low_load``);
- per link: payload bytes per sample on the socket against the manifest, framing apart, and
  in namespaces the bytes on the veth (Ethernet, IP, TCP and ZMTP headers included);
- every answer against the reference runner with the same wire precision (all test samples).

The compute is this host's CPU, not the platform's devices: the latency check is of the
deployment (processes, sockets, shaped links) against a model priced with this host's times.

Usage: python benchmarks/bench_deploy.py [--run DIR] [--low-load 200]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _provenance import code_state

from search import rundir
from search.deploy import _netns
from search.deploy.distributed import DeployOptions
from search.deploy.stream import measure, profile_stage_times, resolve_point

OUT = Path(__file__).resolve().parents[1] / "results" / "benchmarks" / "deploy.json"


def _default_run(folder: Path) -> Path:
    from hydra import compose, initialize_config_module
    from rich.console import Console

    from search.run import run

    with initialize_config_module(config_module="conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=["device=cpu"])
    with open(os.devnull, "w") as quiet:
        run(cfg, run_dir=folder, console=Console(file=quiet), progress=False)
    return folder


def _spread_point(run_dir: Path) -> int:
    """The Pareto trial that answers on the most tiers (val ``device_fractions``), the most
    evenly (ties: the largest smallest share)."""
    rows = rundir.load_run(run_dir).trials
    rows = rows[rows["pareto"].astype(bool)]
    shares = [[f for f in json.loads(d) if f > 0] for d in rows["device_fractions"]]
    rows = rows.assign(n=[len(s) for s in shares], low=[min(s) for s in shares]).sort_values(
        ["n", "low"], ascending=False)
    return int(rows["trial"].iloc[0])


def _brief(doc: dict[str, Any]) -> dict[str, Any]:
    pred = doc.get("predicted_latency_s", {})
    return {
        "samples": doc["samples"], "window": doc["window"], "mode": doc["mode"],
        "throughput_per_s": doc["throughput_per_s"], "latency_s": doc["latency_s"]["ok"],
        "answers": doc["answers"], "accuracy": doc.get("accuracy"),
        "exit_fractions": doc["exit_fractions"],
        "reference_runner": doc["reference_runner"],
        "reference_runner_float_links": doc["reference_runner_float_links"],
        "predicted_latency_s": pred,
        "predicted_latency_from_profile_s": doc.get("predicted_latency_from_profile_s"),
        "latency_breakdown_median_s": doc["latency_breakdown_median_s"],
        "links": doc["links"], "tiers": doc["tiers"], "shaping": doc.get("shaping"),
    }


def _point(run_dir: Path, point: str, *, low_load: int, netns: bool) -> dict[str, Any]:
    pt = resolve_point(run_dir, point=point)
    manifest = json.loads(pt.manifest.read_text())
    opts = DeployOptions(netns=netns, log_dir=Path(tempfile.mkdtemp(prefix="bench-deploy-")))
    t0 = time.perf_counter()
    prof = profile_stage_times(run_dir, pt.manifest)
    (low,) = measure(pt.manifest, pt.x[:low_load], pt.y[:low_load] if pt.y is not None
                     else None, options=opts, windows=[1], profile_times=prof)
    busy = measure(pt.manifest, pt.x, pt.y, options=opts, windows=[8, 64])
    return {
        "trial": pt.trial, "config": manifest["config"],
        "devices": [d["name"] for d in manifest["devices"]],
        "stage_devices": [st["device_name"] for st in manifest["stages"]],
        "low_load": _brief(low),
        "throughput_per_s": {"1": low["throughput_per_s"],
                             **{str(d["window"]): d["throughput_per_s"] for d in busy}},
        "all_test_samples": [_brief(d) for d in busy],
        "wall_s": time.perf_counter() - t0,
    }


def _check(res: dict[str, Any]) -> dict[str, Any]:
    docs = [res["low_load"], *res["all_test_samples"]]
    pred = res["low_load"]["predicted_latency_s"]
    return {
        "payload_equals_manifest_every_link": all(
            lk["payload_equals_manifest"] is not False for d in docs for lk in d["links"]),
        "reference_mismatches_all_test": sum(
            d["reference_runner"]["prediction_mismatches"] + d["reference_runner"][
                "exit_mismatches"] for d in res["all_test_samples"]),
        "every_sample_answered_once": all(
            d["answers"]["answered_once"] == d["samples"] == d["answers"]["ok"] for d in docs),
        "low_load_mean_measured_over_predicted": pred.get("mean_ratio_measured_to_predicted"),
        "low_load_mean_measured_over_predicted_with_wire_bytes": pred.get(
            "mean_ratio_measured_to_predicted_with_wire_bytes"),
        "low_load_mean_measured_over_profile_prediction": (res["low_load"][
            "predicted_latency_from_profile_s"] or {}).get("mean_ratio_measured_to_predicted"),
        "low_load_mean_measured_over_profile_prediction_with_wire_bytes": (res["low_load"][
            "predicted_latency_from_profile_s"] or {}).get(
            "mean_ratio_measured_to_predicted_with_wire_bytes"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=None)
    parser.add_argument("--low-load", type=int, default=200)
    args = parser.parse_args()
    run_dir = args.run or _default_run(Path(tempfile.mkdtemp(prefix="bench-deploy-run-")))
    chosen = (rundir.load_run(run_dir).chosen or {}).get("trial")
    why = _netns.unavailable()
    points: dict[str, Any] = {}
    for name, point in (("chosen", "chosen"), ("spread", str(_spread_point(run_dir)))):
        if name == "spread" and int(point) == chosen:
            continue
        for mode, netns in (("shaped", why is None), ("loopback", False)):
            if mode == "shaped" and why is not None:
                continue
            res = _point(run_dir, point, low_load=args.low_load, netns=netns)
            points[f"{name}_{mode}"] = {**res, "check": _check(res)}
            print(name, mode, json.dumps(points[f"{name}_{mode}"]["check"]),
                  {k: round(v, 1) for k, v in res["throughput_per_s"].items()}, flush=True)
    out = {
        "benchmark": "deploy", "run": str(run_dir),
        "namespaces": "available" if why is None else f"unavailable ({why}): loopback only",
        "host": {"python": platform.python_version(), "machine": platform.machine(),
                 "cpus": os.cpu_count()},
        "code": code_state(), "points": points,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(out, indent=2))
    print(f"written: {OUT}")


if __name__ == "__main__":
    main()
