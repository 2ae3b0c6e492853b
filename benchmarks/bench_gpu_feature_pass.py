"""Benchmark: ``resnet152_cifar10`` on one GPU, from the floor to the whole run with a checkpoint.

Merges its parts into one JSON (``--out``, default results/benchmarks/gpu_feature_pass.json;
every figure names its device and precision). ``benchmarks/gpu_check.sh`` runs each part in
its own process, the end-to-end run first, so that it starts as a user's run does (CUDA
context, cuDNN autotuning and all). Inputs are random: an untrained (seeded) CIFAR ResNet-152
and noise images written as real CIFAR-10 pickles. A speed check, not an accuracy one.

* ``e2e``: ``search.run.run`` of ``+experiment=resnet152_cifar10`` in process with
  ``model.checkpoint`` given, 45,000/5,000/10,000 samples, the experiment's settings (train
  features in ``features.train_precision``, val/test in ``features.eval_precision``), a fresh
  cache; timed per phase (data, backbone, profile, features, heads, table, search, results,
  report, other), twice (the second run has a warm process but an empty cache).
* ``cli``: the same as ``python -m search`` in a subprocess (interpreter and imports included),
  against ``python -c "import search.run"`` as the fixed cost.
* ``inference``: plain inference over all samples (inputs already normalised on the device),
  channels-last: bf16 autocast (the floor, at two batch sizes), TF32 and IEEE fp32; the one-pass
  feature extraction in bf16 throughout (ratio to the floor); how far tf32 and bf16 features and
  logits are from fp32 ones (relative L2 error, argmax agreement).
* ``compile``: ``torch.compile`` of the backbone in bf16: compile time against the time it saves
  on one pass over all samples (batch 240 divides 60,000, so one compiled shape serves).
* ``summary``: prints the table of the JSON.

Usage: python benchmarks/bench_gpu_feature_pass.py --part e2e|cli|inference|compile|summary
       [--samples N] [--workdir DIR] [--out FILE] [--smoke]   (--smoke: tiny, runs on a CPU)
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _gpu_bench import (  # noqa: E402
    device_inputs,
    images,
    merge,
    pick_device,
    summary_lines,
    sync,
    timed_pass,
    untrained,
)

from evaluators._extract import build_extractor, precision_mode  # noqa: E402
from evaluators.features import extract_features  # noqa: E402
from spaces.profile import profile_backbone  # noqa: E402

OUT = ROOT / "results" / "benchmarks" / "gpu_feature_pass.json"
MAX_CANDIDATES, POOL = 10, 2  # as conf/experiment/resnet152_cifar10.yaml
PHASES = (  # (module, function, phase): what the end-to-end breakdown times
    ("search.pipeline", "load_data", "data"),
    ("search.pipeline", "get_backbone", "backbone"),
    ("search.pipeline", "cached_profile", "profile"),
    ("search.pipeline", "profile_backbone", "profile"),
    ("search.pipeline", "extract_features", "features"),
    ("search.pipeline", "train_heads", "heads"),
    ("search.pipeline", "build_prediction_table", "table"),
    ("search.run", "run_search", "search"),
    ("search.loop", "write_results", "results"),
    ("search.run", "write_summary", "results"),
    ("search.run", "write_report", "report"),
)


# -- plain inference, the floor and the feature pass ---------------------------------------


def _agreement(model: nn.Module, x: Tensor, points: list[str], device: torch.device) -> Any:
    """Relative L2 error of features and logits in tf32 / bf16 against IEEE fp32; argmax match."""
    extractor = build_extractor(model, points, "node", POOL)
    outs = {}
    for precision in ("fp32", "tf32", "bf16"):
        with torch.inference_mode(), precision_mode(precision, device):
            parts = [extractor(x[i : i + 256]) for i in range(0, len(x), 256)]
        outs[precision] = [torch.cat([p[k] for p in parts]).float() for k in range(len(parts[0]))]
    result = {}
    for precision in ("tf32", "bf16"):
        errors = [
            float((a - b).norm() / b.norm().clamp_min(1e-30))
            for a, b in zip(outs[precision], outs["fp32"], strict=True)
        ]
        same = outs[precision][0].argmax(1) == outs["fp32"][0].argmax(1)
        result[precision] = {
            "logits_rel_l2": errors[0],
            "features_rel_l2_max": max(errors[1:]),
            "argmax_agreement": float(same.float().mean()),
        }
    return {"samples": len(x), **result}


def _feature_pass(model: nn.Module, samples: int, batch: int, device: torch.device) -> Any:
    """The pipeline's one-pass extraction (45:5:10 splits) in bf16 throughout, into a temp cache."""
    profile = profile_backbone(model, torch.zeros(1, 3, 32, 32), max_candidates=MAX_CANDIDATES)
    val, test = samples // 12, samples // 6
    splits = {"train": samples - val - test, "val": val, "test": test}
    data = {s: images(n, k) for k, (s, n) in enumerate(splits.items())}
    with tempfile.TemporaryDirectory(prefix="bench-features-") as cache:
        sync(device)
        t0 = time.perf_counter()
        store = extract_features(
            model,
            data,
            points=[c.name for c in profile.candidates],
            pool=POOL,
            cache_dir=Path(cache),
            weights_hash="bench",
            data_fingerprint=f"random-{samples}",
            batch_size=batch,
            budget_gib=64.0,
            device=device.type,
            train_precision="bf16",
            eval_precision="bf16",
            progress=False,
        )
        sync(device)
        seconds = time.perf_counter() - t0
        cache_bytes = sum(f.stat().st_size for f in Path(cache).rglob("*") if f.is_file())
    return {
        "seconds": seconds,
        "precision": dict(store.precision),
        "splits": splits,
        "batch_size": batch,
        "candidates": len(profile.candidates),
        "pool": POOL,
        "cache_gib": cache_bytes / 2**30,
        "macs_per_sample": profile.total_macs,
    }


