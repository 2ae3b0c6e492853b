"""Search points run for real: true early exit on val and test, against the proxy.

``python -m search.deploy.evaluate RUN [--points all|pareto|chosen|i,j,k]``

Each selected trial's configuration is assembled as a real EENN
(:func:`search.deploy.runtime.build_eenn`) on the run's backbone and heads (reloaded
through :func:`search.pipeline.prepare` from the run's composed config and
checked against the run's weights hash) and run with true early exit on val
and on test. Costs are priced from the exits actually taken with
:func:`evaluators.costs.path_costs`. On val the result must equal the proxy's
prediction sample by sample (``exit_match``); a difference that is not a float32
tie at a threshold (:func:`compare_exits`) is a bug. The
val-to-test difference (``generalisation_gap``) is the thresholds
generalising to unseen data, not a proxy error. Results go to
``evaluated.csv`` beside the trials and to a table on the terminal.

With ``--latency`` (default on) each point's wall-clock is measured on this machine in
torch (:mod:`search.deploy._latency`), or with ``--runtime onnxruntime`` exported and run by
onnxruntime (:mod:`search.deploy._onnx_timing`): per-sample time at batch 1 and in the pooled
throughput mode at ``--latency-batch``, beside the time a profile of this machine (measured
once, cached like ``platform=host``'s) predicts for the exits the same samples took:
``measured_latency_b1_s``/``predicted_latency_b1_s`` and
``measured_latency_batch_s``/``predicted_latency_batch_s``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from numpy.typing import NDArray
from rich.table import Table

from evaluators.costs import PathCosts, path_costs
from evaluators.device import resolve_device
from evaluators.eenn import METRICS, EENNConfig, exit_shares
from evaluators.features import precision_mode
from evaluators.predictions import SplitPredictions
from evaluators.proxy import ConfigBatch, ProxyEvaluator
from search import rundir
from search._console import terminal_console
from search.deploy._latency import LatencyFigures, latency_figures, predicted_latency
from search.deploy._loaded import LoadedRun, load_run, select_trials
from search.deploy.runtime import EENN, RunRecord, build_eenn, run_dataset
from search.errors import one_line_errors
from search.pipeline import Prepared
from search.results import exit_lists

__all__ = ["EVALUATED", "TIE_TOLERANCE", "LatencyOptions", "LoadedRun", "compare_exits",
           "evaluate_run", "load_run", "main", "predicted_exits", "select_trials"]

EVALUATED = rundir.EVALUATED
TIE_TOLERANCE = 1e-6  # |table confidence - threshold| below which float32 kernel noise may flip


def predicted_exits(split: SplitPredictions, config: EENNConfig) -> NDArray[np.int64]:
    """The proxy's rule per sample: first active exit with confidence >= float32 threshold."""
    n = len(split.labels)
    taken = np.full(n, len(config.exits), dtype=np.int64)
    m = METRICS.index(config.metric)
    for k in reversed(range(len(config.exits))):
        e = config.exits[k]
        taken[split.head_conf[m, e.candidate, e.head] >= np.float32(e.threshold)] = k
    return taken


def compare_exits(record: RunRecord, split: SplitPredictions, config: EENNConfig,
                  *, tolerance: float = TIE_TOLERANCE) -> tuple[int, int]:
    """(samples whose exit differs from the table's, how many of them are float32 ties).

    A mismatch is a tie when, at the earlier of the two exits, the table's
    confidence lies within ``tolerance`` of that exit's threshold: kernel
    noise of a few ulps decides it (see :mod:`search.deploy.runtime`). Anything else
    is a bug.
    """
    predicted = predicted_exits(split, config)
    bad = np.flatnonzero(record.exit != predicted)
    if not len(bad):
        return 0, 0
    m = METRICS.index(config.metric)
    first = np.minimum(record.exit[bad], predicted[bad])
    cand = np.array([e.candidate for e in config.exits])[first]
    head = np.array([e.head for e in config.exits])[first]
    thr = np.array([e.threshold for e in config.exits], dtype=np.float32)[first]
    gap = np.abs(split.head_conf[m, cand, head, bad].astype(np.float64) - thr)
    return len(bad), int((gap <= tolerance).sum())


def _figures(record: RunRecord, paths: PathCosts, n_exits: int) -> dict[str, Any]:
    (fractions,), _ = exit_shares(np.bincount(record.exit, minlength=n_exits + 1))
    return {
        "accuracy": record.accuracy,
        "macs": float(paths.macs[record.exit].mean()),
        "energy_j": float(paths.energy_j[record.exit].mean()),
        "latency_s": float(paths.latency_s[record.exit].mean()),
        "exit_fractions": json.dumps([round(f, 6) for f in fractions]),
    }


