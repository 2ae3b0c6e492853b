"""Benchmark: the CIFAR ResNet-152 feature pass against plain inference, and a whole
``resnet152_cifar10`` search with a given backbone, on CUDA when present (else CPU).

Writes results/benchmarks/gpu_feature_pass.json (the device is named in it). Two parts, one run:

* ``feature_pass``: an untrained (seeded) CIFAR ResNet-152 over ``--samples`` RANDOM
  CIFAR-shaped inputs (60,000 by default on CUDA, the size of CIFAR-10 train + test): plain
  inference (``inference_mode``, same batch size, same device) against the one-pass feature
  extraction of the experiment (10 exit candidates, 2x2 pooling, fp16 memory-mapped cache).
  ratio = feature pass / plain inference. A speed check only: the inputs are noise.
* ``search``: ``python -m search +experiment=resnet152_cifar10`` as the pipeline runs it, in
  process (``search.run.run``), on ``--samples`` random CIFAR-shaped images written as real
  CIFAR-10 pickles, with ``model.checkpoint`` set to the untrained weights (a given backbone:
  no training), splits in the CIFAR-10 proportions 45:5:10, the experiment's search budget.
  Timed: preparation (data, candidates, feature pass, head training, prediction table) and
  the rest (search, results, report).

Usage: python benchmarks/bench_gpu_feature_pass.py [--samples N] [--batch-size B] [--part all]
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from evaluators.device import resolve_device  # noqa: E402
from evaluators.features import extract_features  # noqa: E402
from evaluators.models import build_architecture  # noqa: E402
from spaces.profile import profile_backbone  # noqa: E402

OUT = ROOT / "results" / "benchmarks" / "gpu_feature_pass.json"
MAX_CANDIDATES, POOL = 10, 2  # as conf/experiment/resnet152_cifar10.yaml


def _device() -> tuple[torch.device, str]:
    device = resolve_device("auto")
    if device.type == "cuda":
        return device, torch.cuda.get_device_name(device)
    return device, f"cpu ({platform.processor() or platform.machine()}, " \
                   f"{torch.get_num_threads()} threads)"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return build_architecture("cifar_resnet152", num_classes=10).eval()


def _plain_inference(model: nn.Module, x: torch.Tensor, *, batch: int,
                     device: torch.device) -> float:
    net = model.to(device)
    with torch.inference_mode():
        net(x[:batch].to(device))  # warm-up (cuDNN autotuning, allocator)
        _sync(device)
        t0 = time.perf_counter()
        for i in range(0, len(x), batch):
            net(x[i:i + batch].to(device, non_blocking=True))
        _sync(device)
    return time.perf_counter() - t0


def feature_pass(*, samples: int, batch: int, device: torch.device, seed: int) -> dict[str, Any]:
    """Plain inference and the feature pass over the same random samples; their ratio."""
    model = _model(seed)
    profile = profile_backbone(model, torch.zeros(1, 3, 32, 32), max_candidates=MAX_CANDIDATES)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, 3, 32, 32, generator=gen)
    y = torch.randint(0, 10, (samples,), generator=gen)
    plain_s = _plain_inference(model, x, batch=batch, device=device)
    with tempfile.TemporaryDirectory(prefix="bench-features-") as cache:
        _sync(device)
        t0 = time.perf_counter()
        store = extract_features(
            model, {"train": TensorDataset(x, y)},
            points=[c.name for c in profile.candidates], kind=profile.candidates[0].kind,
            pool=POOL, cache_dir=Path(cache), weights_hash=f"bench-{seed}",
            data_fingerprint=f"random-{samples}-{seed}", batch_size=batch, budget_gib=64.0,
            device=device.type, progress=False)
        _sync(device)
        feature_s = time.perf_counter() - t0
        cache_bytes = sum(f.stat().st_size for f in Path(cache).rglob("*") if f.is_file())
        del store
    return {"samples": samples, "batch_size": batch, "candidates": len(profile.candidates),
            "pool": POOL, "plain_inference_s": plain_s, "feature_pass_s": feature_s,
            "ratio": feature_s / plain_s, "plain_samples_per_s": samples / plain_s,
            "feature_samples_per_s": samples / feature_s, "cache_gib": cache_bytes / 2**30,
            "macs_per_sample": profile.total_macs}


def _write_cifar(root: Path, samples: int, seed: int) -> None:
    """Random images as CIFAR-10 python pickles (5 train batches + test batch + meta)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]
    for k, part in enumerate(np.array_split(np.arange(samples), len(names))):
        data = rng.integers(0, 256, size=(len(part), 3072), dtype=np.uint8)
        with (folder / names[k]).open("wb") as fh:
            pickle.dump({"data": data, "labels": (part % 10).tolist()}, fh)
    with (folder / "batches.meta").open("wb") as fh:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, fh)


def search_time(*, samples: int, batch: int, device: torch.device, seed: int) -> dict[str, Any]:
    """The resnet152_cifar10 experiment end to end with a given (untrained) backbone."""
    from hydra import compose, initialize_config_module
    from rich.console import Console

    from search.pipeline import prepare
    from search.run import run

    with tempfile.TemporaryDirectory(prefix="bench-search-") as tmp:
        tmp_path = Path(tmp)
        _write_cifar(tmp_path / "cifar10", samples, seed)
        torch.save(_model(seed).state_dict(), tmp_path / "resnet152.pt")
        val, test = samples // 12, samples // 6  # CIFAR-10 proportions 45000:5000:10000
        overrides = ["+experiment=resnet152_cifar10", f"data.root={tmp_path / 'cifar10'}",
                     f"model.checkpoint={tmp_path / 'resnet152.pt'}", f"seed={seed}",
                     f"data.splits.train={samples - val - test}", f"data.splits.val={val}",
                     f"data.splits.test={test}", f"device={device.type}",
                     f"features.batch_size={batch}", f"cache_dir={tmp_path / 'cache'}"]
        with initialize_config_module(config_module="conf", version_base="1.3"):
            cfg = compose(config_name="config", overrides=overrides)
        t0 = time.perf_counter()
        prepare(cfg, progress=False)
        prepare_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        with open(os.devnull, "w") as sink:
            out = run(cfg, run_dir=tmp_path / "run", console=Console(file=sink), progress=False)
        rest_s = time.perf_counter() - t1
    return {"samples": samples, "splits": [samples - val - test, val, test],
            "search_budget": int(cfg.search.budget), "backend": str(cfg.search.backend),
            "n_trials": int(out.summary["n_trials"]), "prepare_s": prepare_s,
            "search_and_report_s": rest_s, "total_s": prepare_s + rest_s,
            "note": "search_and_report_s includes re-reading the cached preparation"}


def main() -> None:
    device, name = _device()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=60000 if device.type == "cuda" else 256)
    parser.add_argument("--batch-size", type=int, default=256 if device.type == "cuda" else 32)
    parser.add_argument("--part", choices=("all", "feature_pass", "search"), default="all")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    result: dict[str, Any] = {"device": name, "torch": torch.__version__,
                              "python": platform.python_version()}
    if args.part in ("all", "feature_pass"):
        result["feature_pass"] = feature_pass(samples=args.samples, batch=args.batch_size,
                                              device=device, seed=args.seed)
        print(json.dumps(result["feature_pass"], indent=2))
    if args.part in ("all", "search"):
        result["search"] = search_time(samples=args.samples, batch=args.batch_size,
                                       device=device, seed=args.seed)
        print(json.dumps(result["search"], indent=2))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
