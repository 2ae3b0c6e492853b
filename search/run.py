"""One experiment, end to end: prepare, search, write the run folder, summarise.

``run(cfg, run_dir=...)`` is the pure function behind ``python -m search``;
tests call it directly with a composed (and shrunk) config.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from evaluators.costs import path_costs
from evaluators.eenn import EENNConfig
from evaluators.proxy import ProxyEvaluator
from evaluators.risk import val_parts
from search._console import terminal_console
from search.config import ExperimentSettings, parse_config, resolve_guarantee, to_config
from search.loop import SearchResult, run_search
from search.pipeline import Prepared, prepare
from search.report import write_report
from search.results import guarantee_text
from search.rundir import CONFIG, REPORT, SUMMARY_TXT, hypervolume_summary, write_summary
from spaces.space import build_space

__all__ = ["RunOutcome", "backbone_reference", "run"]


@dataclass(frozen=True, kw_only=True, eq=False)
class RunOutcome:
    """What a run produced, for callers and tests."""

    run_dir: Path
    prepared: Prepared
    result: SearchResult
    summary: dict[str, Any]


def backbone_reference(prepared: Prepared) -> dict[str, float]:
    """The backbone alone: accuracy, MACs, energy/latency all on the first or the last device."""
    n_links = len(prepared.platform.links)
    n_cand = prepared.costs.n_candidates
    first = path_costs(
        EENNConfig(exits=(), boundaries=(n_cand + 1,) * n_links), prepared.costs, prepared.platform
    )
    last = path_costs(
        EENNConfig(exits=(), boundaries=(0,) * n_links), prepared.costs, prepared.platform
    )
    table = prepared.predictions
    return {
        "accuracy_val": float(table.val.final_correct.mean()),
        "accuracy_test": float(table.test.final_correct.mean()),
        "macs": float(first.macs[-1]),
        "energy_j_first": float(first.energy_j[-1]),
        "latency_s_first": float(first.latency_s[-1]),
        "energy_j_last": float(last.energy_j[-1]),
        "latency_s_last": float(last.latency_s[-1]),
    }


def _status(chosen: Mapping[str, Any]) -> str:
    """``feasible``; ``not_certified`` (a feasible front, nothing certified); else
    ``no_feasible_eenn``."""
    guarantee = chosen.get("guarantee") or {}
    if chosen.get("feasible"):
        return "feasible"
    if guarantee.get("method", "uncertified") != "uncertified" and guarantee.get("candidates"):
        return "not_certified"
    return "no_feasible_eenn"


def _summary(prepared: Prepared, result: SearchResult, name: str,
             notes: list[str]) -> dict[str, Any]:
    """The run's ``summary.json`` (schema in results/README.md)."""
    platform = prepared.platform
    chosen = result.chosen
    return {
        "experiment": name,
        # what a sweep filters on: "feasible", "not_certified", or "no_feasible_eenn"
        "status": _status(chosen),
        "guarantee": chosen.get("guarantee", {}),
        "violations": chosen.get("violations", {}),
        "relax": chosen.get("relax", []),
        "notes": notes,
        "objectives": list(result.objectives),
        "constraints": list(result.constraint_names),
        "strategy": result.strategy,
        "backbone": backbone_reference(prepared),
        "input_shape": list(prepared.profile.input_shape),
        "input_elems": int(prepared.costs.input_elems),
        "candidates": [
            {
                "name": c.name,
                "index": c.index,
                "shape": list(c.shape),
                "bytes_fp32": c.bytes_fp32,
                "bytes_int8": c.bytes_int8,
                "cumulative_macs": c.cumulative_macs,
                "segment_macs": c.segment_macs,
                "segment_param_bytes": c.segment_param_bytes,
            }
            for c in prepared.profile.candidates
        ],
        "tail_macs": prepared.profile.tail_macs,
        "heads": list(prepared.family.names),
        "head_macs": prepared.costs.head_macs.tolist(),
        "platform": {
            "name": platform.name,
            "devices": [d.summary() for d in platform.devices],
            "links": [vars(link) for link in platform.links],
        },
        "chosen_trial": result.chosen_trial,
        "message": result.message,
        **hypervolume_summary(result.records, result.objectives),
        "backbone_checkpoint": str(prepared.backbone.checkpoint),
        "backbone_trained_now": prepared.backbone.trained_now,
        "weights_hash": prepared.backbone.weights_hash,
        "feature_precision": dict(prepared.store.precision),  # split -> fp32/tf32/bf16/fp16
        "n_trials": len(result.records),
    }


