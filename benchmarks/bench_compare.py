"""Comparison page for 30 runs: its size and the time to read, compute and draw it.

Setting: a synthetic sweep (tests/search/_fake_run.py: the real cost model on
a synthetic backbone and platform, random accuracies) of 3 configurations x
10 seeds, objectives error, MACs and energy (three objective pairs of
attainment surfaces), ``--trials`` main-strategy trials per run plus half as
many of random search. Timed: ``write_comparison`` on the sweep folder, split
into finding and loading the runs, computing the records (fronts, moocore
attainment surfaces, hypervolumes and curves on one scale, tests), and
rendering and writing the page and its JSON; and, where Debian's chromium is
installed, a headless Chromium from navigation until every plot is drawn. Writes
results/benchmarks/compare.json. Run: ``python benchmarks/bench_compare.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform as _platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from plotly.offline import get_plotlyjs

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _provenance import code_state  # noqa: E402

from search.report._compare import compare_runs  # noqa: E402
from search.report._compare_page import render_comparison, write_comparison  # noqa: E402
from search.report._runs import find_runs  # noqa: E402
from tests.search import _fake_run as fake  # noqa: E402
from tests.search.test_report_browser import CHROMIUM, Browser, evaluate  # noqa: E402

BACKENDS = ("pymoo_nsga2", "optuna_nsga2", "optuna_tpe")
OBJECTIVES = ("error", "macs", "energy")
T = TypeVar("T")


def write_sweep(folder: Path, *, seeds: int, trials: int) -> Path:
    """Hydra's multirun layout: <folder>/<job>/ for every configuration and seed."""
    job = 0
    for b, backend in enumerate(BACKENDS):
        for seed in range(seeds):
            fake.write_fake_run(folder / str(job), seed=1000 * b + seed, n_trials=trials,
                                objectives=OBJECTIVES, strategies=(backend, "random"),
                                evaluated=False, config={"seed": seed})
            job += 1
    return folder


def best_of(n: int, fn: Callable[[], T]) -> tuple[float, T]:
    """The shortest of ``n`` wall-clock timings of ``fn()`` and its last result."""
    times = []
    for _ in range(n):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def browser_draw_s(page: Path) -> float | None:
    """Headless Chromium: navigation until every plot has its SVG (None: no chromium)."""
    if CHROMIUM is None:
        return None
    with tempfile.TemporaryDirectory() as profile:
        browser = Browser(Path(profile))
        try:
            target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
            session = str(browser.send("Target.attachToTarget",
                                       {"targetId": target, "flatten": True})["sessionId"])
            browser.send("Page.enable", session=session)
            start = time.perf_counter()
            browser.send("Page.navigate", {"url": page.resolve().as_uri()}, session=session)
            browser.wait_event("Page.loadEventFired", session)
            while evaluate(browser, session, "Array.from(document.querySelectorAll("
                           "'.js-plotly-plot')).some(d => !d.querySelector('svg.main-svg'))"):
                time.sleep(0.02)
            return time.perf_counter() - start
        finally:
            browser.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--trials", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "results/benchmarks/compare.json"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sweep = write_sweep(Path(tmp) / "multirun" / "t", seeds=args.seeds, trials=args.trials)
        load_s, found = best_of(args.repeats, lambda: find_runs([sweep]))
        runs = found.runs
        compute_s, comparison = best_of(args.repeats, lambda: compare_runs(runs))
        render_s, _ = best_of(args.repeats, lambda: render_comparison(comparison))
        out = Path(tmp) / "comparison.html"
        total_s, _ = best_of(args.repeats, lambda: write_comparison([sweep], out=out))
        page_bytes, json_bytes = out.stat().st_size, out.with_suffix(".json").stat().st_size
        plotly_bytes = len(get_plotlyjs().encode())
        draws = [browser_draw_s(out) for _ in range(args.repeats)]
        draw = min((d for d in draws if d is not None), default=None)
    result = {
        "setting": {"runs": len(runs), "configurations": len(BACKENDS), "seeds": args.seeds,
                    "objectives": list(OBJECTIVES), "main_trials_per_run": args.trials,
                    "random_trials_per_run": max(4, args.trials // 2),
                    "runs_source": "synthetic (tests/search/_fake_run.py)"},
        "machine": {"cpus": os.cpu_count(), "python": _platform.python_version(),
                    "processor": _platform.processor() or _platform.machine()},
        "code": code_state(),
        "page_bytes": page_bytes,
        "page_mib": round(page_bytes / 2**20, 2),
        "plotly_js_bytes": plotly_bytes,  # inlined once; the rest is figures, tables, text
        "records_json_bytes": json_bytes,
        "load_runs_s": round(load_s, 3),
        "compute_records_s": round(compute_s, 3),
        "render_page_s": round(render_s, 3),
        "write_comparison_total_s": round(total_s, 3),
        "browser_load_and_draw_s": None if draw is None else round(draw, 3),
        "note": f"best of {args.repeats} wall-clock timings; shared 2-core machine, other "
                "jobs running",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
