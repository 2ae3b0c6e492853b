"""pymoo NSGA-II on the mixed-variable space, driven by ask/tell.

pymoo's ``MixedVariableGA`` operators (uniform crossover and random mutation
for Binary/Choice genes, SBX + polynomial mutation with rounding for Integer
and Real genes) with NSGA-II's rank-and-crowding survival and binary
tournament; the first population comes from the space's sampler (exit
counts uniform in 0..max_exits).

Duplicates are recognised by the canonical genome (:meth:`EarlyExitSpace.repair`
then :meth:`EarlyExitSpace.key`). By default (``search.inactive_genes: keep``)
the genomes that evolve keep the head/threshold genes of disabled exits, so
re-enabling an exit restores what it had; ``canonical`` resets them. On the
enumerable benchmark space (benchmarks/bench_search_quality.py) keeping them
raised the hypervolume ratio from 0.953 to 0.971 (4 seeds, default pymoo
operators), and a stronger, sparser mutation (``mutation_eta: 5``,
``mutation_prob: 0.1`` per gene) to 0.985 (8 seeds). The duplicate
elimination rejects offspring equal to the population or to anything
evaluated before, so no evaluation is spent twice.

Resume: the stored trials of this strategy are evaluated individuals; the
best ``population`` of them (rank and crowding) become the first population,
told with their stored values and not evaluated again, and every stored
genome is marked as seen. The random state is re-seeded from (seed, number
of stored trials), so a resumed run is reproducible but not identical to an
uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pymoo.algorithms.moo.nsga2 import binary_tournament
from pymoo.core.duplicate import DuplicateElimination
from pymoo.core.evaluator import Evaluator
from pymoo.core.mixed import MixedVariableGA, MixedVariableMating
from pymoo.core.population import Population
from pymoo.core.problem import Problem
from pymoo.core.repair import Repair
from pymoo.core.sampling import Sampling
from pymoo.core.variable import Binary, Choice, Integer, Real, Variable
from pymoo.operators.crossover.sbx import SBX
from pymoo.operators.crossover.ux import UX
from pymoo.operators.mutation.bitflip import BFM
from pymoo.operators.mutation.pm import PM
from pymoo.operators.mutation.rm import ChoiceRandomMutation
from pymoo.operators.repair.rounding import RoundingRepair
from pymoo.operators.selection.tournament import TournamentSelection
from pymoo.operators.survival.rank_and_crowding import RankAndCrowding
from pymoo.problems.static import StaticProblem
from pymoo.util.display.multi import MultiObjectiveOutput

from search.backends._base import History
from spaces.space import EarlyExitSpace, Genome

__all__ = ["PymooNSGA2"]


def _variables(space: EarlyExitSpace) -> dict[str, Variable]:
    """The space's genes as pymoo variables."""
    out: dict[str, Variable] = {}
    for v in space.variables:
        if v.kind == "bool":
            out[v.name] = Binary()
        elif v.kind == "int":
            out[v.name] = Integer(bounds=(int(v.low), int(v.high)))
        elif v.kind == "float":
            out[v.name] = Real(bounds=(v.low, v.high))
        else:
            out[v.name] = Choice(options=list(v.choices))
    return out


class _SpaceRepair(Repair):  # type: ignore[misc]
    """:meth:`EarlyExitSpace.repair` on every genome (``keep_inactive``: see module doc)."""

    def __init__(self, space: EarlyExitSpace, keep_inactive: bool) -> None:
        super().__init__()
        self.space, self.keep_inactive = space, keep_inactive

    def _do(self, problem: Problem, X: Any, random_state: Any = None, **kwargs: Any) -> Any:
        out = np.empty(len(X), dtype=object)
        out[:] = [self.space.repair(x, random_state, keep_inactive=self.keep_inactive) for x in X]
        return out


class _SpaceSampling(Sampling):  # type: ignore[misc]
    """Initial population from :meth:`EarlyExitSpace.sample` (exit count uniform, not ~C/2)."""

    def __init__(self, space: EarlyExitSpace) -> None:
        super().__init__()
        self.space = space

    def _do(self, problem: Problem, n_samples: int, random_state: Any = None,
            **kwargs: Any) -> Any:
        out = np.empty(n_samples, dtype=object)
        out[:] = self.space.sample(n_samples, random_state)
        return out


