"""The ask/tell contract every backend implements, and the factory that builds one.

A backend proposes a population of an :class:`spaces.space.EarlyExitSpace`
as a ``(P, G)`` gene matrix and learns from its objective (``F``, minimised)
and constraint (``G``, <= 0 satisfied) values. ``history`` holds the trials a
previous, interrupted run of the same strategy already evaluated, so a
backend can continue from them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

__all__ = ["Backend", "History"]


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
