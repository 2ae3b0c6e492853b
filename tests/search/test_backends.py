"""One shared suite that every backend passes (ask/tell contract, seeding, constraints)."""

from __future__ import annotations

import numpy as np
import pytest

from evaluators.proxy import ConstraintSpec, ProxyEvaluator
from search.backends import BACKENDS, History, make_backend
from spaces.space import build_space
from tests._synthetic import synthetic_costs, synthetic_platform, synthetic_split

C, H = 5, 2
SPEC = ConstraintSpec(max_accuracy_drop=0.03, memory=True)


@pytest.fixture(scope="module")
def problem():
    val = synthetic_split(n=600, c=C, h=H, seed=0)
    platform = synthetic_platform(2)
    space = build_space({"max_exits": 3, "thresholds": {"levels": 8}}, val=val, platform=platform)
    ev = ProxyEvaluator(split=val, costs=synthetic_costs(c=C, h=H, seed=1), platform=platform,
                        threshold_grid=space.threshold_grid)
    return space, ev


def _backend(name, space, seed, tmp_path, history=None):
    cfg = {"population": 16, "batch": 8, "storage": ":memory:", "n_startup_trials": 8}
    empty = History(genomes=[], F=np.zeros((0, 2)), G=np.zeros((0, 2)))
    return make_backend(name, space=space, cfg=cfg, seed=seed, n_obj=2, n_constr=2,
                        run_dir=tmp_path, history=history or empty)


def _run(backend, space, ev, generations):
    asked, feasible = [], 0
    for _ in range(generations):
        genomes = backend.ask(16)
        assert 0 < len(genomes) <= 16
        configs = [space.decode(g) for g in genomes]
        s = ev.evaluate(configs)
        F, G = s.objectives(["error", "energy"]), s.constraints(SPEC)
        backend.tell(genomes, F, G)
        asked += [space.key(space.repair(g)) for g in genomes]
        feasible += int((G <= 0).all(axis=1).sum())
    return asked, feasible


@pytest.mark.parametrize("name", BACKENDS)
def test_contract_and_seeding(name, problem, tmp_path) -> None:
    space, ev = problem
    a, feasible = _run(_backend(name, space, 3, tmp_path), space, ev, 4)
    b, _ = _run(_backend(name, space, 3, tmp_path), space, ev, 4)
    c, _ = _run(_backend(name, space, 4, tmp_path), space, ev, 4)
    assert a == b  # same seed, same proposals
    assert a != c
    assert feasible > 0
    if name == "pymoo_nsga2":
        assert len(set(a)) == len(a)  # never spends an evaluation twice


def test_ask_respects_n(problem, tmp_path) -> None:
    space, _ = problem
    for name in BACKENDS:
        assert len(_backend(name, space, 0, tmp_path).ask(3)) == 3


def test_pymoo_improves_over_its_first_generation(problem, tmp_path) -> None:
    space, ev = problem
    backend = _backend("pymoo_nsga2", space, 0, tmp_path)
    energies = []
    for _ in range(8):
        genomes = backend.ask(16)
        s = ev.evaluate([space.decode(g) for g in genomes])
        F, G = s.objectives(["error", "energy"]), s.constraints(SPEC)
        backend.tell(genomes, F, G)
        ok = (G <= 0).all(axis=1)
        energies.append(F[ok, 1].min() if ok.any() else np.inf)
    assert min(energies[4:]) < energies[0]


def test_pymoo_resumes_from_history(problem, tmp_path) -> None:
    space, ev = problem
    genomes = space.sample(40, np.random.default_rng(0))
    s = ev.evaluate([space.decode(g) for g in genomes])
    hist = History(genomes=genomes, F=s.objectives(["error", "energy"]), G=s.constraints(SPEC))
    backend = _backend("pymoo_nsga2", space, 0, tmp_path, history=hist)
    proposed = {space.key(space.repair(g)) for g in backend.ask(16)}
    assert proposed and not proposed & {space.key(g) for g in genomes}


def test_unknown_backend_is_one_line_error(problem, tmp_path) -> None:
    space, _ = problem
    with pytest.raises(ValueError, match=r"search\.backend='cma'"):
        _backend("cma", space, 0, tmp_path)
