"""Random search: uniform exit counts and genes, the reference every strategy must beat."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from search.backends._base import History
from spaces.space import EarlyExitSpace, Genome

__all__ = ["RandomSearch"]


class RandomSearch:
    """Samples with :meth:`EarlyExitSpace.sample`; a resumed run re-seeds from (seed, done)."""

    name = "random"

    def __init__(self, *, space: EarlyExitSpace, batch: int, seed: int, history: History) -> None:
        self._space, self._batch = space, batch
        self._rng = np.random.default_rng([seed, len(history)])
        self._generation = len(history) // batch - 1

    @property
    def generation(self) -> int:
        return self._generation

    def ask(self, n: int) -> list[Genome]:
        self._generation += 1
        return self._space.sample(min(n, self._batch), self._rng)

    def tell(self, genomes: Sequence[Genome], F: NDArray[np.float64],
             G: NDArray[np.float64]) -> None:
        """Random search learns nothing."""
