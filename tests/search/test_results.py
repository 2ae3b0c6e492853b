"""Results writing: Pareto flags in trials.parquet, choice, hypervolume per strategy, bad files."""

from __future__ import annotations

import pandas as pd
import pytest

from evaluators.eenn import EENNConfig, ExitChoice
from search.results import TrialLog, choose
from search.rundir import config_from_json, config_to_json, hypervolumes


def _frame(points, strategy="s", feasible=None) -> pd.DataFrame:
    n = len(points)
    return pd.DataFrame({
        "trial": range(n), "strategy": strategy, "generation": 0, "config": "{}",
        "error": [p[0] for p in points], "obj_error": [p[0] for p in points],
        "obj_macs": [p[1] for p in points], "cv_memory": [0.0 if f else 0.5 for f in
                                                         (feasible or [True] * n)],
        "feasible": feasible or [True] * n, "pareto": False,
    })


def test_config_json_round_trip() -> None:
    cfg = EENNConfig(exits=(ExitChoice(candidate=1, head=2, threshold=0.123456789),),
                     boundaries=(2, 4), metric="margin")
    assert config_from_json(config_to_json(cfg)) == cfg


def test_pareto_flags_per_strategy_and_feasible_only(tmp_path) -> None:
    log = TrialLog(tmp_path, objectives=["error", "macs"], constraint_names=["memory"])
    log.append(_frame([(0.1, 5), (0.2, 3), (0.2, 6), (0.05, 1)],
                      feasible=[True, True, True, False]))
    log.append(_frame([(0.3, 1)], strategy="random").assign(trial=[4]))
    log.flush()
    df = pd.read_parquet(tmp_path / "trials.parquet")
    assert df["pareto"].tolist() == [True, True, False, False, True]


def test_choose_cheapest_feasible_and_closest_infeasible() -> None:
    df = _frame([(0.1, 5), (0.2, 3), (0.05, 1)], feasible=[True, True, False])
    row, msg = choose(df, ["error", "macs"], "s")
    assert row["trial"] == 1 and msg == ""
    row, msg = choose(df.assign(feasible=False, cv_memory=[0.5, 0.2, 0.9]), ["error", "macs"], "s")
    assert row["trial"] == 1 and "violates memory by 0.2" in msg


def test_hypervolume_matches_geometry() -> None:
    hv, ref = hypervolumes(_frame([(0.0, 1.0), (1.0, 0.0)]), ["error", "macs"])
    # scaled to [0, 1], reference 10% beyond the nadir: 1.1^2 - 1^2
    assert hv["s"] == pytest.approx(0.21)
    assert ref == pytest.approx([1.1, 1.1])


def test_corrupt_trials_file_is_one_line_error(tmp_path) -> None:
    (tmp_path / "trials.parquet").write_bytes(b"not parquet")
    with pytest.raises(ValueError, match="unreadable"):
        TrialLog(tmp_path, objectives=["error"], constraint_names=[])


def test_batch_json_is_the_config_json() -> None:
    """The loop's fast per-batch text equals config_to_json, so readers see one format."""
    import numpy as np

    from evaluators.proxy import ConfigBatch
    from search.rundir import batch_to_json

    rng = np.random.default_rng(0)
    configs = [EENNConfig(exits=tuple(ExitChoice(candidate=int(c), head=int(rng.integers(3)),
                                                 threshold=float(rng.random()))
                                      for c in sorted(rng.choice(6, int(rng.integers(0, 4)),
                                                                 replace=False))),
                          boundaries=(1, int(rng.integers(1, 7))), metric="margin")
               for _ in range(50)]
    assert batch_to_json(ConfigBatch.from_configs(configs)) == [config_to_json(c)
                                                                 for c in configs]


def test_chosen_point_is_on_its_own_front() -> None:
    """Equal primary cost and error: the point with worse energy is dominated and not chosen."""
    df = pd.DataFrame({
        "trial": [0, 1, 2], "strategy": "s", "feasible": True, "cv_memory": 0.0,
        "obj_error": [0.1, 0.1, 0.05], "obj_macs": [2.0, 2.0, 3.0],
        "obj_energy": [5.0, 3.0, 9.0],
    })
    df["error"] = df["obj_error"]
    row, msg = choose(df, ["error", "macs", "energy"], "s")
    assert msg == "" and row["trial"] == 1  # trial 0 ties on macs and error, loses on energy
    # mutually non-dominated and equally cheap: the next objective in order (error) decides
    tie = df.assign(obj_error=[0.1, 0.2, 0.05], obj_energy=[3.0, 1.0, 9.0])
    row, _ = choose(tie, ["error", "macs", "energy"], "s")
    assert row["trial"] == 0