class _SeenElimination(DuplicateElimination):  # type: ignore[misc]
    """Duplicates by canonical genome, within a batch, against ``other`` and all ever seen."""

    def __init__(self, space: EarlyExitSpace, seen: set[tuple[Any, ...]]) -> None:
        super().__init__()
        self.space, self.seen = space, seen

    def _do(self, pop: Population, other: Population | None,
            is_duplicate: NDArray[np.bool_]) -> NDArray[np.bool_]:
        keys = [self.space.key(self.space.repair(ind.X)) for ind in pop]
        if other is None:
            local: set[tuple[Any, ...]] = set()
            for i, k in enumerate(keys):
                is_duplicate[i] = k in local or k in self.seen
                local.add(k)
        else:
            known = {self.space.key(self.space.repair(ind.X)) for ind in other}
            for i, k in enumerate(keys):
                is_duplicate[i] |= k in known
        return is_duplicate


def _operators(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Crossover and mutation per variable type, with the tuned defaults (see module doc)."""
    eta_c = float(cfg.get("crossover_eta", 15))
    eta_m = float(cfg.get("mutation_eta", 5))
    p_m = cfg.get("mutation_prob", 0.1)
    p_var = {} if p_m is None else {"prob_var": float(p_m)}
    return {
        "crossover": {Binary: UX(), Real: SBX(eta=eta_c), Choice: UX(),
                      Integer: SBX(eta=eta_c, vtype=float, repair=RoundingRepair())},
        "mutation": {Binary: BFM(**p_var), Real: PM(eta=eta_m, **p_var),
                     Integer: PM(eta=eta_m, vtype=float, repair=RoundingRepair(), **p_var),
                     Choice: ChoiceRandomMutation()},
    }


class PymooNSGA2:
    """NSGA-II with mixed-variable operators; one generation per ``ask``/``tell`` pair."""

    name = "pymoo_nsga2"

    def __init__(self, *, space: EarlyExitSpace, cfg: Mapping[str, Any], seed: int, n_obj: int,
                 n_constr: int, history: History) -> None:
        population = int(cfg.get("population", 100))
        inactive = str(cfg.get("inactive_genes", "keep"))
        if inactive not in ("keep", "canonical"):
            raise ValueError(f"search.inactive_genes={inactive!r} must be 'keep' or 'canonical'")
        self._space = space
        self._seen: set[tuple[Any, ...]] = set()
        self._problem = Problem(vars=_variables(space), n_obj=n_obj, n_ieq_constr=n_constr)
        elim = _SeenElimination(space, self._seen)
        repair = _SpaceRepair(space, keep_inactive=inactive == "keep")
        seeds = self._seed_population(history, population, seed) if len(history) else None
        self._algo = MixedVariableGA(
            pop_size=population,
            sampling=seeds if seeds is not None else _SpaceSampling(space),
            mating=MixedVariableMating(selection=TournamentSelection(func_comp=binary_tournament),
                                       repair=repair, eliminate_duplicates=elim,
                                       **_operators(cfg)),
            eliminate_duplicates=elim, repair=repair, survival=RankAndCrowding(),
            output=MultiObjectiveOutput(), advance_after_initial_infill=True,
        )
        self._algo.tournament_type = "comp_by_dom_and_crowding"
        self._algo.setup(self._problem, seed=int(np.random.SeedSequence([seed, len(history)])
                                                 .generate_state(1)[0]), verbose=False)
        self._pending: Population | None = None
        if seeds is not None:
            self._algo.tell(infills=self._algo.ask())
            self._seen.update(space.key(g) for g in history.genomes)

    def _seed_population(self, history: History, population: int, seed: int) -> Population:
        """The best ``population`` stored trials, already evaluated (no repair, no re-run)."""
        X = np.empty(len(history), dtype=object)
        X[:] = [dict(g) for g in history.genomes]
        pop = Population.new(X=X)
        self._evaluate(pop, history.F, history.G)
        if len(pop) > population:
            pop = RankAndCrowding().do(self._problem, pop, n_survive=population,
                                       random_state=np.random.default_rng(seed))
        return pop

    def _evaluate(self, pop: Population, F: NDArray[np.float64], G: NDArray[np.float64]) -> None:
        values: dict[str, Any] = {"F": F}
        if self._problem.n_ieq_constr:
            values["G"] = G
        Evaluator().eval(StaticProblem(self._problem, **values), pop)

    @property
    def generation(self) -> int:
        return int(self._algo.n_gen or 1)

    def ask(self, n: int) -> list[Genome]:
        pop = self._algo.ask()
        if pop is None or len(pop) == 0:
            return []
        self._pending = pop[: max(0, n)]
        return [dict(ind.X) for ind in self._pending]

    def tell(self, genomes: Sequence[Genome], F: NDArray[np.float64],
             G: NDArray[np.float64]) -> None:
        pop = self._pending
        if pop is None or len(pop) != len(genomes):
            raise RuntimeError("tell() must answer the genomes of the last ask()")
        self._evaluate(pop, F, G)
        self._seen.update(self._space.key(self._space.repair(g)) for g in genomes)
        self._algo.tell(infills=pop)
        self._pending = None
