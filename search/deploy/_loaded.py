"""A run folder reloaded for deployment: its settings, trials, chosen point and prepared
pipeline, checked against the backbone the run searched; and which trials a ``--points``
(``--point``) argument names. Shared by evaluate, export and the distributed runtime."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from search import rundir
from search.config import ExperimentSettings, parse_config
from search.pipeline import Prepared, prepare

__all__ = ["LoadedRun", "load_run", "select_trials"]


@dataclass(frozen=True, kw_only=True, eq=False)
class LoadedRun:
    """A run folder reloaded: its config, trials, summary and the prepared pipeline."""

    run_dir: Path
    settings: ExperimentSettings
    trials: pd.DataFrame
    summary: dict[str, Any]
    chosen: dict[str, Any]
    prepared: Prepared


def load_run(run_dir: Path, *, progress: bool = False) -> LoadedRun:
    """Reload ``run_dir``; the backbone and candidates must be those the run searched."""
    run_dir = Path(run_dir)
    folder = rundir.load_run(run_dir)
    trials, summary, chosen, cfg = folder.trials, folder.summary, folder.chosen or {}, folder.config
    if cfg is None:
        raise FileNotFoundError(f"{run_dir} has no config.yaml or .hydra/config.yaml; is it a run "
                                "folder written by python -m search?")
    model_cfg = cfg.get("model") or {}
    if not model_cfg.get("checkpoint") and summary.get("backbone_checkpoint"):
        # the run trained its backbone: reuse that very file, never retrain behind the user's back
        checkpoint = Path(str(summary["backbone_checkpoint"]))
        if not checkpoint.is_file():
            raise ValueError(f"run {run_dir} used the backbone {checkpoint}, which is gone; "
                             "restore it (or the run's cache_dir) or start a new run "
                             "with python -m search")
        cfg = {**cfg, "model": {**model_cfg, "checkpoint": str(checkpoint)}}
    settings = parse_config(cfg)
    prepared = prepare(settings, progress=progress)
    want, have = summary.get("weights_hash"), prepared.backbone.weights_hash
    if want and want != have:
        raise ValueError(f"the backbone no longer matches run {run_dir}: weights hash {have[:12]} "
                         f"!= {str(want)[:12]} in summary.json; restore the run's checkpoint/cache "
                         "or start a new run with python -m search")
    names = [c["name"] for c in summary.get("candidates", [])]
    if names and names != list(prepared.costs.candidate_names):
        raise ValueError(f"the exit candidates changed since run {run_dir} ({names} -> "
                         f"{list(prepared.costs.candidate_names)}); start a new run")
    return LoadedRun(run_dir=run_dir, settings=settings, trials=trials, summary=summary,
                     chosen=chosen, prepared=prepared)


def select_trials(trials: pd.DataFrame, chosen: dict[str, Any], points: str,
                  *, strategy: str | None = None) -> list[int]:
    """Trial ids for ``points``: all, pareto (main strategy), chosen, or ``i,j,k``."""
    points = str(points).strip()
    known = set(int(t) for t in trials["trial"])
    if points == "all":
        return sorted(known)
    if points == "pareto":
        rows = trials[trials["pareto"].astype(bool)]
        if strategy is not None:
            rows = rows[rows["strategy"] == strategy]
        return sorted(int(t) for t in rows["trial"])
    if points == "chosen":
        if chosen.get("trial") is None:
            raise ValueError("chosen.yaml names no trial (the run found no point); "
                             "pass --points pareto or trial ids")
        return [int(chosen["trial"])]
    try:
        wanted = [int(p) for p in points.split(",") if p.strip()]
    except ValueError:
        raise ValueError(f"--points {points!r} is not all, pareto, chosen or trial ids "
                         "like 3,17,42") from None
    bad = [t for t in wanted if t not in known]
    if bad or not wanted:
        raise ValueError(f"--points {points!r}: trial(s) {bad} not in trials.parquet "
                         f"(trials {min(known)}..{max(known)})")
    return wanted
