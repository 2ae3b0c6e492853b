"""Optuna's NSGAIISampler and TPESampler on the flat encoding, through study.ask/tell.

Every gene is asked in every trial (fixed distributions), because Optuna's
NSGA-II cannot evolve a parameter that exists only in some trials. The
sampler sees the raw genes it proposed; the repaired (canonical) genome is
what gets evaluated. Constraints are set with ``Trial.set_constraint`` (the
user attribute ``constraints`` and ``constraints_func`` on Optuna < 5).

Storage: ``search.storage`` is any SQLAlchemy URL; ``null`` means
``sqlite:///<run_dir>/optuna.db``. The study is loaded if it exists and the
sampler is re-seeded from (seed, number of stored trials); see
:class:`OptunaBackend` for how the two kinds of storage are used.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from numpy.typing import NDArray
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, Trial, TrialState

from search.backends._base import History
from spaces.space import EarlyExitSpace, Genome

__all__ = ["OptunaBackend"]

_CONSTRAINTS_ATTR = "constraints"
_HAS_SET_CONSTRAINT = hasattr(Trial, "set_constraint")


def _constraints(trial: FrozenTrial) -> Sequence[float]:
    return list(trial.user_attrs.get(_CONSTRAINTS_ATTR, []))


def _distributions(space: EarlyExitSpace) -> dict[str, BaseDistribution]:
    out: dict[str, BaseDistribution] = {}
    for v in space.variables:
        if v.kind == "bool":
            out[v.name] = CategoricalDistribution([False, True])
        elif v.kind == "int":
            out[v.name] = IntDistribution(int(v.low), int(v.high))
        elif v.kind == "float":
            out[v.name] = FloatDistribution(v.low, v.high)
        else:
            out[v.name] = CategoricalDistribution(list(v.choices))
    return out


def _sampler(name: str, cfg: Mapping[str, Any], seed: int,
             population: int) -> optuna.samplers.BaseSampler:
    """The sampler; constraints via Trial.set_constraint (Optuna >= 5) or constraints_func."""
    func = None if _HAS_SET_CONSTRAINT else _constraints
    if name == "optuna_nsga2":
        return optuna.samplers.NSGAIISampler(population_size=population, seed=seed,
                                             constraints_func=func)
    return optuna.samplers.TPESampler(seed=seed, constraints_func=func,
                                      n_startup_trials=int(cfg.get("n_startup_trials", 20)),
                                      multivariate=bool(cfg.get("multivariate", True)),
                                      constant_liar=True)


class OptunaBackend:
    """One Optuna study; ``ask(n)`` opens n trials at once (a generation / a parallel batch).

    ``storage: null`` (the run's own SQLite file): the sampler runs on an
    in-memory copy of the study (an SQLite round trip per parameter made asking
    ~150x slower); every told batch is copied to the file with ``add_trials``
    (~15-35 ms per trial) and a resumed run loads it back. An explicit URL is
    used directly, Optuna's usual way, so several workers can share one study
    (each sampler sees every worker's trials). ``":memory:"``: not persisted.
    """

    def __init__(self, *, name: str, space: EarlyExitSpace, cfg: Mapping[str, Any], seed: int,
                 n_obj: int, run_dir: Path, history: History) -> None:
        self.name = name
        self._space = space
        population = int(cfg.get("population", 50))
        self._batch = int(cfg.get("batch") or population)
        explicit = cfg.get("storage")
        storage = explicit or f"sqlite:///{Path(run_dir).resolve() / 'optuna.db'}"
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        sampler_seed = int(np.random.SeedSequence([seed, len(history)]).generate_state(1)[0])
        directions: list[StudyDirection] = [StudyDirection.MINIMIZE] * n_obj
        sampler = _sampler(name, cfg, sampler_seed, population)
        study_name = str(cfg.get("study_name") or name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if explicit and explicit != ":memory:":  # shared: the sampler reads the storage
                self._disk = None
                self._study = optuna.create_study(storage=str(storage), directions=directions,
                                                  load_if_exists=True, study_name=study_name,
                                                  sampler=sampler)
            else:
                self._disk = None if explicit == ":memory:" else optuna.create_study(
                    storage=str(storage), directions=directions, load_if_exists=True,
                    study_name=study_name)
                self._study = optuna.create_study(directions=directions, sampler=sampler)
        if self._disk is not None:
            self._study.add_trials(self._disk.get_trials(deepcopy=False,
                                                         states=(TrialState.COMPLETE,)))
        self._dists = _distributions(space)
        self._pending: list[Trial] = []
        self._generation = len(history) // self._batch - 1

    @property
    def generation(self) -> int:
        return self._generation

    def ask(self, n: int) -> list[Genome]:
        self._generation += 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self._pending = [self._study.ask(self._dists) for _ in range(min(n, self._batch))]
        return [dict(t.params) for t in self._pending]

    def tell(self, genomes: Sequence[Genome], F: NDArray[np.float64],
             G: NDArray[np.float64]) -> None:
        if len(genomes) != len(self._pending):
            raise RuntimeError("tell() must answer the genomes of the last ask()")
        for trial, f, g in zip(self._pending, F, G, strict=True):
            if _HAS_SET_CONSTRAINT:
                for i, value in enumerate(g):
                    trial.set_constraint(f"c{i}", float(value))
            else:
                trial.set_user_attr(_CONSTRAINTS_ATTR, [float(x) for x in g])
            self._study.tell(trial, [float(x) for x in f])
        told = {t.number for t in self._pending}
        if self._disk is not None:
            self._disk.add_trials([t for t in self._study.get_trials(deepcopy=False)
                                   if t.number in told])
        self._pending = []
