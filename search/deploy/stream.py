"""``python -m search.deploy RUN``: deploy a run's point as one process per tier and stream.

``python -m search.deploy RUN [--point chosen|TRIAL] [--int8] [--netns] [--rate HZ]
[--window N] [--split test|val | --npz FILE] [--limit N] [--manifest FILE] [--out FILE]``

The point's export (``RUN/export/trial_<id>/manifest.json``, made first if absent) is
checked against the run (same trial, configuration, backbone weights and devices), deployed
with :class:`search.deploy.distributed.Deployment` (loopback, or ``--netns``: one network
namespace per tier, links shaped to the platform's bandwidths, the link latency added by each
receiver), fed with the split as a stream, and measured into ``RUN/deploy.json``
(:mod:`search.deploy._report`). The answers are checked against the reference runner with the
same wire precision on every sample.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from search import rundir
from search.deploy import _netns
from search.deploy._onnx_runner import run_manifest
from search.deploy._report import deploy_report, stage_times
from search.deploy.distributed import (
    DeployError,
    Deployment,
    DeployOptions,
    check_manifest,
)

__all__ = ["DEPLOY", "Point", "main", "measure", "profile_stage_times", "resolve_point"]

DEPLOY = rundir.DEPLOY


@dataclass(frozen=True, kw_only=True, eq=False)
class Point:
    """A deployable point: its manifest and the inputs (and labels) to stream."""

    trial: int
    manifest: Path
    x: NDArray[np.float32]
    y: NDArray[np.int64] | None


def _trial(run: rundir.Run, point: str) -> tuple[int, dict[str, Any]]:
    from search.deploy._loaded import select_trials

    if point != "chosen" and not str(point).strip().isdigit():
        raise ValueError(f"--point {point!r} is not 'chosen' or a trial id")
    (trial,) = select_trials(run.trials, run.chosen or {}, str(point))
    row = run.trials.set_index("trial").loc[trial]
    return trial, json.loads(str(row["config"]))


def _same_run(manifest: dict[str, Any], path: Path, *, trial: int, config: dict[str, Any],
              summary: dict[str, Any]) -> None:
    """The manifest must be this run's export of this trial: same trial id, exits and
    boundaries, and (where both record it) the same backbone weights."""
    mine, theirs = manifest.get("run", {}).get("weights_hash"), summary.get("weights_hash")
    exported = manifest.get("config", {})
    same = (manifest.get("trial") == trial and exported.get("exits") == config["exits"]
            and exported.get("boundaries") == config["boundaries"]
            and (not mine or not theirs or mine == theirs))
    if not same:
        raise DeployError(f"{path} is the export of another run or point (trial "
                          f"{manifest.get('trial')}, not {trial}); export this point with "
                          "python -m search.deploy.export RUN --point ... or drop --manifest")


def _inputs(run_dir: Path, split: str,
            npz: Path | None) -> tuple[NDArray[Any], NDArray[Any] | None]:
    if npz is not None:
        with np.load(npz) as data:
            if "x" not in data:
                raise ValueError(f"--npz {npz} has no array 'x' (arrays: {list(data)}); "
                                 "save the inputs as x= (and labels as y=)")
            return np.asarray(data["x"], np.float32), (np.asarray(data["y"])
                                                       if "y" in data else None)
    import torch

    from evaluators.features import iter_batches
    from search.deploy._loaded import load_run

    if split not in ("val", "test"):
        raise ValueError(f"--split {split!r} is not val or test")
    data = getattr(load_run(run_dir).prepared.data, split)
    xs, ys = zip(*iter_batches(data, 1024), strict=True)
    return torch.cat([x.float() for x in xs]).numpy(), torch.cat(list(ys)).numpy()


def resolve_point(run_dir: Path, *, point: str = "chosen", int8: bool = False,
                  manifest: Path | None = None, split: str = "test", npz: Path | None = None,
                  limit: int | None = None) -> Point:
    """The manifest of a run's point (exported first if absent), checked, and its inputs."""
    run = rundir.load_run(Path(run_dir))
    trial, config = _trial(run, point)
    path = manifest or rundir.export_dir(run_dir, trial) / (
        rundir.MANIFEST_INT8 if int8 else rundir.MANIFEST)
    if manifest is None and not path.is_file():
        from search.deploy.export import export_point

        print(f"exporting trial {trial} first ({path.parent})", file=sys.stderr)
        export_point(Path(run_dir), point=str(trial), int8=int8)
    devices = [d["name"] for d in ((run.config or {}).get("platform") or {}).get("devices", [])]
    m = check_manifest(path, devices=devices or None)
    _same_run(m, path, trial=trial, config=config, summary=run.summary)
    x, y = _inputs(Path(run_dir), split, npz)
    if limit is not None:
        x, y = x[:limit], (None if y is None else y[:limit])
    return Point(trial=trial, manifest=path, x=x, y=y)


