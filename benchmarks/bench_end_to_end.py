"""End to end: ``python -m search`` on the default experiment, cold cache then warm cache.

Measured as a user would run it: a subprocess ``python -m search`` with the
default config, ``hydra.run.dir`` in a temporary folder and ``EENN_CACHE_DIR``
pointing at a fresh (empty) temporary cache. The same command is then run a
second time on the now warm cache. Each run is wrapped in ``/usr/bin/time -v``
for its peak resident memory (falls back to ``RUSAGE_CHILDREN`` of a wrapper
process). Stage breakdown: ``search.pipeline.prepare`` timed in-process on the
warm cache; the rest of a warm run is the search and writing.

Outcome on the default: the chosen point's test accuracy against the
backbone's, and its MACs, energy and latency reductions against the backbone
alone on the first and on the last device (chosen.yaml, summary.json).

The fixed cost every run pays, ``python -c "import search.run"`` (torch, pandas,
plotly, ...), is timed in the same run, three times, and quoted beside the
cold and warm figures.

Writes results/benchmarks/end_to_end.json. Run: ``python benchmarks/bench_end_to_end.py``.
Targets (issue 13): cold <= 30 s, warm <= 5 s, peak RSS <= 2 GiB; test accuracy
within 1 point of the backbone, expected MACs reduced by >= 70 %.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from _provenance import code_state

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "results" / "benchmarks" / "end_to_end.json"
TARGETS = {"cold_s": 30.0, "warm_s": 5.0, "peak_rss_gib": 2.0, "max_test_accuracy_drop_pt": 1.0,
           "min_macs_reduction": 0.70}


def _timed_run(*, run_dir: Path, cache_dir: Path) -> dict[str, Any]:
    """One ``python -m search`` subprocess: wall time, peak RSS, return code, output tail."""
    env = dict(os.environ, EENN_CACHE_DIR=str(cache_dir), PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "search", f"hydra.run.dir={run_dir}"]
    use_time = Path("/usr/bin/time").exists()
    if use_time:
        cmd = ["/usr/bin/time", "-v", *cmd]
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    rss_kib = None
    if use_time:
        m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
        rss_kib = int(m.group(1)) if m else None
    else:
        import resource
        rss_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"wall_s": round(wall, 2), "returncode": proc.returncode,
            "peak_rss_gib": None if rss_kib is None else round(rss_kib / 2**20, 3),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "output_tail": (proc.stdout[-1500:] + "\n--stderr--\n" + proc.stderr[-1500:])
            if proc.returncode else None}


def _import_time() -> float:
    """Median wall time of ``python -c "import search.run"``: the fixed cost of any run."""
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import search.run"], cwd=ROOT, check=True)
        times.append(time.perf_counter() - t0)
    return sorted(times)[1]


def _prepare_time(cache_dir: Path) -> float:
    """``search.pipeline.prepare`` on the warm cache, in-process (import time excluded)."""
    sys.path.insert(0, str(ROOT))
    os.environ["EENN_CACHE_DIR"] = str(cache_dir)
    from hydra import compose, initialize_config_module

    from search.pipeline import prepare

    with initialize_config_module("conf", version_base="1.3"):
        cfg = compose("config")
    t0 = time.perf_counter()
    prepare(cfg, progress=False)
    return time.perf_counter() - t0


def _outcome(run_dir: Path) -> dict[str, Any]:
    """The chosen point against the backbone alone (chosen.yaml, summary.json)."""
    chosen = yaml.safe_load((run_dir / "chosen.yaml").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    ref, val, test = summary["backbone"], chosen.get("val") or {}, chosen.get("test") or {}
    if not val:
        return {"feasible": False, "message": chosen.get("message")}

    def red(new: float, old: float) -> float:
        return round(1.0 - new / old, 4)

    return {
        "chosen_trial": chosen.get("trial"), "strategy": chosen.get("strategy"),
        "config": chosen.get("config"),
        "backbone_accuracy_val": ref["accuracy_val"],
        "backbone_accuracy_test": ref["accuracy_test"],
        "accuracy_val": val.get("accuracy"), "accuracy_test": test.get("accuracy"),
        "test_accuracy_change_pt": round(100 * (test["accuracy"] - ref["accuracy_test"]), 3),
        "val_accuracy_change_pt": round(100 * (val["accuracy"] - ref["accuracy_val"]), 3),
        "backbone_macs": ref["macs"], "macs_val": val["macs"], "macs_test": test.get("macs"),
        "macs_reduction_val": red(val["macs"], ref["macs"]),
        "macs_reduction_test": red(test["macs"], ref["macs"]) if test else None,
        "energy_reduction_vs_first_device": red(val["energy_j"], ref["energy_j_first"]),
        "energy_reduction_vs_last_device": red(val["energy_j"], ref["energy_j_last"]),
        "latency_reduction_vs_first_device": red(val["latency_s"], ref["latency_s_first"]),
        "latency_reduction_vs_last_device": red(val["latency_s"], ref["latency_s_last"]),
        "exit_fractions_val": val.get("exit_fractions"),
        "devices": [d["name"] for d in summary["platform"]["devices"]],
        "n_trials": summary.get("n_trials"), "hypervolume": summary.get("hypervolume"),
        "backbone_trained_now": summary.get("backbone_trained_now"),
    }


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench_e2e_"))
    try:
        cache = tmp / "cache"
        cold = _timed_run(run_dir=tmp / "run_cold", cache_dir=cache)
        warm = _timed_run(run_dir=tmp / "run_warm", cache_dir=cache)
        import_s = _import_time()
        cache_mib = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file()) / 2**20
        prep = _prepare_time(cache) if warm["returncode"] == 0 else None
        outcome = _outcome(tmp / "run_warm") if warm["returncode"] == 0 else {}
        cold_outcome = _outcome(tmp / "run_cold") if cold["returncode"] == 0 else {}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    peak = max(r["peak_rss_gib"] or 0.0 for r in (cold, warm))
    result = {
        "benchmark": "end_to_end",
        "command": "python -m search hydra.run.dir=<tmp>  (EENN_CACHE_DIR=<fresh tmp dir>)",
        "code": code_state(),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "loadavg_end": list(os.getloadavg()),
                    "note": "2 cores shared with other jobs; figures depend on load"},
        "targets": TARGETS,
        "cold": cold, "warm": warm,
        "fixed_cost_import_search_run_s": round(import_s, 2),
        "stages_warm": {"prepare_s_in_process": None if prep is None else round(prep, 2),
                        "rest_s (imports + search + writing)":
                            None if prep is None else round(warm["wall_s"] - prep, 2)},
        "peak_rss_gib": peak,
        "meets": {"cold": cold["wall_s"] <= TARGETS["cold_s"],
                  "warm": warm["wall_s"] <= TARGETS["warm_s"],
                  "memory": peak <= TARGETS["peak_rss_gib"],
                  "accuracy": bool(outcome) and outcome.get("test_accuracy_change_pt", -99)
                  >= -TARGETS["max_test_accuracy_drop_pt"],
                  "macs": bool(outcome) and (outcome.get("macs_reduction_val") or 0)
                  >= TARGETS["min_macs_reduction"]},
        "outcome": outcome,
        "cold_and_warm_chosen_same": bool(outcome) and
        cold_outcome.get("chosen_trial") == outcome.get("chosen_trial"),
        "cold_backbone_trained_now": cold_outcome.get("backbone_trained_now"),
        "warm_backbone_trained_now": outcome.get("backbone_trained_now"),
        "cache_size_mib": round(cache_mib, 1),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2, default=float) + "\n")
    print(json.dumps({k: result[k] for k in ("cold", "warm", "fixed_cost_import_search_run_s",
                                             "stages_warm", "meets")}, indent=2))
    print(json.dumps(outcome, indent=2, default=float))


if __name__ == "__main__":
    main()