def inference_part(args: argparse.Namespace) -> None:
    device = pick_device()
    model = untrained(args.seed, args.arch)
    profile = profile_backbone(model, torch.zeros(1, 3, 32, 32), max_candidates=MAX_CANDIDATES)
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    x = device_inputs(args.samples, args.seed, device)
    runs = {}
    for name, precision, batch, autotune in (
        ("bf16_b256", "bf16", args.batch_size, False),
        ("bf16_b256_autotune", "bf16", args.batch_size, True),
        ("bf16_b512", "bf16", 2 * args.batch_size, False),
        ("tf32_b256", "tf32", args.batch_size, False),
        ("fp32_b256", "fp32", args.batch_size, False),
    ):
        seconds, warmup = timed_pass(
            model, x, batch=batch, precision=precision, device=device, autotune=autotune
        )
        runs[name] = {
            "precision": precision,
            "batch_size": batch,
            "cudnn_autotune": autotune,
            "seconds": seconds,
            "warmup_s": warmup,
            "samples_per_s": len(x) / seconds,
        }
    floor = min(r["seconds"] for k, r in runs.items() if k.startswith("bf16"))
    points = [c.name for c in profile.candidates]
    result = {
        "samples": len(x),
        "layout": "channels_last" if device.type == "cuda" else "contiguous",
        "inputs": "normalised float32, already on the device",
        "plain": runs,
        "floor_s": floor,
        "agreement_vs_fp32": _agreement(model, x[: min(len(x), 4096)], points, device),
        "feature_pass_bf16": _feature_pass(
            untrained(args.seed, args.arch), args.samples, args.batch_size, device
        ),
    }
    result["feature_pass_bf16"]["ratio_to_floor"] = result["feature_pass_bf16"]["seconds"] / floor
    merge(args.out, "inference", result)


def compile_part(args: argparse.Namespace) -> None:
    """torch.compile of the backbone in bf16: compile time against one pass's saving."""
    device = pick_device()
    model = untrained(args.seed, args.arch).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    x = device_inputs(args.samples, args.seed, device)
    batch = min(240, len(x))  # divides 60,000: one compiled shape serves the whole pass
    eager, _ = timed_pass(model, x, batch=batch, precision="bf16", device=device)
    compiled = torch.compile(model)
    with torch.inference_mode(), precision_mode("bf16", device):
        t0 = time.perf_counter()
        compiled(x[:batch])
        sync(device)
        compile_s = time.perf_counter() - t0
    fast, _ = timed_pass(compiled, x, batch=batch, precision="bf16", device=device)
    saving = eager - fast
    merge(
        args.out,
        "compile",
        {
            "samples": len(x),
            "batch_size": batch,
            "precision": "bf16",
            "eager_pass_s": eager,
            "compile_s": compile_s,
            "compiled_pass_s": fast,
            "saving_per_pass_s": saving,
            "paid_back_in_one_pass": compile_s + fast < eager,
            "passes_to_pay_back": compile_s / saving if saving > 0 else None,
        },
    )