@dataclass(frozen=True, kw_only=True)
class LatencyOptions:
    """How evaluate measures wall-clock: test samples at batch 1 (the throughput batch runs
    the whole test split), repeats, throughput batch, threads."""

    samples: int = 200
    repeats: int = 7
    batch: int = 256
    threads: int = 1
    clock: str = "wall"  # or "cpu": the timing thread's CPU time (a shared machine)
    runtime: str = "torch"  # or "onnxruntime": the point exported and run by onnxruntime (fp32)


def _host_tables(run: LoadedRun, opts: LatencyOptions) -> tuple[Any, Any]:
    """This machine's tables of ``opts.runtime`` (fp32) at batch 1 and ``opts.batch``
    (measured once, cached)."""
    from search.profile import ProfileSettings, host_profile
    from search.profile._subject import subject_of

    batches = tuple(sorted({1, opts.batch}))
    profile = host_profile(subject_of(run.prepared), ProfileSettings(
        entries=(f"{opts.runtime}/fp32",), batches=batches, threads=opts.threads,
        clock=opts.clock), cache_dir=run.settings.cache_dir)
    return (profile.table(opts.runtime, "fp32", 1),
            profile.table(opts.runtime, "fp32", opts.batch))


def _onnx_figures(run: LoadedRun, eenn: EENN, x: torch.Tensor, tables: tuple[Any, Any],
                  opts: LatencyOptions) -> LatencyFigures:
    """:class:`LatencyFigures` of ``eenn`` exported to ONNX and run by onnxruntime (the
    manifest's stage loop at batch 1, its pooled loop at the throughput batch)."""
    import tempfile

    from search.deploy._onnx_timing import OnnxEENN

    prep = run.prepared
    with tempfile.TemporaryDirectory(prefix="eenn-evaluate-onnx-") as tmp:
        onnx = OnnxEENN.export(eenn.cpu().eval(), out=Path(tmp), example=x[:1],
                               platform=prep.platform, costs=prep.costs,
                               candidates=prep.profile.candidates, threads=opts.threads)
        xs = x.numpy()
        taken = onnx.exits(xs)
        n1 = min(opts.samples, len(xs))
        return LatencyFigures(
            measured_b1_s=onnx.latency(xs[:n1], repeats=opts.repeats, clock=tables[0].clock),
            predicted_b1_s=predicted_latency(tables[0], eenn, taken[:n1]),
            measured_batch_s=onnx.latency_pooled(xs, batch=tables[1].batch,
                                                 repeats=opts.repeats, clock=tables[1].clock),
            predicted_batch_s=predicted_latency(tables[1], eenn, taken),
            batch=tables[1].batch, threads=tables[0].threads, samples=n1)


def _latency_columns(run: LoadedRun, config: EENNConfig, tables: tuple[Any, Any],
                     opts: LatencyOptions) -> dict[str, Any]:
    from evaluators.features import iter_batches

    prep = run.prepared
    eenn = build_eenn(prep.model, config, candidates=prep.profile.candidates,
                      heads=prep.heads.heads, n_devices=prep.platform.n_devices)
    x = torch.cat([b.float() for b, _ in iter_batches(prep.data.test, 1024)])
    f = (_onnx_figures(run, eenn, x, tables, opts) if opts.runtime == "onnxruntime" else
         latency_figures(eenn, x, b1=tables[0], batched=tables[1], repeats=opts.repeats,
                         samples_b1=opts.samples))
    return {"measured_latency_b1_s": f.measured_b1_s, "predicted_latency_b1_s": f.predicted_b1_s,
            "measured_latency_batch_s": f.measured_batch_s,
            "predicted_latency_batch_s": f.predicted_batch_s, "latency_batch": f.batch,
            "latency_threads": f.threads, "latency_samples": f.samples,
            "latency_clock": tables[0].clock, "latency_runtime": opts.runtime}


def _proxies(prep: Prepared) -> tuple[ProxyEvaluator, ProxyEvaluator]:
    """The proxy on all of val and on test, built once per evaluated run."""
    def proxy(split: SplitPredictions) -> ProxyEvaluator:
        return ProxyEvaluator(split=split, costs=prep.costs, platform=prep.platform)

    return proxy(prep.predictions.val), proxy(prep.predictions.test)


