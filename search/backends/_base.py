"""The ask/tell contract every backend implements, and the factory that builds one.

A backend proposes a population of an :class:`spaces.space.EarlyExitSpace`
as a ``(P, G)`` gene matrix and learns from its objective (``F``, minimised)
and constraint (``G``, <= 0 satisfied) values. ``history`` holds the trials a
previous, interrupted run of the same strategy already evaluated, so a
backend can continue from them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from spaces.space import EarlyExitSpace

__all__ = ["BACKENDS", "Backend", "History", "make_backend"]

BACKENDS: tuple[str, ...] = ("pymoo_nsga2", "optuna_nsga2", "optuna_tpe", "random")


@dataclass(frozen=True, kw_only=True, eq=False)
class History:
    """Trials already evaluated by this strategy (canonical gene rows, F, G)."""

    X: NDArray[np.float64]
    F: NDArray[np.float64]
    G: NDArray[np.float64]

    def __len__(self) -> int:
        return len(self.X)


class Backend(Protocol):
    """Three calls, like an Optuna sampler: propose, learn, and a name for the records."""

    name: str
    # tell() writes to a store outside the run folder (an Optuna database): the loop writes
    # the run folder's trials first, so a process killed in between loses nothing it told
    persistent: bool

    def ask(self, n: int) -> NDArray[np.float64]:
        """At most ``n`` gene rows to evaluate next (fewer or none when the space is exhausted).

        Rows need not be canonical: the loop repairs them before evaluating.
        """
        ...

    def tell(self, X: NDArray[np.float64], F: NDArray[np.float64], G: NDArray[np.float64],
             new: NDArray[np.bool_] | None = None) -> None:
        """Objective and constraint values of the rows returned by the last ``ask``.

        ``new`` marks the rows the run logged as trials; the others repeat an EENN this
        strategy evaluated before (their figures are that EENN's).
        """
        ...

    @property
    def generation(self) -> int:
        """Generation (or batch) number of the genomes the last ``ask`` returned."""
        ...


def make_backend(name: str, *, space: EarlyExitSpace, cfg: Mapping[str, Any], seed: int,
                 n_obj: int, n_constr: int, run_dir: Path, history: History,
                 objectives: Sequence[str] | None = None) -> Backend:
    """Build backend ``name`` with options from ``conf/search/<name>.yaml``.

    ``objectives`` (names) lets a stored Optuna study be checked against the run's objectives.
    """
    population = int(cfg.get("population", 50))
    if population < 2:
        raise ValueError(f"search.population={population!r} must be >= 2")
    if name == "pymoo_nsga2":
        from search.backends._pymoo import PymooNSGA2

        return PymooNSGA2(space=space, cfg=cfg, seed=seed, n_obj=n_obj, n_constr=n_constr,
                          history=history)
    if name in ("optuna_nsga2", "optuna_tpe"):
        from search.backends._optuna import OptunaBackend

        return OptunaBackend(name=name, space=space, cfg=cfg, seed=seed, n_obj=n_obj,
                             run_dir=run_dir, history=history, objectives=objectives)
    if name == "random":
        from search.backends._random import RandomSearch

        return RandomSearch(space=space, batch=population, seed=seed, history=history)
    raise ValueError(f"search.backend={name!r} is not one of {BACKENDS}")