def profile_stage_times(run_dir: Path, manifest_path: Path) -> list[float]:
    """Each stage of the manifest priced from this host's onnxruntime device profile
    (:func:`search.profile.host_profile`: measured once per backbone and cached): the segments
    it runs as one call, then its head; int8 stages from the int8 table."""
    from evaluators.device_profile import stage_seconds
    from search.deploy._loaded import load_run
    from search.profile import ProfileSettings, host_profile
    from search.profile._subject import subject_of

    manifest = check_manifest(manifest_path)
    precision = ["int8" if st.get("precision") == "int8" else "fp32" for st in manifest["stages"]]
    run = load_run(Path(run_dir))
    profile = host_profile(subject_of(run.prepared), ProfileSettings(
        entries=tuple(f"onnxruntime/{p}" for p in sorted(set(precision))), batches=(1,)),
        cache_dir=run.settings.cache_dir)
    names = list(profile.candidates)
    out, first = [], 0
    for st, prec in zip(manifest["stages"], precision, strict=True):
        last = len(names) if st["final"] else names.index(st["activation"] or st["exit"]["at"])
        head = (int(st["exit"]["candidate"]), int(st["exit"]["head"])) if st["exit"] else None
        out.append(stage_seconds(profile.table("onnxruntime", prec, 1), first=first, last=last,
                                 head=head))
        first = last + 1
    return out


def measure(manifest_path: Path, x: NDArray[Any], y: NDArray[Any] | None, *,
            options: DeployOptions, windows: Sequence[int] = (64,),
            rate: float | None = None,
            profile_times: Sequence[float] | None = None) -> list[dict[str, Any]]:
    """Deploy once and stream ``x`` once per window; one ``deploy.json`` document each
    (``profile_times``: :func:`profile_stage_times`, for a second prediction)."""
    manifest = check_manifest(manifest_path)
    reference = run_manifest(manifest_path, x, wire=True)
    reference_float = run_manifest(manifest_path, x)
    times = stage_times(manifest_path, x)
    docs = []
    with Deployment(manifest_path, options) as dep:
        plan = dep.plan
        propagation = options.propagation if options.propagation is not None else bool(plan)
        for window in windows:
            before = ([_netns.wire_bytes(ns, dev) for ns, dev in
                       zip(plan.namespaces, plan.interfaces, strict=False)] if plan else [])
            result = dep.stream(x, window=window, rate=rate)
            wire: list[int | None] = ([_netns.wire_bytes(ns, dev) - b for ns, dev, b in
                                       zip(plan.namespaces, plan.interfaces, before,
                                           strict=False)] if plan else [])
            doc = deploy_report(manifest=manifest, result=result, labels=y, reference=reference,
                                reference_float=reference_float, times=times, mode=dep.mode,
                                shaped=plan is not None, propagation=propagation, wire=wire,
                                profile_times=profile_times)
            if plan is not None:
                doc["shaping"] = [vars(s) for s in plan.shaping]
            docs.append(doc)
    return docs


