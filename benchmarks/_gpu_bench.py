"""Shared parts of benchmarks/bench_gpu_feature_pass.py: device, inputs, timed passes, JSON, table.

Run as a script's neighbour (this folder is on ``sys.path``), like ``_provenance``.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from _provenance import code_state
from torch import Tensor, nn

from evaluators._extract import precision_mode
from evaluators.data import ArrayDataset
from evaluators.models import build_architecture

ARCH = "cifar_resnet152"  # as conf/experiment/resnet152_cifar10.yaml
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
PREVIOUS = {  # results/benchmarks/gpu_feature_pass.json before this benchmark's rewrite
    "device": "NVIDIA H100 80GB HBM3",
    "end_to_end_s": 64.98,
    "prepare_s": 40.65,
    "search_and_report_s": 24.33,
    "plain_fp32_tf32_inference_60k_s": 9.26,
    "feature_pass_60k_fp16_s": 11.33,
}


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(0)
    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def untrained(seed: int, arch: str = ARCH) -> nn.Module:
    """The backbone with seeded random weights, in eval mode, on the CPU."""
    torch.manual_seed(seed)
    return build_architecture(arch, num_classes=10).eval()


def merge(out: Path, key: str, value: Any) -> None:
    """Add ``value`` under ``key`` to the JSON at ``out`` (with the device and code it ran on)."""
    data = json.loads(out.read_text()) if out.is_file() else {}
    data.update(
        device=device_name(pick_device()),
        torch=torch.__version__,
        python=platform.python_version(),
        code=code_state(),
        previous=PREVIOUS,
    )
    data[key] = value
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=2) + "\n")
    print(json.dumps({key: value}, indent=2))


def images(samples: int, seed: int) -> ArrayDataset:
    """Random uint8 CIFAR-shaped images, normalised on access as the cifar10 loader does."""
    g = torch.Generator().manual_seed(seed)
    return ArrayDataset(
        torch.randint(0, 256, (samples, 3, 32, 32), generator=g, dtype=torch.uint8),
        torch.randint(0, 10, (samples,), generator=g),
        scale=1.0 / 255.0,
        mean=torch.tensor(MEAN).view(3, 1, 1),
        std=torch.tensor(STD).view(3, 1, 1),
    )


def device_inputs(samples: int, seed: int, device: torch.device) -> Tensor:
    """All samples normalised on the device, in the layout the pass uses there."""
    data = images(samples, seed)
    x = torch.cat(
        [data.normalise(data.inputs[i : i + 4096].to(device)) for i in range(0, samples, 4096)]
    )
    layout = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    return x.contiguous(memory_format=layout)


def timed_pass(
    net: Callable[[Tensor], Any],
    x: Tensor,
    *,
    batch: int,
    precision: str,
    device: torch.device,
    autotune: bool = False,
) -> tuple[float, float]:
    """(seconds for one pass over ``x`` on the device, seconds of the warm-up before it).

    The warm-up runs every batch shape once (cuDNN plans, autotuning, allocator).
    """
    warm = [0] + ([len(x) - len(x) % batch] if len(x) % batch else [])
    with torch.inference_mode(), precision_mode(precision, device, autotune=autotune):
        t0 = time.perf_counter()
        for start in warm:
            net(x[start : start + batch])
        sync(device)
        t1 = time.perf_counter()
        for start in range(0, len(x), batch):
            net(x[start : start + batch])
        sync(device)
    return time.perf_counter() - t1, t1 - t0


def _row(what: str, precision: str, seconds: float | None, note: str = "") -> str:
    value = "-" if seconds is None else f"{seconds:8.2f}"
    return f"{what:<42} {precision:<22} {value:>8}  {note}"


def summary_lines(data: dict[str, Any]) -> list[str]:
    """The short table gpu_check.sh prints last."""
    prev = data.get("previous", PREVIOUS)
    lines = [
        f"resnet152_cifar10 on {data.get('device')} (torch {data.get('torch')})",
        _row("what", "precision", None, "note").replace("       -", "seconds"),
    ]
    e2e = data.get("end_to_end", {})
    for k, run in enumerate(e2e.get("runs", [])):
        prec = run.get("feature_precision") or {}
        note = f"target <= 20; previous {prev['end_to_end_s']} on {prev['device']}"
        lines.append(
            _row(
                f"{run['what']}: {run['name']}",
                f"train {prec.get('train')} / eval {prec.get('val')}",
                run["total_s"],
                note if k == 0 else f"heads batch {run['heads_batch_size']}",
            )
        )
        lines.append(
            "    " + ", ".join(f"{phase} {sec:.2f}" for phase, sec in run["phases_s"].items())
        )
    cli = data.get("cli")
    if cli:
        lines.append(
            _row(
                "python -m search (subprocess)",
                "as run 1",
                cli["python_m_search_s"],
                f"import search.run alone {cli['import_search_run_s']:.2f}",
            )
        )
    inf = data.get("inference")
    if inf:
        for run in inf["plain"].values():
            note = f"warm-up {run['warmup_s']:.2f}" + (
                ", the floor" if run["seconds"] == inf["floor_s"] else ""
            )
            tuned = ", autotuned" if run["cudnn_autotune"] else ""
            lines.append(
                _row(
                    f"plain inference {inf['samples']}, batch {run['batch_size']}{tuned}",
                    run["precision"],
                    run["seconds"],
                    note,
                )
            )
        fp = inf["feature_pass_bf16"]
        lines.append(
            _row(
                "feature pass (cache written)",
                "bf16 all splits",
                fp["seconds"],
                f"{fp['ratio_to_floor']:.2f}x the floor",
            )
        )
        agree = inf["agreement_vs_fp32"]
        for p in ("tf32", "bf16"):
            lines.append(
                f"  {p} vs fp32: features rel. L2 {agree[p]['features_rel_l2_max']:.1e}, "
                f"argmax agreement {agree[p]['argmax_agreement']:.4f}"
            )
    comp = data.get("compile")
    if comp:
        lines.append(
            _row(
                f"torch.compile, batch {comp['batch_size']}",
                "bf16",
                comp["compile_s"],
                f"pass {comp['compiled_pass_s']:.2f} vs eager {comp['eager_pass_s']:.2f};"
                f" paid back in one pass: {comp['paid_back_in_one_pass']}",
            )
        )
    return lines