# -- the whole run -------------------------------------------------------------------------


class _Phases:
    """Exclusive wall time per phase of a run, from the functions it calls (synchronised)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: dict[str, float] = {}
        self._inner: list[float] = []

    def _timed(self, phase: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*a: Any, **k: Any) -> Any:
            sync(self.device)
            t0 = time.perf_counter()
            self._inner.append(0.0)
            try:
                return real(*a, **k)
            finally:
                sync(self.device)
                elapsed = time.perf_counter() - t0
                inner = self._inner.pop()
                self.seconds[phase] = self.seconds.get(phase, 0.0) + elapsed - inner
                if self._inner:
                    self._inner[-1] += elapsed

        return timed

    @contextlib.contextmanager
    def installed(self) -> Iterator[list[str]]:
        """Wrap every function of PHASES that exists; yield the phases wrapped; unwrap."""
        undo: list[tuple[Any, str, Any]] = []
        wrapped: list[str] = []
        for module_name, name, phase in PHASES:
            module = importlib.import_module(module_name)
            real = getattr(module, name, None)
            if real is not None:  # a renamed function: its time lands in "other"
                undo.append((module, name, real))
                wrapped.append(phase)
                setattr(module, name, self._timed(phase, real))
        try:
            yield wrapped
        finally:
            for module, name, real in undo:
                setattr(module, name, real)


def _write_cifar(root: Path, samples: int, seed: int) -> None:
    """Random images as CIFAR-10 python pickles (5 train batches + test batch + meta)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    names = [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]
    for k, part in enumerate(np.array_split(np.arange(samples), len(names))):
        data = rng.integers(0, 256, size=(len(part), 3072), dtype=np.uint8)
        with (folder / names[k]).open("wb") as fh:
            pickle.dump({"data": data, "labels": (part % 10).tolist()}, fh)
    with (folder / "batches.meta").open("wb") as fh:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, fh)


def _setup(workdir: Path, samples: int, seed: int) -> tuple[Path, Path]:
    """CIFAR pickles and an untrained ResNet-152 checkpoint in ``workdir`` (made once)."""
    data, ckpt = workdir / f"cifar10-{samples}", workdir / f"resnet152-{seed}.pt"
    if not (data / "cifar-10-batches-py" / "batches.meta").is_file():
        _write_cifar(data, samples, seed)
    if not ckpt.is_file():
        torch.save(untrained(seed).state_dict(), ckpt)
    return data, ckpt


def _overrides(args: argparse.Namespace, data: Path, ckpt: Path, cache: Path) -> list[str]:
    val, test = args.samples // 12, args.samples // 6  # CIFAR-10 proportions 45000:5000:10000
    out = [
        "+experiment=resnet152_cifar10",
        f"data.root={data}",
        f"model.checkpoint={ckpt}",
        f"seed={args.seed}",
        f"data.splits.train={args.samples - val - test}",
        f"data.splits.val={val}",
        f"data.splits.test={test}",
        f"device={pick_device().type}",
        f"cache_dir={cache}",
    ]
    return out + (["search.budget=200"] if args.smoke else [])


VARIANTS = (  # preparation only, in the warm process: what another setting costs
    ("eval tf32", ["features.eval_precision=tf32"]),
    ("all bf16", ["features.train_precision=bf16", "features.eval_precision=bf16"]),
    ("heads batch 1024", ["heads.batch_size=1024"]),
)