def _summary(doc: dict[str, Any]) -> str:
    lat, ans = doc["latency_s"]["ok"], doc["answers"]
    links = ", ".join(f"{lk['name']} {lk['payload_bytes_per_sample']} B/sample "
                      f"(manifest {lk['manifest_bytes_sent']})" for lk in doc["links"])
    ref = doc["reference_runner"]
    return (f"{doc['samples']} samples ({doc['mode']}): {ans['ok']} ok, {ans['degraded']} "
            f"degraded, {ans['failed']} failed, {ans['timeout']} timed out; latency p50 "
            f"{lat['p50'] * 1e3:.2f} ms p99 {lat['p99'] * 1e3:.2f} ms; "
            f"{doc['throughput_per_s']:.0f} samples/s; accuracy {doc.get('accuracy', 'n/a')}; "
            f"vs reference runner: {ref['prediction_mismatches']} prediction and "
            f"{ref['exit_mismatches']} exit mismatches; links: {links or 'none'}")


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; errors are one line on stderr and exit status 2."""
    from search.errors import one_line_errors

    p = argparse.ArgumentParser(prog="python -m search.deploy",
                                description="Deploy a run's point as one process per tier.")
    p.add_argument("run", type=Path, help="run folder (results/runs/<date_time>)")
    p.add_argument("--point", default="chosen", help="chosen (default) or one trial id")
    p.add_argument("--int8", action="store_true", help="deploy manifest_int8.json")
    p.add_argument("--manifest", type=Path, default=None, help="deploy this manifest instead")
    p.add_argument("--netns", action="store_true",
                   help="one network namespace per tier, links shaped with tc tbf (root)")
    p.add_argument("--split", default="test", help="test (default) or val")
    p.add_argument("--npz", type=Path, default=None, help="stream x (and y) from this file")
    p.add_argument("--limit", type=int, default=None, help="stream only the first N samples")
    p.add_argument("--rate", type=float, default=None, help="samples/s (default: as fast as "
                   "the window allows)")
    p.add_argument("--window", type=int, default=64, help="samples in flight (default 64)")
    p.add_argument("--no-propagation", action="store_true",
                   help="do not add the links' latency at the receivers (netns)")
    p.add_argument("--profile", action="store_true",
                   help="also predict latency from this host's onnxruntime device profile "
                        "(measured once, cached like python -m search.profile's)")
    p.add_argument("--out", type=Path, default=None, help=f"default: RUN/{DEPLOY}")
    args = p.parse_args(argv)
    # a SIGTERM unwinds like Ctrl-C, so the workers stop and the namespaces go
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with one_line_errors(DeployError):
        if args.window < 1 or (args.rate is not None and args.rate <= 0):
            raise ValueError("--window must be >= 1 and --rate > 0")
        pt = resolve_point(args.run, point=args.point, int8=args.int8, manifest=args.manifest,
                           split=args.split, npz=args.npz, limit=args.limit)
        opts = DeployOptions(netns=args.netns, log_dir=args.run / rundir.DEPLOY_LOGS,
                             propagation=False if args.no_propagation else None)
        prof = profile_stage_times(args.run, pt.manifest) if args.profile else None
        try:
            (doc,) = measure(pt.manifest, pt.x, pt.y, options=opts, windows=[args.window],
                             rate=args.rate, profile_times=prof)
        except KeyboardInterrupt:
            print("interrupted: the workers are stopped and the namespaces removed; "
                  "nothing was written", file=sys.stderr)
            raise SystemExit(130) from None
        doc = {"manifest": str(pt.manifest), **doc}
        out = args.out or args.run / DEPLOY
        out.write_text(json.dumps(doc, indent=2))
        print(_summary(doc))
        print(f"written: {out}")
        return 0 if doc["answers"]["answered_once"] == doc["samples"] else 1
    return 2