def _infeasible_text(summary: Mapping[str, Any], message: str) -> str:
    """The lines a run with no feasible EENN opens with ("" when it has one)."""
    if summary["status"] == "feasible":
        return ""
    head = "NO CERTIFIED EENN: " if summary["status"] == "not_certified" else "NO FEASIBLE EENN: "
    parts = [head + (message or "nothing was evaluated")]
    if summary["relax"]:
        parts.append("to admit the closest one, relax: " + "; ".join(summary["relax"]))
    parts += summary["notes"]
    return "\n".join(parts)


def _change(new: float, old: float) -> str:
    """Relative change, signed: -90.0% means the EENN needs a tenth of the backbone's cost."""
    return f"{100.0 * (new / old - 1.0):+.1f}%" if old > 0 else "n/a"


def _mapping_text(config: Mapping[str, Any], prepared: Prepared) -> str:
    cfg = EENNConfig(exits=(), boundaries=tuple(config["boundaries"]), metric=config["metric"])
    n_seg = prepared.costs.n_candidates + 1
    parts = []
    for d, device in enumerate(prepared.platform.devices):
        segs = [s for s in range(n_seg) if cfg.device_of_segment(s) == d]
        parts.append(f"{device.name}: " + (
            f"segments {segs[0]}-{segs[-1]}" if segs else
            "relay (runs no segment; forwards what it receives)"))
    return "; ".join(parts)


def _final_table(summary: dict[str, Any], chosen: Mapping[str, Any], prepared: Prepared) -> Table:
    """The closing terminal table: chosen point against the backbone alone."""
    ref = summary["backbone"]
    title = (f"chosen point (trial {chosen.get('trial')}, {chosen.get('strategy')})"
             if chosen.get("feasible") else
             f"NO CERTIFIED EENN - cheapest front point, trial {chosen.get('trial')}, "
             f"{chosen.get('strategy')} (not a result)"
             if summary["status"] == "not_certified" else
             f"NO FEASIBLE EENN - closest infeasible trial {chosen.get('trial')}, "
             f"{chosen.get('strategy')} (not a result)")
    table = Table(title=title)
    table.add_column("figure")
    table.add_column("backbone", justify="right")
    table.add_column("EENN", justify="right")
    table.add_column("change", justify="right")
    val, test = chosen["val"], chosen.get("test") or {}
    parts = [("val search part" if "calibration" in chosen else "val", val),
             ("val calibration part", chosen.get("calibration") or {})]
    for where, figures in parts:
        if figures:
            base = figures.get("backbone_accuracy", ref["accuracy_val"])
            table.add_row(f"accuracy ({where})", f"{base:.4f}", f"{figures['accuracy']:.4f}",
                          f"{100 * (figures['accuracy'] - base):+.2f} pt")
    if test:
        table.add_row(
            "accuracy (test)",
            f"{ref['accuracy_test']:.4f}",
            f"{test['accuracy']:.4f}",
            f"{100 * (test['accuracy'] - ref['accuracy_test']):+.2f} pt",
        )
    table.add_row(
        "MACs / inference",
        f"{ref['macs']:.4g}",
        f"{val['macs']:.4g}",
        _change(val["macs"], ref["macs"]),
    )
    ends = ("first", "last") if len(prepared.platform.devices) > 1 else ("first",)
    for where in ends:
        name = prepared.platform.devices[0 if where == "first" else -1].name
        table.add_row(
            f"energy J (backbone on {name})",
            f"{ref[f'energy_j_{where}']:.4g}",
            f"{val['energy_j']:.4g}",
            _change(val["energy_j"], ref[f"energy_j_{where}"]),
        )
        table.add_row(
            f"latency s (backbone on {name})",
            f"{ref[f'latency_s_{where}']:.4g}",
            f"{val['latency_s']:.4g}",
            _change(val["latency_s"], ref[f"latency_s_{where}"]),
        )
    config = chosen["config"]
    names = [c["name"] for c in summary["candidates"]]
    exits = (
        ", ".join(
            f"{names[e['candidate']]}[{summary['heads'][e['head']]}] >= {e['threshold']:.3f}"
            for e in config["exits"]
        )
        or "none"
    )
    places = [names[e["candidate"]] for e in config["exits"]] + ["backbone"]
    shares = ", ".join(f"{w} {100 * f:.1f}%"
                       for w, f in zip(places, val["exit_fractions"], strict=True))
    # escaped: "[head]" would otherwise be read as rich markup and vanish
    table.add_row("exits (metric " + config["metric"] + ")", "", escape(exits), "")
    table.add_row("exit distribution (val)", "", shares, "")
    table.add_row("device mapping", "", _mapping_text(config, prepared), "")
    table.add_row("accuracy guarantee", "", guarantee_text(chosen.get("guarantee") or {}), "")
    return table


