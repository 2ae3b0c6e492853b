"""The one ask/tell loop that drives every backend, plus the reference strategies.

``run_search`` runs the configured backend until its evaluation budget is
spent, then random search at the same budget and the manual recipe
(:mod:`search.baselines`), logging every evaluated candidate (trials.parquet
is rewritten at most every few seconds, at the end and on KeyboardInterrupt),
then writes pareto.csv and chosen.yaml. Populations travel as gene matrices
(:mod:`spaces.space`) and are scored as one :class:`ConfigBatch`, so the loop
costs about what the proxy costs. An exit by which no val sample leaves only
adds cost: it is dropped before a candidate is logged (the backend is told
the figures of the EENN without it), so no logged trial, and no Pareto
point, carries one; a strategy's budget counts distinct EENNs (a repeat is
told to the backend with its known figures, not logged again). Started
again on the same run folder it resumes:
trials already in trials.parquet count against each strategy's budget and are
handed to the backend (see each backend's docstring for what it does with
them). Same seed, same results.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from evaluators.proxy import OBJECTIVES, ConfigBatch, ConstraintSpec, ProxyEvaluator, ProxyScores
from evaluators.risk import certification_path, path_raises
from search.backends import History, make_backend
from search.baselines import manual_configs
from search.results import TrialLog, choose, scores_to_records, write_results
from search.rundir import PATH_GENERATION, batch_to_json, config_from_json
from search.settings import SearchSettings
from spaces.space import EarlyExitSpace

__all__ = ["PATH_GENERATION", "SearchResult", "run_search"]

# asks in a row that bring no EENN not evaluated before: the backend only finds repeats
_STALE_ASKS = 50


@dataclass(frozen=True, kw_only=True, eq=False)
class SearchResult:
    """Everything a search produced: all trials, the chosen point, each strategy's loop time.

    Hypervolumes come from the run folder contract (:func:`search.rundir.hypervolume_summary`).
    """

    records: pd.DataFrame  # trials.parquet
    strategy: str
    objectives: tuple[str, ...]
    constraint_names: tuple[str, ...]
    chosen: dict[str, Any]  # chosen.yaml
    message: str  # "" or why nothing is feasible
    seconds: dict[str, float]  # per strategy: wall time of its ask/evaluate/tell/log loop

    @property
    def chosen_trial(self) -> int | None:
        trial = self.chosen.get("trial")
        return None if trial is None else int(trial)


@dataclass(frozen=True, kw_only=True, eq=False)
class _Context:
    evaluator: ProxyEvaluator
    space: EarlyExitSpace
    objectives: tuple[str, ...]
    spec: ConstraintSpec
    log: TrialLog
    progress: bool

    def record(self, batch: ConfigBatch, strategy: str, generation: int,
               seen: set[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Evaluate a batch (idle exits dropped), log the EENNs not in ``seen``.

        Returns F and G of every row and the mask of the rows logged.

        ``seen`` (config texts of this strategy's logged trials) grows by the new ones.
        """
        batch, scores = self.prune(batch)
        F, G = scores.objectives(self.objectives), scores.constraints(self.spec)
        texts = batch_to_json(batch)
        new = []
        for i, text in enumerate(texts):
            if text not in seen:
                seen.add(text)
                new.append(i)
        if new:
            rows = np.array(new, dtype=np.int64)
            self.log.append(scores_to_records(
                batch=batch.take(rows), scores=scores.take(rows), F=F[rows], G=G[rows],
                objectives=self.objectives, constraint_names=self.spec.names,
                strategy=strategy, generation=generation, first_trial=self.log.next_trial,
                confidence=self.spec.confidence, config_text=[texts[i] for i in new]))
            self.log.flush_if_due()
        logged = np.zeros(len(F), dtype=bool)
        logged[new] = True
        return F, G, logged

    def prune(self, batch: ConfigBatch) -> tuple[ConfigBatch, ProxyScores]:
        """``batch`` without its idle exits, and its scores."""
        scores = self.evaluator.evaluate(batch)
        idle = scores.idle_exits(batch)
        if idle.any():  # same exits taken without them, at lower cost: the EENN to keep
            batch = batch.without(idle)
            scores = self.evaluator.evaluate(batch)
        return batch, scores

    def seen(self, strategy: str) -> set[str]:
        """Config texts of the trials ``strategy`` has logged (resume included)."""
        df = self.log.frame
        return set(df.loc[df["strategy"] == strategy, "config"]) if len(df) else set()

    def history(self, strategy: str) -> History:
        df = self.log.frame
        rows = df[df["strategy"] == strategy] if len(df) else df
        n_o, n_c = len(self.objectives), len(self.spec.names)
        if not len(rows):
            return History(X=np.zeros((0, self.space.n_genes)), F=np.zeros((0, n_o)),
                           G=np.zeros((0, n_c)))
        X = self.space.to_matrix([self.space.encode(config_from_json(c)) for c in rows["config"]])
        return History(X=X, F=rows[[f"obj_{o}" for o in self.objectives]].to_numpy(float),
                       G=rows[[f"cv_{c}" for c in self.spec.names]].to_numpy(float))


