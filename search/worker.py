"""``python -m search.worker``: one of several processes that share one Optuna study in a database.

Start as many as you like, on one machine or many, with the same experiment, the same
``search.storage`` (e.g. ``postgresql+psycopg2://user:pw@host/db``) and ``search.study_name``,
and a different ``+worker=<int>`` each::

    python -m search.worker search=optuna_nsga2 search.storage=postgresql+psycopg2://... \\
        search.study_name=resnet152 +worker=3 hydra.run.dir=results/workers/3

Every worker prepares (or reads from the shared ``cache_dir``) the same backbone, features,
heads and prediction table -- the run's ``seed`` fixes data splits and training for all of
them -- and runs its own ask/tell loop with a sampler seeded from ``(seed, worker)``, so workers
propose different points. Each told batch lands in the shared study; the worker's own trials
are also in its run folder (trials.parquet, pareto.csv, chosen.yaml, worker.json). The
reference strategies (random, manual) are left to a normal ``python -m search`` run.
Before any work the database is checked: unreachable, or holding a study of the same name
with other objectives, is a one-line error and nothing stored is touched. A worker killed
between ask and tell leaves its batch RUNNING; its heartbeat stops, and once
``search.grace_s`` (default 180 s; ``search.heartbeat_s`` default 60 s) has passed the next
worker to start or ask marks those trials FAIL. Restarted on the same run folder, a worker
first tells the study the trials its trials.parquet holds and the study lacks.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from evaluators.settings import plain
from search.backends._storage import check_shared_study, redacted
from search.config import ExperimentSettings, parse_config, resolve_guarantee
from search.errors import one_line_errors
from search.rundir import WORKER
from search.settings import SearchSettings
from search.threads import apply_cpu_threads

__all__ = ["WorkerOutcome", "check_shared_study", "main", "work"]

_SHARED_BACKENDS = ("optuna_nsga2", "optuna_tpe")


@dataclass(frozen=True, kw_only=True)
class WorkerOutcome:
    """What one worker did: its trials (numbers within its run) and the study it shared."""

    run_dir: Path
    study_name: str
    worker: int
    sampler_seed: int
    n_trials: int


def _shared_study(search: SearchSettings) -> tuple[str, str]:
    """(storage URL, study name) of a shared study, or a one-line error naming the fix."""
    if search.backend not in _SHARED_BACKENDS:
        raise ValueError(f"search.backend={search.backend!r} cannot share a study; use "
                         "search=optuna_nsga2 or search=optuna_tpe")
    if not search.storage:
        raise ValueError("search.storage=null: workers share a study through a database every "
                         "one of them reaches; set search.storage=postgresql+psycopg2://"
                         "user:password@host:port/db")
    if not search.study_name:
        raise ValueError("search.study_name=null: give every worker the same "
                         "search.study_name=<name>")
    return search.storage, search.study_name


def work(cfg: ExperimentSettings | Mapping[str, Any] | DictConfig, *, run_dir: Path,
         worker: int, progress: bool = True) -> WorkerOutcome:
    """Prepare (cached), then run this worker's share of the shared study into ``run_dir``."""
    from evaluators.predictions import SplitPredictions
    from evaluators.proxy import ProxyEvaluator
    from evaluators.risk import val_parts
    from search.loop import run_search
    from search.pipeline import prepare
    from spaces.space import build_space

    settings = parse_config(cfg)
    storage, study_name = _shared_study(settings.search)
    objectives = list(settings.objectives)
    check_shared_study(storage=storage, study_name=study_name, objectives=objectives)
    seed = settings.seed
    sampler_seed = int(np.random.SeedSequence([seed, int(worker)]).generate_state(1)[0] >> 1)
    search = replace(settings.search, baselines=())
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    prepared = prepare(settings, progress=progress)
    table = prepared.predictions
    settings, _ = resolve_guarantee(settings, n_val=len(table.val.labels))
    search_val, calibration = val_parts(settings.constraints.guarantee, table.val,
                                        seed=settings.data_seed)  # the same cut in every worker
    space = build_space(settings.space, val=search_val, platform=prepared.platform)
    def scorer(split: SplitPredictions) -> ProxyEvaluator:
        return ProxyEvaluator(split=split, costs=prepared.costs, platform=prepared.platform,
                              threshold_grid=space.threshold_grid)

    result = run_search(evaluator=scorer(search_val), space=space, settings=search,
                        objectives=objectives, constraints=settings.constraints,
                        seed=sampler_seed, run_dir=run_dir, test_evaluator=scorer(table.test),
                        calibration_evaluator=None if calibration is None else
                        scorer(calibration), progress=progress)
    outcome = WorkerOutcome(run_dir=run_dir, study_name=study_name, worker=int(worker),
                            sampler_seed=sampler_seed, n_trials=len(result.records))
    (run_dir / WORKER).write_text(json.dumps(
        {"study_name": study_name, "storage": redacted(storage), "worker": int(worker),
         "sampler_seed": sampler_seed, "n_trials": outcome.n_trials,
         "objectives": objectives, "strategy": result.strategy}, indent=2))
    return outcome


def _worker_index(cfg: DictConfig) -> tuple[int, dict[str, Any]]:
    """``+worker=<int>`` and the config without it (the experiment's settings know no worker)."""
    rest = dict(plain(cfg))
    raw = rest.pop("worker", 0)
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 0:
        raise ValueError(f"worker={raw!r} must be an integer >= 0; pass +worker=<int>")
    return raw, rest


@hydra.main(config_path="pkg://conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Hydra entry point: ``+worker=<int>`` tells the workers of one study apart."""
    with one_line_errors():
        worker, rest = _worker_index(cfg)
        settings = parse_config(rest)
        apply_cpu_threads(settings.cpu_threads)
        outcome = work(settings, run_dir=Path(HydraConfig.get().runtime.output_dir),
                       worker=worker)
    print(f"worker {outcome.worker}: {outcome.n_trials} trials told to study "
          f"{outcome.study_name!r}; run folder {outcome.run_dir}")


if __name__ == "__main__":
    sys.exit(main())
