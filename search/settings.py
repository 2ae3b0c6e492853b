"""Typed settings of the ``search`` group: the backend, its budget and every backend's options.

The field defaults are the one place a default lives: they are the default search (pymoo
NSGA-II, 3,000 evaluations, population 100, with the reference strategies), and each
``conf/search/<backend>.yaml`` names only what that preset chooses differently. Options of
other backends are carried but unused (pymoo's operators under ``search=random``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from evaluators.settings import ConfigError, Group

__all__ = ["BACKENDS", "BASELINES", "SearchSettings"]

BACKENDS: tuple[str, ...] = ("pymoo_nsga2", "optuna_nsga2", "optuna_tpe", "random")
BASELINES: tuple[str, ...] = ("random", "manual")


@dataclass(frozen=True, kw_only=True)
class SearchSettings:
    """``conf/search/<backend>.yaml``.

    ``budget``: evaluations of the main strategy (random search runs the same budget);
    ``population``: a generation (NSGA-II) or a batch (random, Optuna without ``batch``);
    ``baselines``: reference strategies evaluated in the same run; ``manual_thresholds``:
    global thresholds the manual recipe sweeps per device placement.

    pymoo NSGA-II (its mixed-variable recipe, tuned on benchmarks/bench_search_quality.py):
    ``crossover_eta`` (SBX for integer/real genes), ``mutation_eta`` (polynomial mutation),
    ``mutation_prob`` (per gene; ``None``: pymoo's 1/n); ``inactive_genes``: ``keep`` lets
    evolving genomes keep the head/threshold genes of disabled exits, ``canonical`` resets them.

    Optuna: ``storage`` (SQLAlchemy URL; ``None``: ``sqlite:///<run_dir>/optuna.db``, a rerun
    in the same folder resumes; ``":memory:"``: not persisted), ``study_name`` (``None``: the
    backend name), ``heartbeat_s`` / ``grace_s`` (shared URLs only: heartbeat of trials in
    hand, and how long a silent trial may stay RUNNING before another process fails it);
    TPE: ``batch`` (trials asked at once, kept apart by the constant liar; ``None``:
    ``population``), ``n_startup_trials``, ``multivariate``.
    """

    backend: str = "pymoo_nsga2"
    budget: int = 3000
    population: int = 100
    baselines: tuple[str, ...] = BASELINES
    manual_thresholds: int = 64
    crossover_eta: float = 15.0
    mutation_eta: float = 5.0
    mutation_prob: float | None = 0.1
    inactive_genes: str = "keep"
    storage: str | None = None
    study_name: str | None = None
    heartbeat_s: int = 60
    grace_s: int = 180
    batch: int | None = None
    n_startup_trials: int = 50
    multivariate: bool = True

    @property
    def batch_size(self) -> int:
        """Trials an Optuna backend asks at once: ``batch``, or else ``population``."""
        return self.batch or self.population

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any] | None) -> SearchSettings:
        """Read ``search`` once; every check that needs no space or data happens here."""
        g = Group.of("search", cfg)
        g.check_keys(f.name for f in fields(cls))
        d = cls()
        backend = g.text("backend", d.backend, choices=BACKENDS)
        budget = g.integer("budget", d.budget, low=1)
        population = g.integer("population", d.population)
        if population < 2:
            raise ConfigError(f"search.population={population!r} must be >= 2")
        baselines = g.items("baselines", d.baselines, item=str, what="a list of strategies")
        if set(baselines) - set(BASELINES):
            raise ConfigError(f"search.baselines={list(baselines)!r}: use a subset of "
                              "[random, manual]")
        return cls(backend=backend, budget=budget, population=population, baselines=baselines,
                   **_manual_and_pymoo(g, d), **_optuna(g, d))


def _manual_and_pymoo(g: Group, d: SearchSettings) -> dict[str, Any]:
    manual = g.integer("manual_thresholds", d.manual_thresholds)
    if manual < 1:
        raise ConfigError(f"search.manual_thresholds={manual!r} must be >= 1")
    inactive = g.text("inactive_genes", d.inactive_genes)
    if inactive not in ("keep", "canonical"):
        raise ConfigError(f"search.inactive_genes={inactive!r} must be 'keep' or 'canonical'")
    return {"manual_thresholds": manual, "inactive_genes": inactive,
            "crossover_eta": g.number("crossover_eta", d.crossover_eta, low=0.0),
            "mutation_eta": g.number("mutation_eta", d.mutation_eta, low=0.0),
            "mutation_prob": g.number("mutation_prob", d.mutation_prob, low=0.0, high=1.0,
                                      optional=True)}


def _optuna(g: Group, d: SearchSettings) -> dict[str, Any]:
    beat = g.integer("heartbeat_s", d.heartbeat_s)
    grace = g.integer("grace_s", d.grace_s)
    if beat < 1 or grace <= beat:
        raise ConfigError(f"search.heartbeat_s={beat!r}, search.grace_s={grace!r}: use "
                          "heartbeat_s >= 1 and grace_s > heartbeat_s (e.g. 60 and 180)")
    return {"storage": g.text("storage", d.storage, optional=True),
            "study_name": g.text("study_name", d.study_name, optional=True),
            "heartbeat_s": beat, "grace_s": grace,
            "batch": g.integer("batch", d.batch, low=1, optional=True),
            "n_startup_trials": g.integer("n_startup_trials", d.n_startup_trials, low=0),
            "multivariate": g.flag("multivariate", d.multivariate)}
