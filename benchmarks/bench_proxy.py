"""Proxy throughput: candidate EENNs scored per second, bitset proxy vs naive gather-and-compare.

Setting (the issue's): 10,000 val samples, 20 exit candidates, 3 heads each,
a 3-device chain, 32 quantile threshold levels; random configurations from
the space's sampler (0..20 exits, random boundaries), scored in populations
of 1,000. "naive" scores each configuration on its own: a boolean mask per
exit over the samples (gather and compare), exit assignment by masking, and
costs from the scalar evaluators.costs.path_costs / device_memory; it is
checked to agree with the proxy. Writes results/benchmarks/proxy_throughput.json.
Run: ``python benchmarks/bench_proxy.py [--configs 20000]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform as _platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _provenance import code_state  # noqa: E402

from evaluators.costs import device_memory, path_costs  # noqa: E402
from evaluators.eenn import EENNConfig  # noqa: E402
from evaluators.proxy import ConfigBatch, ProxyEvaluator  # noqa: E402
from spaces.space import build_space  # noqa: E402
from tests._synthetic import synthetic_costs, synthetic_platform, synthetic_split  # noqa: E402

N, C, H, D, LEVELS, POP = 10_000, 20, 3, 3, 32, 1000


def naive(ev: ProxyEvaluator, configs: list[EENNConfig],
          with_costs: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(accuracy, expected MACs) per config, one config at a time."""
    split = ev.split
    acc, macs = np.empty(len(configs)), np.empty(len(configs))
    for p, cfg in enumerate(configs):
        conf = split.conf(cfg.metric)
        remaining = np.ones(ev.n_samples, dtype=bool)
        correct = 0
        counts = []
        for e in cfg.exits:
            leave = remaining & (conf[e.candidate, e.head] >= np.float32(e.threshold))
            correct += int((leave & split.head_correct[e.candidate, e.head]).sum())
            counts.append(int(leave.sum()))
            remaining &= ~leave
        correct += int((remaining & split.final_correct).sum())
        counts.append(int(remaining.sum()))
        acc[p] = correct / ev.n_samples
        if with_costs:
            pc = path_costs(cfg, ev.costs, ev.platform)
            device_memory(cfg, ev.costs, ev.platform)
            macs[p] = float(np.dot(counts, pc.macs)) / ev.n_samples
    return acc, macs


def _rate(fn, n: int, repeats: int = 3) -> float:
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return n / best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", type=int, default=20_000)
    ap.add_argument("--naive-configs", type=int, default=500)
    ap.add_argument("--out", default=str(ROOT / "results/benchmarks/proxy_throughput.json"))
    args = ap.parse_args()
    val = synthetic_split(n=N, c=C, h=H, seed=0)
    costs, platform = synthetic_costs(c=C, h=H, seed=1), synthetic_platform(D)
    space = build_space({"max_exits": None, "thresholds": {"mode": "quantile", "levels": LEVELS}},
                        val=val, platform=platform)
    t = time.perf_counter()
    ev = ProxyEvaluator(split=val, costs=costs, platform=platform,
                        threshold_grid=space.threshold_grid)
    build_s = time.perf_counter() - t
    configs = [space.decode(g) for g in space.sample(args.configs, np.random.default_rng(0))]
    batches = [ConfigBatch.from_configs(configs[i:i + POP]) for i in range(0, len(configs), POP)]

    def proxy_objects() -> None:
        for i in range(0, len(configs), POP):
            ev.evaluate(configs[i:i + POP])

    def proxy_arrays() -> None:
        for b in batches:
            ev.evaluate(b)

    rate_obj = _rate(proxy_objects, len(configs))
    rate_arr = _rate(proxy_arrays, len(configs))
    sub = configs[: args.naive_configs]
    rate_naive = _rate(lambda: naive(ev, sub), len(sub), repeats=1)
    rate_naive_counting = _rate(lambda: naive(ev, sub, with_costs=False), len(sub), repeats=1)
    acc, macs = naive(ev, sub)
    s = ev.evaluate(sub)
    assert np.allclose(acc, s.accuracy) and np.allclose(macs, s.macs), "naive and proxy disagree"
    out = {
        "code": code_state(),
        "setting": {"val_samples": N, "candidates": C, "heads": H, "devices": D,
                    "threshold_levels": LEVELS, "population": POP, "configs": len(configs),
                    "mean_exits": float(np.mean([len(c.exits) for c in configs]))},
        "machine": {"cpus": os.cpu_count(), "python": _platform.python_version(),
                    "numpy": np.__version__},
        "proxy_build_s": round(build_s, 3),
        "proxy_configs_per_s": round(rate_obj),
        "proxy_configs_per_s_from_arrays": round(rate_arr),
        "naive_configs_per_s": round(rate_naive, 1),
        "naive_counting_only_configs_per_s": round(rate_naive_counting, 1),
        "speedup": round(rate_obj / rate_naive, 1),
        "speedup_vs_naive_counting_only": round(rate_obj / rate_naive_counting, 1),
        "target_configs_per_s": 20_000,
        "note": "best of 3 timings; shared 2-core machine, other jobs running",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
