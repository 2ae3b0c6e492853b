"""Random search: uniform exit counts and genes, the reference every strategy must beat.

Draws that repeat an EENN already evaluated (by its canonical row) are drawn
again, so the budget is spent on distinct EENNs; when the space runs out of
new ones, ``ask`` returns fewer rows or none.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from search.backends._base import History
from spaces.space import EarlyExitSpace

__all__ = ["RandomSearch"]

_ATTEMPTS = 20  # fresh draws per batch before the space counts as exhausted


class RandomSearch:
    """Samples :meth:`EarlyExitSpace.sample_matrix`; a resumed run re-seeds from (seed, done)."""

    name = "random"
    persistent = False

    def __init__(self, *, space: EarlyExitSpace, batch: int, seed: int, history: History) -> None:
        self._space, self._batch = space, batch
        self._rng = np.random.default_rng([seed, len(history)])
        self._generation = len(history) // batch - 1
        self._seen: set[bytes] = set(space.keys(history.X)) if len(history) else set()

    @property
    def generation(self) -> int:
        return self._generation

    def ask(self, n: int) -> NDArray[np.float64]:
        self._generation += 1
        want = min(n, self._batch)
        rows: list[NDArray[np.float64]] = []
        for _ in range(_ATTEMPTS):
            X = self._space.sample_matrix(want - len(rows), self._rng)
            for row, key in zip(X, self._space.keys(X), strict=True):
                if key not in self._seen:
                    self._seen.add(key)
                    rows.append(row)
            if len(rows) == want:
                break
        return np.array(rows).reshape(-1, self._space.n_genes)

    def tell(self, X: NDArray[np.float64], F: NDArray[np.float64], G: NDArray[np.float64],
             new: NDArray[np.bool_] | None = None) -> None:
        """Random search learns nothing."""