def _one_run(overrides: list[str], run_dir: Path, *, full: bool) -> dict[str, Any]:
    """The whole run (``full``) or its preparation alone, timed phase by phase."""
    from hydra import compose, initialize_config_module
    from rich.console import Console

    from search.pipeline import prepare
    from search.run import run

    with initialize_config_module(config_module="conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    phases = _Phases(pick_device())
    with phases.installed() as wrapped, open(os.devnull, "w") as sink:
        t0 = time.perf_counter()
        if full:
            out = run(cfg, run_dir=run_dir, console=Console(file=sink), progress=False)
            precision, summary = out.summary.get("feature_precision"), out.summary
        else:
            precision, summary = dict(prepare(cfg, progress=False).store.precision), {}
        sync(pick_device())
        total = time.perf_counter() - t0
    seconds = {p: phases.seconds[p] for p in wrapped if p in phases.seconds}
    seconds["other"] = total - sum(seconds.values())
    return {
        "what": "whole run" if full else "preparation only",
        "total_s": total,
        "phases_s": seconds,
        "feature_precision": precision,
        "heads_batch_size": int(cfg.heads.batch_size),
        "search_budget": int(cfg.search.budget),
        "backend": str(cfg.search.backend),
        "n_trials": summary.get("n_trials"),
    }


def e2e_part(args: argparse.Namespace) -> None:
    t0 = time.perf_counter()
    data, ckpt = _setup(args.workdir, args.samples, args.seed)
    setup_s = time.perf_counter() - t0
    plan: list[tuple[str, list[str], bool]] = [("run 1", [], True), ("run 2, warm", [], True)]
    plan += [(name, extra, False) for name, extra in VARIANTS]
    runs = []
    for k, (name, extra, full) in enumerate(plan):
        cache = args.workdir / f"e2e-cache-{k}-{os.getpid()}"
        overrides = _overrides(args, data, ckpt, cache) + extra
        runs.append({"name": name, **_one_run(overrides, args.workdir / f"e2e-{k}", full=full)})
        shutil.rmtree(cache, ignore_errors=True)  # a few GiB of features each
        print(json.dumps(runs[-1], indent=2), flush=True)
    val, test = args.samples // 12, args.samples // 6
    merge(
        args.out,
        "end_to_end",
        {
            "what": "search.run.run of +experiment=resnet152_cifar10 with model.checkpoint in "
            "process, empty cache each time: run 1 in a fresh process, run 2 in the same (warm) "
            "one; then the preparation alone under other settings",
            "samples": args.samples,
            "splits": [args.samples - val - test, val, test],
            "setup_s": setup_s,
            "runs": runs,
        },
    )


def cli_part(args: argparse.Namespace) -> None:
    """``python -m search`` as a user runs it, against the fixed cost of importing search.run."""
    data, ckpt = _setup(args.workdir, args.samples, args.seed)
    cache, run_dir = args.workdir / f"cli-cache-{os.getpid()}", args.workdir / "cli-run"
    cmd = [sys.executable, "-m", "search", *_overrides(args, data, ckpt, cache)]
    timings = {}
    for name, argv in (
        ("import_search_run_s", [sys.executable, "-c", "import search.run"]),
        ("python_m_search_s", [*cmd, f"hydra.run.dir={run_dir}"]),
    ):
        t0 = time.perf_counter()
        proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False)
        timings[name] = time.perf_counter() - t0
        if proc.returncode:
            raise SystemExit(f"{name}: rc={proc.returncode}\n{proc.stderr[-3000:]}")
    shutil.rmtree(cache, ignore_errors=True)
    merge(args.out, "cli", {"command": " ".join(cmd[1:]), **timings})


PARTS: dict[str, Callable[[argparse.Namespace], None]] = {
    "e2e": e2e_part,
    "cli": cli_part,
    "inference": inference_part,
    "compile": compile_part,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--part", choices=(*PARTS, "summary"), required=True)
    parser.add_argument("--samples", type=int, default=60000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--arch", default="cifar_resnet152", help="inference and compile parts")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "gpu-bench")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks that it runs")
    args = parser.parse_args()
    if args.smoke:
        args.samples, args.batch_size, args.arch = min(args.samples, 60), 16, "cifar_resnet18"
    if args.part == "summary":
        print("\n".join(summary_lines(json.loads(args.out.read_text()))))
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    PARTS[args.part](args)


if __name__ == "__main__":
    main()
