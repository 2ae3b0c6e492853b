"""Optuna's NSGAIISampler and TPESampler on the flat encoding, through study.ask/tell.

Every gene is asked in every trial (fixed distributions), because Optuna's
NSGA-II cannot evolve a parameter that exists only in some trials. The
sampler sees the raw genes it proposed; the repaired (canonical) genome is
what gets evaluated. Constraints are set with ``Trial.set_constraint`` (the
user attribute ``constraints`` and ``constraints_func`` on Optuna < 5).

Storage: ``search.storage`` is any SQLAlchemy URL; ``null`` means
``sqlite:///<run_dir>/optuna.db``. The study is created with its objective
names or, when stored, checked against them (one-line error otherwise); see
:class:`OptunaBackend` for how the two kinds of storage are used, how the
sampler is seeded and how a run killed between ask and tell is made whole.
"""

from __future__ import annotations

import contextlib
import socket
import warnings
import weakref
from collections.abc import Iterator, Mapping, Sequence
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
from search.backends._storage import (
    Heartbeat,
    check_shared_study,
    connect,
    fail_stale_trials,
)
from search.rundir import OPTUNA_DB
from search.settings import SearchSettings
from spaces.space import EarlyExitSpace

__all__ = ["OptunaBackend"]

_CONSTRAINTS_ATTR = "constraints"
_RUN_ATTR = "eenn_run"  # [run id, index among the run's trials of this strategy]
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


def _sampler(name: str, settings: SearchSettings, seed: int) -> optuna.samplers.BaseSampler:
    """The sampler; constraints via Trial.set_constraint (Optuna >= 5) or constraints_func."""
    func = None if _HAS_SET_CONSTRAINT else _constraints
    if name == "optuna_nsga2":
        return optuna.samplers.NSGAIISampler(population_size=settings.population, seed=seed,
                                             constraints_func=func)
    return optuna.samplers.TPESampler(seed=seed, constraints_func=func,
                                      n_startup_trials=settings.n_startup_trials,
                                      multivariate=settings.multivariate,
                                      constant_liar=True)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence Optuna's experimental-API warnings and its ask-outside-optimize heartbeat note."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message="Heartbeat of storage")
        yield


def _open(rdb: optuna.storages.RDBStorage, *, study_name: str, objectives: Sequence[str] | None,
          n_obj: int, sampler: optuna.samplers.BaseSampler | None) -> optuna.Study:
    """Create or load the stored study; checked by objective names when they are known."""
    if objectives is not None:
        check_shared_study(storage=rdb, study_name=study_name, objectives=objectives)
    return optuna.create_study(storage=rdb, study_name=study_name, sampler=sampler,
                               directions=[StudyDirection.MINIMIZE] * n_obj, load_if_exists=True)


def _run_id(run_dir: Path) -> str:
    """Names this run folder among every process sharing a study (host and absolute path)."""
    return f"{socket.gethostname()}:{Path(run_dir).resolve()}"


