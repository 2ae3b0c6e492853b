"""The factory that builds a backend by name from the typed ``search`` settings."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from search.backends._base import Backend, History
from search.settings import BACKENDS, SearchSettings
from spaces.space import EarlyExitSpace

__all__ = ["make_backend"]


def make_backend(name: str, *, space: EarlyExitSpace, settings: SearchSettings, seed: int,
                 n_obj: int, run_dir: Path, history: History,
                 objectives: Sequence[str] | None = None) -> Backend:
    """Backend ``name`` (the main strategy or a reference one) with ``settings``' options.

    ``objectives`` (names) lets a stored Optuna study be checked against the run's objectives.
    """
    if name == "pymoo_nsga2":
        from search.backends._pymoo import PymooNSGA2

        return PymooNSGA2(space=space, settings=settings, seed=seed, history=history)
    if name in ("optuna_nsga2", "optuna_tpe"):
        from search.backends._optuna import OptunaBackend

        return OptunaBackend(name=name, space=space, settings=settings, seed=seed, n_obj=n_obj,
                             run_dir=run_dir, history=history, objectives=objectives)
    if name == "random":
        from search.backends._random import RandomSearch

        return RandomSearch(space=space, batch=settings.population, seed=seed, history=history)
    raise ValueError(f"search.backend={name!r} is not one of {BACKENDS}")
