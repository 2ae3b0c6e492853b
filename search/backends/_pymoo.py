"""NSGA-II on the space's gene matrix, built from pymoo's operators, driven by ask/tell.

The algorithm is NSGA-II as pymoo's ``NSGA2`` runs it (Deb et al., 2002):
binary tournament on constraint violation, then Pareto dominance, then
crowding distance; offspring from the mixed-variable recipe of pymoo's
``MixedVariableMating``; survival by constraint violation, then pymoo's
non-dominated sorting and crowding distance, ties broken at random. The
state is kept as arrays (genes, objectives, violation, rank, crowding)
rather than pymoo's ``Population`` of ``Individual`` objects: that object
layer costs tens of milliseconds per generation of 100, many times the
proxy that scores the generation. pymoo supplies the array kernels
(``cross_sbx``, ``mut_pm``, ``crossover_mask``, ``NonDominatedSorting``,
``calc_crowding_distance``, ``randomized_argsort``).

Variation per gene family (see :mod:`spaces.space`): uniform crossover and
bit-flip mutation for the on/off genes, SBX and polynomial mutation with
rounding for the integer genes (heads, threshold levels, boundaries) and
without it for continuous thresholds, uniform crossover and random resetting
for the metric; each family's crossover acts on a mating with probability
0.9, polynomial mutation on an individual with probability 0.9, as in
pymoo. The first population comes from the space's sampler (exit counts
uniform in 0..max_exits).

With ``search.inactive_genes: keep`` (default) evolving genomes keep the
head/threshold genes of disabled exits, so re-enabling an exit restores what
it had; ``canonical`` resets them. Offspring that repeat an EENN of the same
batch or one evaluated before (by canonical row) are replaced, so no
evaluation is spent twice.

Resume: the stored trials of this strategy are evaluated individuals; the
best ``population`` of them (the survival above) become the population, and
every stored row is marked as seen. The random state is re-seeded from
(seed, number of stored trials), so a resumed run is reproducible but not
identical to an uninterrupted one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pymoo.operators.crossover.sbx import cross_sbx
from pymoo.operators.mutation.pm import mut_pm
from pymoo.operators.survival.rank_and_crowding.metrics import calc_crowding_distance
from pymoo.util.misc import crossover_mask
from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting
from pymoo.util.randomized_argsort import randomized_argsort

from search.backends._base import History
from search.settings import SearchSettings
from spaces.space import EarlyExitSpace

__all__ = ["PymooNSGA2"]

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]
_P_CROSS, _P_MUT = 0.9, 0.9  # pymoo's per-mating crossover and per-individual PM rates
_MAX_TRIES = 100  # mating rounds per generation before the space counts as exhausted


@dataclass(frozen=True, kw_only=True)
class _Family:
    """Gene columns of one kind, their bounds and variation settings."""

    cols: I64
    kind: str  # bool | int | float | choice
    low: F64
    high: F64
    prob_var: float


def _families(space: EarlyExitSpace, p_m: float | None) -> list[_Family]:
    """The space's genes grouped by kind; ``p_m``: per-gene mutation rate (None: pymoo's 1/n)."""
    out = []
    for kind in ("bool", "int", "float", "choice"):
        genes = [(i, v) for i, v in enumerate(space.variables) if v.kind == kind]
        if not genes:
            continue
        # pymoo's default per-gene rate is 1/n over the genes of one kind (a choice: alone)
        n = len(genes) if kind != "choice" else 1
        out.append(_Family(
            cols=np.array([i for i, _ in genes], dtype=np.int64), kind=kind,
            low=np.array([v.low for _, v in genes], dtype=np.float64),
            high=np.array([v.high if kind != "choice" else len(v.choices) - 1 for _, v in genes],
                          dtype=np.float64),
            prob_var=float(p_m) if p_m is not None and kind != "choice" else min(0.5, 1.0 / n)))
    return out


@dataclass(frozen=True, kw_only=True)
class _Variation:
    """Crossover and mutation of whole offspring matrices, family by family."""

    families: list[_Family]
    eta_c: float
    eta_m: float

    def crossover(self, parents: F64, rng: np.random.Generator) -> F64:
        """(2, matings, genes) parents -> (2 * matings, genes) children."""
        out = np.array(parents, dtype=np.float64)
        n_mat = out.shape[1]
        for fam in self.families:
            x = out[:, :, fam.cols]
            if fam.kind in ("int", "float"):
                size = (n_mat, 1)
                child = cross_sbx(x, fam.low, fam.high, np.full(size, self.eta_c),
                                  np.full(size, 0.5), np.full(size, 0.5), random_state=rng)
            else:
                child = crossover_mask(x, rng.random((n_mat, len(fam.cols))) < 0.5)
            crossed = np.asarray(rng.random(n_mat) < _P_CROSS)
            child = np.where(crossed[None, :, None], child, x)
            out[:, :, fam.cols] = np.rint(child) if fam.kind == "int" else child
        return out.reshape(-1, out.shape[-1])

    def mutate(self, X: F64, rng: np.random.Generator) -> F64:
        """Bit flip, polynomial mutation or random resetting, per family."""
        out = np.array(X, dtype=np.float64)
        for fam in self.families:
            x = out[:, fam.cols]
            if fam.kind == "bool":
                x = np.where(rng.random(x.shape) < fam.prob_var, 1.0 - np.rint(x), x)
            elif fam.kind == "choice":
                new = rng.integers(0, int(fam.high[0]) + 1, size=x.shape)
                x = np.where(rng.random(x.shape) < fam.prob_var, new, x)
            else:
                n = len(x)
                mutated = mut_pm(x, fam.low, fam.high, np.full(n, self.eta_m),
                                 np.full(n, fam.prob_var), False, random_state=rng)
                x = np.where((rng.random(n) <= _P_MUT)[:, None], mutated, x)
                x = np.rint(x) if fam.kind == "int" else x
            out[:, fam.cols] = x
        return out


@dataclass(frozen=True, kw_only=True, eq=False)
class _Population:
    """Evaluated individuals with their NSGA-II rank and crowding distance."""

    X: F64
    F: F64
    cv: F64
    rank: I64
    crowding: F64


def _survive(X: F64, F: F64, cv: F64, n: int, rng: np.random.Generator) -> _Population:
    """pymoo's RankAndCrowding survival: feasible by rank and crowding, then least violation."""
    feasible = np.flatnonzero(cv <= 0)
    rank = np.full(len(X), np.iinfo(np.int64).max, dtype=np.int64)
    crowding = np.zeros(len(X))
    chosen: list[int] = []
    if len(feasible):
        fronts = NonDominatedSorting().do(F[feasible], n_stop_if_ranked=min(n, len(feasible)))
        for k, front in enumerate(fronts):
            idx = feasible[front]
            dist = calc_crowding_distance(F[idx])
            rank[idx], crowding[idx] = k, dist
            room = n - len(chosen)
            if len(idx) > room:
                order = randomized_argsort(dist, order="descending", method="numpy",
                                           random_state=rng)
                idx = idx[order[:room]]
            chosen.extend(idx.tolist())
            if len(chosen) >= n:
                break
    infeasible = np.flatnonzero(cv > 0)
    chosen.extend(infeasible[np.argsort(cv[infeasible], kind="stable")][:n - len(chosen)].tolist())
    keep = np.array(chosen, dtype=np.int64)
    return _Population(X=X[keep], F=F[keep], cv=cv[keep], rank=rank[keep],
                       crowding=crowding[keep])


