"""The certified chosen point end to end on synthetic predictions (search.loop, search.results)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml

from evaluators.proxy import ConstraintSpec, ProxyEvaluator
from evaluators.risk import GuaranteeSpec, calibration_split, path_raises
from search.loop import PATH_GENERATION, run_search
from search.results import choose_certified, write_results
from spaces.space import build_space
from tests._synthetic import synthetic_costs, synthetic_platform, synthetic_split

C, H = 5, 2


@pytest.fixture(scope="module")
def parts():
    val = synthetic_split(n=1600, c=C, h=H, seed=0)
    search, cal = calibration_split(val, share=0.5, seed=0)
    platform, costs = synthetic_platform(3), synthetic_costs(c=C, h=H, seed=1)
    space = build_space({"max_exits": 3, "thresholds": {"levels": 8}}, val=search,
                        platform=platform)
    kw = {"costs": costs, "platform": platform, "threshold_grid": space.threshold_grid}
    return space, ProxyEvaluator(split=search, **kw), ProxyEvaluator(split=cal, **kw)


def _run(parts, run_dir, guarantee):
    space, ev, cal = parts
    constraints = {"max_accuracy_drop": 0.03, "guarantee": guarantee}
    settings = {"backend": "pymoo_nsga2", "budget": 200, "population": 20, "baselines": []}
    return run_search(evaluator=ev, space=space, settings=settings, objectives=["error", "macs"],
                      constraints=constraints, seed=0, run_dir=run_dir,
                      calibration_evaluator=cal, progress=False)


def test_chosen_point_is_the_cheapest_certified_one(parts, tmp_path) -> None:
    res = _run(parts, tmp_path, {"method": "fixed_sequence", "delta": 0.1})
    g = res.chosen["guarantee"]
    assert g["certified"] and res.chosen["feasible"] and g["drop_bound"] == 0.03
    df = res.records
    path = df[df["generation"] == PATH_GENERATION]
    assert 1 <= len(path) <= len(path_raises("fixed_sequence"))
    certified = df[df["trial"].isin(g["certified_trials"])]
    assert set(certified["trial"]) <= set(path["trial"]) | set(df["trial"])
    assert res.chosen_trial in g["certified_trials"]
    assert res.chosen["objectives"]["macs"] == certified["obj_macs"].min()
    assert g["n_calibration"] == 800 and g["calibration_losses"] <= g["n_calibration"]
    chosen = yaml.safe_load((tmp_path / "chosen.yaml").read_text())
    assert chosen["guarantee"]["method"] == "fixed_sequence" and "calibration" in chosen


def test_uncertified_pick_is_cheaper_or_equal(parts, tmp_path) -> None:
    certified = _run(parts, tmp_path / "c", {"method": "fixed_sequence"})
    plain = _run(parts, tmp_path / "u", {"method": "uncertified"})
    assert plain.chosen["guarantee"]["method"] == "uncertified"
    assert not plain.chosen["guarantee"]["certified"]
    assert plain.chosen["objectives"]["macs"] <= certified.chosen["objectives"]["macs"]
    assert (plain.records["generation"] != PATH_GENERATION).all()


def test_nothing_certified_says_what_would_certify(parts, tmp_path) -> None:
    _, ev, cal = parts
    records = _run(parts, tmp_path, {"method": "uncertified"}).records
    main = records[records["feasible"]]
    cheapest = int(main.sort_values("obj_macs")["trial"].iloc[0])  # the aggressive end alone
    spec = GuaranteeSpec(method="fixed_sequence", epsilon=0.005, delta=0.1)
    row, message, record = choose_certified(records, ["error", "macs"], "pymoo_nsga2",
                                            candidates=[cheapest], spec=spec, search=ev,
                                            calibration=cal)
    assert row is not None and int(row["trial"]) == cheapest
    assert not record["certified"] and record["n_tested"] == 1
    assert message.startswith("no EENN certified")
    assert "constraints.guarantee.epsilon=" in message and "calibration samples" in message


def test_a_guarantee_without_calibration_part_is_an_error(parts, tmp_path) -> None:
    _, ev, _ = parts
    spec = ConstraintSpec.from_mapping({"guarantee": {"method": "bonferroni"}})
    records = pd.DataFrame({"trial": np.array([], dtype=np.int64), "strategy": []})
    with pytest.raises(ValueError, match="calibration"):
        write_results(tmp_path, records=records, objectives=["error", "macs"],
                      strategy="pymoo_nsga2", constraints=spec, evaluator=ev)


def test_summary_status_names_a_run_with_nothing_certified() -> None:
    from search.run import _status

    cert = {"method": "fixed_sequence", "candidates": 33, "certified": False}
    assert _status({"feasible": False, "guarantee": cert}) == "not_certified"
    assert _status({"feasible": True, "guarantee": {**cert, "certified": True}}) == "feasible"
    assert _status({"feasible": False, "guarantee": {**cert, "candidates": 0}}) == \
        "no_feasible_eenn"
    assert _status({"feasible": False, "guarantee": {"method": "uncertified"}}) == \
        "no_feasible_eenn"