class OptunaBackend:
    """One Optuna study; ``ask(n)`` opens n trials at once (a generation / a parallel batch).

    ``storage: null`` (the run's own SQLite file): the sampler runs on an
    in-memory copy of the study (asking through SQLite costs a database round trip
    per parameter); every told batch is copied to the file with ``add_trials``
    and a resumed run loads it back. An explicit URL is
    used directly, Optuna's usual way, so several processes share one study and
    every sampler sees every process's trials up to its last ask. There, asked
    trials carry a heartbeat (``search.heartbeat_s``, default 60) and stale
    RUNNING trials of a killed process are failed (``search.grace_s``, default
    180) when any process starts or asks; the sampler seed mixes in the number
    of trials already stored, so processes with the same ``seed`` started one
    after another propose different points (processes started at the same
    moment need different seeds: ``python -m search.worker`` mixes in
    ``+worker``). ``":memory:"``: not persisted.

    Each stored trial records its run folder and index; a run resumed from its
    trials.parquet first adds the trials it evaluated but never told (killed
    between the two), so the study and the run folder agree.
    """

    def __init__(self, *, name: str, space: EarlyExitSpace, settings: SearchSettings, seed: int,
                 n_obj: int, run_dir: Path, history: History,
                 objectives: Sequence[str] | None = None) -> None:
        self.name = name
        self._space = space
        self._batch = settings.batch_size
        explicit = settings.storage
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study_name = settings.study_name or name
        self._run = _run_id(run_dir)
        self._offset = len(history)
        self._heartbeat: Heartbeat | None = None
        self._rdb: optuna.storages.RDBStorage | None = None  # shared storage only
        self._study_id = -1
        self._store: optuna.Study | None = None  # where trials persist (None: nowhere)
        self._dists = _distributions(space)
        with _quiet():
            if explicit and explicit != ":memory:":  # shared: the sampler reads the storage
                rdb = connect(str(explicit), heartbeat_s=settings.heartbeat_s,
                              grace_s=settings.grace_s)
                probe = _open(rdb, study_name=study_name, objectives=objectives, n_obj=n_obj,
                              sampler=None)
                fail_stale_trials(probe, rdb)
                stored = len(probe.get_trials(deepcopy=False))
                sampler = _sampler(name, settings, _seed(seed, len(history), stored))
                self._disk = None
                self._study = optuna.load_study(study_name=study_name, storage=rdb,
                                                sampler=sampler)
                self._heartbeat = Heartbeat(rdb)
                self._rdb, self._study_id = rdb, rdb.get_study_id_from_name(study_name)
                weakref.finalize(self, self._heartbeat.close)
                self._store = self._study
            else:
                sampler = _sampler(name, settings, _seed(seed, len(history)))
                self._disk = None if explicit == ":memory:" else _open(
                    connect(f"sqlite:///{Path(run_dir).resolve() / OPTUNA_DB}"),
                    study_name=study_name, objectives=objectives, n_obj=n_obj, sampler=None)
                self._study = optuna.create_study(directions=[StudyDirection.MINIMIZE] * n_obj,
                                                  sampler=sampler)
                self._store = self._disk
            if self._store is not None:
                self._restore(history)
        self.persistent = self._store is not None
        if self._disk is not None:
            self._study.add_trials(self._disk.get_trials(deepcopy=False,
                                                         states=(TrialState.COMPLETE,)))
        self._pending: list[Trial] = []
        self._generation = len(history) // self._batch - 1

    def _restore(self, history: History) -> None:
        """Add to the stored study the trials of ``history`` this run evaluated but never told."""
        assert self._store is not None
        if not len(history):
            return
        stored = self._store.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if any(_RUN_ATTR not in t.user_attrs for t in stored):
            return  # written before runs were recorded: cannot tell which trials are ours
        told = {int(t.user_attrs[_RUN_ATTR][1]) for t in stored
                if t.user_attrs[_RUN_ATTR][0] == self._run}
        genomes = self._space.to_genomes(history.X)
        self._store.add_trials([self._frozen(genomes[i], history.F[i], history.G[i], i)
                                for i in range(len(history)) if i not in told])

    def close(self) -> None:
        """Stop the heartbeat: trials asked and not told will be failed as stale."""
        if self._heartbeat is not None:
            self._heartbeat.close()

    @property
    def generation(self) -> int:
        return self._generation

    def ask(self, n: int) -> NDArray[np.float64]:
        self._generation += 1
        with _quiet():
            if self._heartbeat is not None:
                fail_stale_trials(self._study, self._rdb)
            self._pending = [self._ask() for _ in range(min(n, self._batch))]
        return self._space.to_matrix([t.params for t in self._pending])

    def _ask(self) -> Trial:
        """One trial with every gene; beating (shared storage) before its genes are suggested."""
        trial = self._study.ask()
        if self._heartbeat is not None and self._rdb is not None:
            self._heartbeat.hold([self._rdb.get_trial_id_from_study_id_trial_number(
                self._study_id, trial.number)])
        for name, dist in self._dists.items():
            if isinstance(dist, CategoricalDistribution):
                trial.suggest_categorical(name, dist.choices)
            elif isinstance(dist, IntDistribution):
                trial.suggest_int(name, dist.low, dist.high)
            else:
                assert isinstance(dist, FloatDistribution)
                trial.suggest_float(name, dist.low, dist.high)
        return trial

    def tell(self, X: NDArray[np.float64], F: NDArray[np.float64], G: NDArray[np.float64],
             new: NDArray[np.bool_] | None = None) -> None:
        """Tell every trial; those the run logged (``new``) carry their index in the run."""
        if len(X) != len(self._pending):
            raise RuntimeError("tell() must answer the rows of the last ask()")
        new = np.ones(len(X), dtype=bool) if new is None else np.asarray(new, dtype=bool)
        index = np.where(new, self._offset + np.cumsum(new) - 1, -1)  # -1: a repeat, not logged
        told = set()
        for trial, f, g, i in zip(self._pending, F, G, index.tolist(), strict=True):
            try:
                told.add(self._tell(trial, f, g, i))
            except optuna.exceptions.UpdateFinishedTrialError:
                # failed as stale by another process (a beat came too late): keep the result
                self._study.add_trial(self._frozen(trial.params, f, g, i))
        self._offset += int(new.sum())
        if self._heartbeat is not None:
            self._heartbeat.release()
        if self._disk is not None:
            self._disk.add_trials([t for t in self._study.get_trials(deepcopy=False)
                                   if t.number in told])
        self._pending = []

    def _tell(self, trial: Trial, f: NDArray[np.float64], g: NDArray[np.float64],
              index: int) -> int:
        """Record constraints and run index, then tell; returns the trial number."""
        trial.set_user_attr(_RUN_ATTR, [self._run, index])
        if _HAS_SET_CONSTRAINT:
            for i, value in enumerate(g):
                trial.set_constraint(f"c{i}", float(value))
        else:
            trial.set_user_attr(_CONSTRAINTS_ATTR, [float(x) for x in g])
        self._study.tell(trial, [float(x) for x in f])
        return trial.number

    def _frozen(self, params: Mapping[str, Any], f: Sequence[float], g: Sequence[float],
                index: int) -> FrozenTrial:
        """A COMPLETE trial for ``add_trial(s)`` with this run's index and the constraints."""
        if _HAS_SET_CONSTRAINT:
            system = {f"constraints:c{j}": float(x) for j, x in enumerate(g)}
            user: dict[str, Any] = {_RUN_ATTR: [self._run, index]}
        else:
            system, user = {}, {_RUN_ATTR: [self._run, index],
                                _CONSTRAINTS_ATTR: [float(x) for x in g]}
        return optuna.trial.create_trial(params={k: params[k] for k in self._dists},
                                         distributions=self._dists,
                                         values=[float(x) for x in f], system_attrs=system,
                                         user_attrs=user)


def _seed(*parts: int) -> int:
    """A sampler seed mixed from the run's seed and what is already done or stored."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])