def _drive(ctx: _Context, *, strategy: str, settings: SearchSettings, seed: int, budget: int,
           run_dir: Path) -> None:
    """Ask/tell ``strategy``'s backend until ``budget`` trials of it are recorded."""
    done = ctx.log.count(strategy)
    if done >= budget:
        return
    backend = make_backend(strategy, space=ctx.space, settings=settings, seed=seed,
                           n_obj=len(ctx.objectives),
                           run_dir=run_dir, history=ctx.history(strategy),
                           objectives=ctx.objectives)
    seen, stale = ctx.seen(strategy), 0
    with tqdm(total=budget, initial=done, desc=strategy, disable=not ctx.progress,
              unit="eval") as bar:
        while done < budget and stale < _STALE_ASKS:
            X = backend.ask(budget - done)
            if not len(X):
                break  # the backend cannot propose anything new (space exhausted)
            batch = ctx.space.batch(ctx.space.repair_matrix(X))
            F, G, logged = ctx.record(batch, strategy, backend.generation, seen)
            if backend.persistent:
                ctx.log.flush()  # the run folder holds what the store is about to be told
            backend.tell(X, F, G, logged)
            new = ctx.log.count(strategy) - done
            done, stale = done + new, 0 if new else stale + 1
            bar.update(new)


def _certification_path(ctx: _Context, strategy: str) -> list[int]:
    """Log ``strategy``'s certification path; its trial ids, most conservative first.

    The path (:func:`evaluators.risk.certification_path`) starts from the point
    :func:`search.results.choose` picks on the search part; idle exits are dropped as for
    every trial, and repeats of logged EENNs keep their trial ids. Empty when that point
    is not feasible.
    """
    base, _ = choose(ctx.log.frame, ctx.objectives, strategy)
    if base is None or not bool(base["feasible"]):
        return []
    raises = path_raises(ctx.spec.guarantee.method)
    path = ConfigBatch.from_configs(certification_path(config_from_json(str(base["config"])),
                                                       raises=raises))
    ctx.record(path, strategy, PATH_GENERATION, ctx.seen(strategy))
    texts = batch_to_json(ctx.prune(path)[0])
    df = ctx.log.frame
    rows = df[df["strategy"] == strategy]
    trial_of = dict(zip(rows["config"], rows["trial"].astype(int), strict=True))
    return list(dict.fromkeys(trial_of[t] for t in texts))


def run_search(*, evaluator: ProxyEvaluator, space: EarlyExitSpace,
               settings: SearchSettings | Mapping[str, Any], objectives: Sequence[str],
               constraints: Mapping[str, Any] | ConstraintSpec, seed: int, run_dir: Path,
               test_evaluator: ProxyEvaluator | None = None,
               calibration_evaluator: ProxyEvaluator | None = None,
               progress: bool = True) -> SearchResult:
    """Run the configured search and the reference strategies; write the run folder's results.

    ``settings`` and ``constraints`` are typed settings (a mapping is parsed first). With an
    active ``constraints.guarantee``, ``evaluator`` holds val's search part and
    ``calibration_evaluator`` the held-out part that certifies the chosen point.
    """
    if not isinstance(settings, SearchSettings):
        settings = SearchSettings.from_mapping(settings)
    spec = constraints if isinstance(constraints, ConstraintSpec) else \
        ConstraintSpec.from_mapping(constraints)
    objectives = tuple(objectives)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    ctx = _Context(evaluator=evaluator, space=space, objectives=objectives, spec=spec,
                   log=TrialLog(run_dir, objectives=objectives, constraint_names=spec.names),
                   progress=progress)
    if not objectives or set(objectives) - set(OBJECTIVES):
        raise ValueError(f"objectives={list(objectives)!r}: each must be one of {OBJECTIVES}")
    seconds: dict[str, float] = {}
    try:
        t0 = time.perf_counter()
        _drive(ctx, strategy=settings.backend, settings=settings, seed=seed,
               budget=settings.budget, run_dir=run_dir)
        seconds[settings.backend] = time.perf_counter() - t0
        if "random" in settings.baselines and settings.backend != "random":
            t0 = time.perf_counter()
            _drive(ctx, strategy="random", settings=settings, seed=seed + 1,
                   budget=settings.budget, run_dir=run_dir)
            seconds["random"] = time.perf_counter() - t0
        if "manual" in settings.baselines and ctx.log.count("manual") == 0:
            t0 = time.perf_counter()
            manual = manual_configs(space=space, costs=evaluator.costs, val=evaluator.split,
                                    n_thresholds=settings.manual_thresholds)
            ctx.record(manual, "manual", 0, set())
            seconds["manual"] = time.perf_counter() - t0
        path = (_certification_path(ctx, settings.backend) if spec.guarantee.active
                and calibration_evaluator is not None else [])
    finally:
        ctx.log.flush()  # also on KeyboardInterrupt: nothing evaluated is lost
    records = ctx.log.frame
    chosen = write_results(run_dir, records=records, objectives=objectives,
                           strategy=settings.backend, constraints=spec, evaluator=evaluator,
                           test_evaluator=test_evaluator,
                           calibration_evaluator=calibration_evaluator, candidates=path)
    return SearchResult(records=records, strategy=settings.backend, objectives=objectives,
                        constraint_names=spec.names, chosen=chosen, message=chosen["message"],
                        seconds=seconds)