def _predicted(config: EENNConfig, proxies: tuple[ProxyEvaluator, ProxyEvaluator]
               ) -> dict[str, Any]:
    """The proxy's figures for ``config`` on all of val (the split the EENN runs on here) and
    its test accuracy.

    Not the trial's logged figures: a run with a certified guarantee searched on val's search
    part only (the rest certified), so its logged figures describe a subset of val.
    """
    batch = ConfigBatch.from_configs([config])
    s, test = proxies[0].evaluate(batch), proxies[1].evaluate(batch)
    fractions, _ = exit_lists(batch, s)
    return {"predicted_accuracy": float(s.accuracy[0]), "predicted_macs": float(s.macs[0]),
            "predicted_energy_j": float(s.energy_j[0]),
            "predicted_latency_s": float(s.latency_s[0]),
            "predicted_exit_fractions": rundir.json_list(fractions[0]),
            "predicted_accuracy_test": float(test.accuracy[0])}


def _evaluate_config(run: LoadedRun, config: EENNConfig, *, batch_size: int,
                     proxies: tuple[ProxyEvaluator, ProxyEvaluator]) -> dict[str, Any]:
    """Measured val/test figures of one configuration and its agreement with the proxy."""
    prep = run.prepared
    device = resolve_device(run.settings.device)
    eenn = build_eenn(prep.model, config, candidates=prep.profile.candidates,
                      heads=prep.heads.heads, n_devices=prep.platform.n_devices)
    paths = path_costs(config, prep.costs, prep.platform)
    out: dict[str, Any] = {}
    for split in ("val", "test"):
        # the precision the table's features were computed in (strict float32 by default):
        # on a GPU, cuDNN's default TF32 convolutions would move confidences by ~1e-3
        with precision_mode(prep.store.precision.get(split, "fp32"), device):
            record = run_dataset(eenn, getattr(prep.data, split), batch_size=batch_size,
                                 device=device)
        table: SplitPredictions = getattr(prep.predictions, split)
        if not np.array_equal(record.labels, table.labels):
            raise ValueError(f"{split} labels differ from the prediction table's; the data "
                             "changed since the run, start a new run")
        figures = _figures(record, paths, len(config.exits))
        mismatch, ties = compare_exits(record, table, config)
        suffix = "val" if split == "val" else "test"
        out[f"measured_accuracy_{suffix}"] = figures["accuracy"]
        out["measured_macs" if split == "val" else "measured_macs_test"] = figures["macs"]
        out[f"measured_energy_j{'' if split == 'val' else '_test'}"] = figures["energy_j"]
        out[f"measured_latency_s{'' if split == 'val' else '_test'}"] = figures["latency_s"]
        out[f"exit_fractions_{suffix}"] = figures["exit_fractions"]
        out["exit_match" if split == "val" else "exit_match_test"] = mismatch == 0
        out[f"exit_mismatches_{suffix}"] = mismatch
        out[f"exit_mismatch_ties_{suffix}"] = ties
    out.update(_predicted(config, proxies))
    out["generalisation_gap"] = out["measured_accuracy_test"] - out["measured_accuracy_val"]
    return out


def evaluate_run(run_dir: Path, *, points: str = "pareto", batch_size: int = 256,
                 run: LoadedRun | None = None, write: bool = True,
                 latency: LatencyOptions | None = None) -> pd.DataFrame:
    """Measure the selected trials of ``run_dir`` on val and test; write ``evaluated.csv``.

    ``latency`` also measures each point's wall-clock against its profile prediction.
    """
    run = run or load_run(Path(run_dir))
    tables = _host_tables(run, latency) if latency is not None else None
    strategy = run.summary.get("strategy")
    trial_ids = select_trials(run.trials, run.chosen, points, strategy=strategy)
    by_trial = run.trials.set_index("trial")
    proxies = _proxies(run.prepared)
    done: dict[str, dict[str, Any]] = {}  # identical configs are measured once
    rows = []
    for t in trial_ids:
        row = by_trial.loc[t]
        text = str(row["config"])
        if text not in done:
            config = rundir.config_from_json(text, where=f"{run.run_dir} trial {t}")
            done[text] = _evaluate_config(run, config, batch_size=batch_size,
                                          proxies=proxies)
            if latency is not None and tables is not None:
                done[text].update(_latency_columns(run, config, tables, latency))
        rows.append({
            "trial": int(t), "strategy": row["strategy"], "config": text,
            **done[text],
        })
    df = pd.DataFrame(rows)
    if write:  # points evaluated by an earlier call stay; these replace their own rows
        path = run.run_dir / EVALUATED
        if path.is_file():
            old = pd.read_csv(path)
            df_all = pd.concat([old[~old["trial"].isin(df["trial"])], df], ignore_index=True)
            df_all.sort_values("trial").to_csv(path, index=False)
        else:
            df.to_csv(path, index=False)
    return df


