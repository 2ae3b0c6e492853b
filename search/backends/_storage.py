"""Optuna's database storage for shared studies: connect, check, and keep asked trials alive.

Used by the Optuna backend (``python -m search`` with ``search.storage=<URL>``) and by
``python -m search.worker``. Connecting retries the table-creation race of processes started
together on a fresh database; a bad URL is a one-line error. A stored study is checked by
objective NAMES and never modified. Trials a process has asked but not yet told get a
heartbeat (Optuna's ``RDBStorage(heartbeat_interval=..., grace_period=...)``) from a
background thread, so :func:`fail_stale_trials` run by any process marks the trials of a
killed one FAIL once the grace period has passed.
"""

from __future__ import annotations

import contextlib
import datetime
import threading
import time
import warnings
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.trial import TrialState

__all__ = [
    "Heartbeat",
    "check_shared_study",
    "connect",
    "fail_stale_trials",
    "redacted",
]

_URL_HINT = "postgresql+psycopg2://user:password@host:port/db"


def redacted(url: str) -> str:
    """The URL with any password replaced, for messages and worker.json."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy can parse: quote it as given
        return url


def connect(storage: str, *, heartbeat_s: int | None = None, grace_s: int | None = None,
            attempts: int = 5) -> optuna.storages.RDBStorage:
    """Connect (creating Optuna's tables on first use); one-line errors for a bad URL.

    Processes started together on a fresh database race to create the tables; the loser
    sees a unique-key violation or "relation already exists" (PostgreSQL checks the catalog
    before the unique index) and simply connects again.
    """
    from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError, SQLAlchemyError

    for attempt in range(attempts):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(storage, heartbeat_interval=heartbeat_s,
                                                  grace_period=grace_s)
        except (IntegrityError, ProgrammingError) as err:
            lost_race = isinstance(err, IntegrityError) or "already exists" in str(err)
            if not lost_race or attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))
        except (SQLAlchemyError, ImportError) as err:
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            what = "cannot be reached" if isinstance(err, OperationalError | ImportError) else \
                "failed"
            raise ValueError(f"search.storage={redacted(storage)!r} {what} ({first}); start the "
                             f"database or fix the URL ({_URL_HINT})") from None
    raise AssertionError("unreachable")


def _stored_objectives(rdb: Any, study_name: str, n_obj: int) -> tuple[list[str] | None, int]:
    """(objective names or None, number of directions) of a stored study."""
    for _ in range(20):  # a process that has just created it is about to name its objectives
        study = optuna.load_study(study_name=study_name, storage=rdb)
        if study.metric_names is not None or len(study.directions) != n_obj:
            break
        time.sleep(0.05)
    return study.metric_names, len(study.directions)


def check_shared_study(*, storage: str | optuna.storages.RDBStorage, study_name: str,
                       objectives: Sequence[str]) -> None:
    """Create the study (objective names recorded) or check the stored one has these objectives.

    Raises a one-line ``ValueError`` for an unreachable database or a study of the same name
    created with other objectives; an existing study is only read, never changed. A stored
    study without objective names (made before names were recorded) is checked by count only.
    """
    from sqlalchemy.exc import IntegrityError

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rdb = connect(storage) if isinstance(storage, str) else storage
    url = storage if isinstance(storage, str) else rdb.url
    objectives = list(objectives)
    names = [s.study_name for s in optuna.get_all_study_summaries(rdb, include_best_trial=False)]
    if study_name not in names:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study = optuna.create_study(storage=rdb, study_name=study_name, load_if_exists=True,
                                        directions=["minimize"] * len(objectives))
            if study.metric_names is None:
                with contextlib.suppress(IntegrityError):  # another process named them first
                    study.set_metric_names(objectives)
    stored, count = _stored_objectives(rdb, study_name, len(objectives))
    if (stored is None and count != len(objectives)) or (stored is not None
                                                         and list(stored) != objectives):
        held = stored if stored is not None else f"{count} unnamed objectives"
        raise ValueError(f"search.study_name={study_name!r} in {redacted(str(url))} holds "
                         f"objectives {held}, this run has {objectives}; use the same objectives "
                         "or another search.study_name")


class Heartbeat:
    """A daemon thread recording a heartbeat for the trials asked and not yet told.

    Optuna's own heartbeat thread covers one trial inside ``study.optimize``; an ask/tell
    loop holds a whole batch, so this one beats for a set of trial ids.
    """

    def __init__(self, storage: optuna.storages.RDBStorage) -> None:
        self._storage = storage
        self._interval = float(storage.get_heartbeat_interval() or 60)
        self._ids: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="eenn-heartbeat")
        self._thread.start()

    def hold(self, trial_ids: Sequence[int]) -> None:
        """Start beating for these trials (a first beat at once: stale detection needs one)."""
        for trial_id in trial_ids:
            self._storage.record_heartbeat(trial_id)
        with self._lock:
            self._ids.update(trial_ids)

    def release(self) -> None:
        """Stop beating for every held trial (they have been told)."""
        with self._lock:
            self._ids.clear()

    def close(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            with self._lock:
                ids = sorted(self._ids)
            for trial_id in ids:
                with contextlib.suppress(Exception):  # a lost beat only risks an early FAIL
                    self._storage.record_heartbeat(trial_id)


def fail_stale_trials(study: optuna.Study,
                      storage: optuna.storages.RDBStorage | None = None) -> None:
    """Mark a dead worker's trials FAIL: Optuna's stale check plus the creation gap.

    Optuna only judges trials that have a heartbeat. A worker killed between creating a trial
    and its first beat leaves a RUNNING trial with none; since every worker here beats at
    once, such a trial older than the grace period is an orphan too. ``storage`` is the
    study's RDBStorage (as :func:`connect` returned it).
    """
    optuna.storages.fail_stale_trials(study)
    if storage is None:
        # no public accessor for a study's storage exists; Optuna wraps an RDBStorage in a cache
        inner = getattr(study, "_storage", None)
        storage = getattr(inner, "_backend", inner)
    if not isinstance(storage, optuna.storages.RDBStorage) or not storage.heartbeat_interval:
        return
    grace = storage.grace_period or 2 * storage.heartbeat_interval
    now = datetime.datetime.now()
    study_id = storage.get_study_id_from_name(study.study_name)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        started = trial.datetime_start
        if started is None or (now - started).total_seconds() <= grace:
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        with contextlib.suppress(Exception):  # another process failed it first
            if not _has_heartbeat(storage, trial_id):
                storage.set_trial_state_values(trial_id, state=TrialState.FAIL)


def _has_heartbeat(storage: optuna.storages.RDBStorage, trial_id: int) -> bool:
    # no public API reads a trial's heartbeat: Optuna's own table model and session are used
    from optuna.storages._rdb import models

    with storage.scoped_session() as session:
        return bool(session.query(models.TrialHeartbeatModel)
                    .filter(models.TrialHeartbeatModel.trial_id == trial_id).count())