def run(
    cfg: ExperimentSettings | Mapping[str, Any] | DictConfig,
    *,
    run_dir: Path,
    console: Console | None = None,
    progress: bool = True,
) -> RunOutcome:
    """Run the experiment ``cfg`` (parsed here unless it already is) into the folder ``run_dir``."""
    # redirected output has no terminal width: keep names whole instead of rich's 80 columns
    console = console or terminal_console()
    settings = parse_config(cfg)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    prepared = prepare(settings, progress=progress)
    # written once preparation succeeded, so a failing call never overwrites a run's config
    (run_dir / CONFIG).write_text(yaml.safe_dump(to_config(settings), sort_keys=False))
    table = prepared.predictions
    settings, certify_note = resolve_guarantee(settings, n_val=len(table.val.labels))
    search_val, calibration = val_parts(settings.constraints.guarantee, table.val,
                                        seed=settings.data_seed)
    space = build_space(settings.space, val=search_val, platform=prepared.platform)
    notes = [n for n in (certify_note,
                         settings.constraints.val_size_note(len(search_val.labels))) if n]
    for note in notes:  # before the search: it cannot find an EENN with an exit
        console.print(f"[bold yellow]warning:[/] {note}")
    grid = space.threshold_grid
    evaluator = ProxyEvaluator(
        split=search_val, costs=prepared.costs, platform=prepared.platform, threshold_grid=grid
    )
    calibration_evaluator = None if calibration is None else ProxyEvaluator(
        split=calibration, costs=prepared.costs, platform=prepared.platform, threshold_grid=grid
    )
    test_evaluator = ProxyEvaluator(
        split=table.test, costs=prepared.costs, platform=prepared.platform, threshold_grid=grid
    )
    result = run_search(
        evaluator=evaluator,
        space=space,
        settings=settings.search,
        objectives=list(settings.objectives),
        constraints=settings.constraints,
        seed=settings.seed,
        run_dir=run_dir,
        test_evaluator=test_evaluator,
        calibration_evaluator=calibration_evaluator,
        progress=progress,
    )
    summary = _summary(prepared, result, settings.name, notes)
    write_summary(run_dir, summary)
    write_report(run_dir)
    chosen = result.chosen
    opening = _infeasible_text(summary, result.message)
    if opening:
        console.print(f"[bold red]{opening}[/]")
    with (run_dir / SUMMARY_TXT).open("w") as fh:
        if opening:
            fh.write(opening + "\n")
        if chosen.get("config"):
            final = _final_table(summary, chosen, prepared)
            console.print(final)
            Console(file=fh, width=120).print(final)
    console.print(f"run folder: {run_dir}  (report: {run_dir / REPORT})")
    return RunOutcome(run_dir=run_dir, prepared=prepared, result=result, summary=summary)