def _match_text(mismatches: int, ties: int) -> str:
    if not mismatches:
        return "yes"
    if mismatches == ties:
        return f"[yellow]{mismatches} float ties[/]"
    return f"[red]NO: {mismatches - ties} (+{ties} ties)[/]"


def render(df: pd.DataFrame) -> Table:
    """The terminal table: proxy vs measured on val, and generalisation to test."""
    table = Table(title="real EENN on val and test; proxy = predicted on val; "
                        "test-val = generalisation, not proxy error")
    timed = "measured_latency_b1_s" in df.columns
    for col in ("trial", "acc proxy", "acc val", "acc test", "test-val",
                "MMACs proxy", "MMACs val", "MMACs test", "exits = proxy",
                *(("us/sample b1 pred/meas", "us/sample batch pred/meas") if timed else ())):
        table.add_column(col, justify="right")
    for r in df.itertuples():
        times = ((f"{1e6 * r.predicted_latency_b1_s:.0f}/{1e6 * r.measured_latency_b1_s:.0f}",
                  f"{1e6 * r.predicted_latency_batch_s:.1f}/{1e6 * r.measured_latency_batch_s:.1f}")
                 if timed else ())
        table.add_row(str(r.trial), f"{r.predicted_accuracy:.4f}", f"{r.measured_accuracy_val:.4f}",
                      f"{r.measured_accuracy_test:.4f}", f"{100 * r.generalisation_gap:+.1f}pt",
                      f"{r.predicted_macs / 1e6:.4f}", f"{r.measured_macs / 1e6:.4f}",
                      f"{r.measured_macs_test / 1e6:.4f}",
                      _match_text(int(r.exit_mismatches_val), int(r.exit_mismatch_ties_val)),
                      *times)
    return table


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; errors are one line on stderr and exit status 2."""
    parser = argparse.ArgumentParser(prog="python -m search.deploy.evaluate",
                                     description="Run a search's points as real EENNs on val/test.")
    parser.add_argument("run", type=Path, help="run folder (results/runs/<date_time>)")
    parser.add_argument("--points", "--point", dest="points", default="pareto",
                        help="all | pareto (default) | chosen | trial ids like 3,17,42")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--latency", action=argparse.BooleanOptionalAction, default=True,
                        help="measure wall-clock against the profile prediction (default on)")
    parser.add_argument("--latency-samples", type=int, default=LatencyOptions.samples)
    parser.add_argument("--latency-repeats", type=int, default=LatencyOptions.repeats)
    parser.add_argument("--latency-batch", type=int, default=LatencyOptions.batch)
    parser.add_argument("--threads", type=int, default=LatencyOptions.threads,
                        help="torch threads while timing (pinned, recorded)")
    parser.add_argument("--clock", default=LatencyOptions.clock, choices=["wall", "cpu"],
                        help="wall-clock, or the timing thread's CPU time (a shared machine)")
    parser.add_argument("--runtime", default=LatencyOptions.runtime,
                        choices=["torch", "onnxruntime"],
                        help="time the point in torch (default) or exported to onnxruntime")
    args = parser.parse_args(argv)
    console = terminal_console()
    with one_line_errors():
        for flag in ("batch_size", "latency_samples", "latency_repeats", "latency_batch",
                     "threads"):
            if getattr(args, flag) < 1:
                raise ValueError(f"--{flag.replace('_', '-')} {getattr(args, flag)} must be >= 1")
        opts = (LatencyOptions(samples=args.latency_samples, repeats=args.latency_repeats,
                               batch=args.latency_batch, threads=args.threads,
                               clock=args.clock, runtime=args.runtime)
                if args.latency else None)
        df = evaluate_run(args.run, points=args.points, batch_size=args.batch_size,
                          latency=opts)
        console.print(render(df))
        real = df["exit_mismatches_val"] - df["exit_mismatch_ties_val"]
        if (real > 0).any():
            console.print("[bold red]the real EENN left at other exits than the proxy "
                          "predicted on val: a bug[/]")
        elif not df["exit_match"].all():
            console.print("[yellow]float ties: val samples whose confidence equals a threshold "
                          "(to 1e-6) went the other way in float32; not a proxy error[/]")
        console.print(f"written: {Path(args.run) / EVALUATED}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