def _tournament(pop: _Population, n: int, rng: np.random.Generator) -> I64:
    """``n`` winners of binary tournaments (violation, then dominance, then crowding)."""
    size = len(pop.X)
    pairs = np.concatenate([rng.permutation(size) for _ in range(math.ceil(2 * n / size))])
    a, b = pairs[:2 * n].reshape(n, 2).T
    fa, fb = pop.F[a], pop.F[b]
    a_dom = (fa <= fb).all(axis=1) & (fa < fb).any(axis=1)
    b_dom = (fb <= fa).all(axis=1) & (fb < fa).any(axis=1)
    coin = rng.random(n) < 0.5
    by_crowding = np.where(pop.crowding[a] > pop.crowding[b], a,
                           np.where(pop.crowding[b] > pop.crowding[a], b, np.where(coin, a, b)))
    by_cv = np.where(pop.cv[a] < pop.cv[b], a,
                     np.where(pop.cv[b] < pop.cv[a], b, np.where(coin, a, b)))
    feasible = (pop.cv[a] <= 0) & (pop.cv[b] <= 0)
    winner = np.where(a_dom, a, np.where(b_dom, b, by_crowding))
    return np.where(feasible, winner, by_cv).astype(np.int64)


class PymooNSGA2:
    """NSGA-II on the gene matrix; one generation per ``ask``/``tell`` pair."""

    name = "pymoo_nsga2"
    persistent = False

    def __init__(self, *, space: EarlyExitSpace, settings: SearchSettings, seed: int,
                 history: History) -> None:
        self._size = settings.population
        self._space, self._keep = space, settings.inactive_genes == "keep"
        self._variation = _Variation(families=_families(space, settings.mutation_prob),
                                     eta_c=settings.crossover_eta, eta_m=settings.mutation_eta)
        self._rng = np.random.default_rng(np.random.SeedSequence([seed, len(history)]))
        self._seen: set[bytes] = set(space.keys(history.X)) if len(history) else set()
        self._pop: _Population | None = None
        if len(history):
            self._pop = _survive(history.X, history.F, _violation(history.G), self._size,
                                 self._rng)
        self._pending: F64 | None = None
        self._generation = 0

    @property
    def generation(self) -> int:
        return self._generation

    def ask(self, n: int) -> F64:
        self._generation += 1
        X = (self._fresh(self._space.sample_matrix, self._size) if self._pop is None else
             self._fresh(self._offspring, self._size))
        self._pending = X[:max(0, n)]
        if len(X) > len(self._pending):  # asked for fewer: the rest was never evaluated
            self._seen.difference_update(self._space.keys(
                self._space.repair_matrix(X[len(self._pending):])))
        return self._pending

    def _offspring(self, n: int, rng: np.random.Generator) -> F64:
        assert self._pop is not None
        n_mat = math.ceil(n / 2)
        parents = self._pop.X[_tournament(self._pop, 2 * n_mat, rng)].reshape(n_mat, 2, -1)
        children = self._variation.mutate(
            self._variation.crossover(parents.transpose(1, 0, 2), rng), rng)
        return self._space.repair_matrix(children, rng, keep_inactive=self._keep)

    def _fresh(self, make: Any, n: int) -> F64:
        """Rows from ``make(n, rng)`` whose canonical EENN is new, until ``n`` or no more.

        Every round draws a full ``n`` (pymoo draws only the missing number): the accepted
        rows are the first new ones of i.i.d. rounds either way, and fewer rounds are cheaper.
        """
        rows: list[F64] = []
        for _ in range(_MAX_TRIES):
            X = make(n, self._rng)
            for row, key in zip(X, self._space.keys(self._space.repair_matrix(X)), strict=True):
                if key not in self._seen:
                    self._seen.add(key)  # seen from now on: evaluated before the next ask
                    rows.append(row)
                    if len(rows) == n:
                        break
            if len(rows) == n:
                break
        return np.array(rows, dtype=np.float64).reshape(-1, self._space.n_genes)

    def tell(self, X: F64, F: F64, G: F64, new: NDArray[np.bool_] | None = None) -> None:
        if self._pending is None or len(self._pending) != len(X):
            raise RuntimeError("tell() must answer the rows of the last ask()")
        cv = _violation(G)
        if self._pop is None:  # the first generation: ranked, all kept
            self._pop = _survive(np.asarray(X, np.float64), F, cv, len(X), self._rng)
        else:
            p = self._pop
            self._pop = _survive(np.vstack([p.X, X]), np.vstack([p.F, F]),
                                 np.concatenate([p.cv, cv]), self._size, self._rng)
        self._pending = None


def _violation(G: F64) -> F64:
    """pymoo's constraint violation: the sum of the positive parts of ``G`` (0 = feasible)."""
    G = np.asarray(G, dtype=np.float64)
    return np.clip(G, 0.0, None).sum(axis=1) if G.size else np.zeros(len(G))
