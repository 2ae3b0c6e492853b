"""MnistCNN on MNIST-5k: training time on this machine, test accuracy, and where the MACs sit.

Trains the default backbone from scratch (fresh cache dir) for several seeds through the real
``get_backbone`` path and writes ``results/benchmarks/mnist_backbone.json``. The target is
>= 97 % test accuracy in < 30 s on two (shared) CPU cores; the load average at the start of
each run is recorded because other processes share the machine.

    python benchmarks/bench_mnist_backbone.py [--seeds 0 1 2]
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

import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from evaluators.backbone import accuracy, get_backbone  # noqa: E402
from evaluators.data import DataSettings, load_data  # noqa: E402
from evaluators.macs import count_macs  # noqa: E402
from evaluators.models.mnist_cnn import MnistCNN  # noqa: E402
from evaluators.settings import ModelSettings, plain  # noqa: E402

# the recipe recommended for conf/model/mnist_cnn.yaml (model.train)
RECIPE = {"epochs": 8, "lr": 0.01, "batch_size": 64, "optimizer": "adamw", "weight_decay": 5e-4,
          "schedule": "onecycle", "label_smoothing": 0.1, "augment_shift": 2,
          "cpu_threads": 1}  # fmt: skip


def mac_split() -> list[dict[str, object]]:
    """Cumulative MACs after each conv block (the natural exit points) and of the whole model."""
    model = MnistCNN().eval()
    x = torch.zeros(1, 1, 28, 28)
    total = count_macs(model, x)
    rows = []
    for k in range(1, len(model.features) + 1):
        macs = count_macs(model.features[:k], x)
        rows.append(
            {"after": f"features.{k - 1}", "cumulative_macs": macs, "fraction": macs / total}
        )
    rows.append({"after": "classifier", "cumulative_macs": total, "fraction": 1.0})
    return rows


def run(seed: int) -> dict[str, object]:
    data_cfg = DataSettings.from_mapping(plain(OmegaConf.load(ROOT / "conf/data/mnist5k.yaml")))
    model_cfg = ModelSettings.from_mapping({"name": "mnist_cnn", "arch": "mnist_cnn",
                                            "input_shape": [1, 28, 28], "num_classes": 10,
                                            "train": RECIPE})
    load = os.getloadavg()[0]
    start = time.perf_counter()
    data = load_data(data_cfg, seed=seed)
    with tempfile.TemporaryDirectory() as cache:
        model, info = get_backbone(model_cfg, data, cache_dir=Path(cache), seed=seed, device="cpu")
        meta = json.loads(info.checkpoint.with_suffix(".json").read_text())
    total = time.perf_counter() - start
    return {"seed": seed, "loadavg_1min_at_start": load,
            "train_seconds": meta["train_seconds"], "total_seconds": total,
            "accuracy_val": accuracy(model, data.val, device=torch.device("cpu")),
            "accuracy_test": accuracy(model, data.test, device=torch.device("cpu"))}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--out", type=Path, default=ROOT / "results/benchmarks/mnist_backbone.json")
    args = parser.parse_args()
    runs = [run(seed) for seed in args.seeds]
    for r in runs:
        print(r)
    model_yaml = ROOT / "conf/model/mnist_cnn.yaml"
    conf_recipe = None
    if model_yaml.exists():
        conf_recipe = plain(OmegaConf.load(model_yaml)).get("train")
    result = {
        "benchmark": "mnist_backbone",
        "machine": {"cpus": os.cpu_count(), "torch_threads_default": torch.get_num_threads(),
                    "python": platform.python_version(), "torch": torch.__version__},
        "data": {"name": "mnist5k", "train": 3000, "val": 1000, "test": 1000},
        "model": "mnist_cnn (defaults)",
        "recipe": RECIPE,
        "conf_model_train": conf_recipe,
        "runs": runs,
        "max_train_seconds": max(float(r["train_seconds"]) for r in runs),  # type: ignore[arg-type]
        "min_accuracy_test": min(float(r["accuracy_test"]) for r in runs),  # type: ignore[arg-type]
        "mac_split": mac_split(),
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
