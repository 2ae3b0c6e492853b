"""``python -m search.deploy.evaluate`` (and export on a real run): point selection, the
proxy's exit rule, errors, end to end."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
import yaml
from hydra import compose, initialize_config_module
from rich.console import Console

from evaluators.eenn import EENNConfig, ExitChoice
from evaluators.proxy import ProxyEvaluator
from search.deploy.evaluate import (
    EVALUATED,
    evaluate_run,
    load_run,
    main,
    predicted_exits,
    select_trials,
)
from search.deploy.export import main as export_main
from tests._synthetic import synthetic_costs, synthetic_platform, synthetic_split
from tests.search._datasets import shared_cache


def _trials() -> pd.DataFrame:
    return pd.DataFrame({"trial": [0, 1, 2, 5], "strategy": ["a", "a", "b", "a"],
                         "pareto": [True, False, True, True]})


def test_select_trials() -> None:
    trials = _trials()
    assert select_trials(trials, {}, "all") == [0, 1, 2, 5]
    assert select_trials(trials, {}, "pareto") == [0, 2, 5]
    assert select_trials(trials, {}, "pareto", strategy="a") == [0, 5]
    assert select_trials(trials, {"trial": 2}, "chosen") == [2]
    assert select_trials(trials, {}, "5, 1") == [5, 1]
    for bad, match in (("7", r"trial\(s\) \[7\] not in"), ("x,1", "not all, pareto"),
                       ("chosen", "names no trial")):
        with pytest.raises(ValueError, match=match) as err:
            select_trials(trials, {}, bad)
        assert "\n" not in str(err.value)


def test_predicted_exits_count_like_the_proxy() -> None:
    split = synthetic_split(n=500, c=5, h=2, seed=3)
    costs, platform = synthetic_costs(c=5, h=2, seed=3), synthetic_platform(3)
    ev = ProxyEvaluator(split=split, costs=costs, platform=platform)
    rng = np.random.default_rng(0)
    for metric in ("max_softmax", "entropy", "margin"):
        exits = tuple(ExitChoice(candidate=c, head=int(rng.integers(2)),
                                 threshold=float(rng.choice(split.conf(metric)[c, 0])))
                      for c in sorted(rng.choice(5, 3, replace=False)))
        config = EENNConfig(exits=exits, boundaries=(2, 4), metric=metric)
        taken = predicted_exits(split, config)
        scores = ev.evaluate([config])
        counts = np.bincount(taken, minlength=4)
        cands = [e.candidate for e in exits]
        np.testing.assert_array_equal(counts[:3], scores.exit_count[0, cands])
        assert counts[3] == scores.final_count[0]


def _cli_error(capsys: pytest.CaptureFixture[str], argv: list[str],
               entry: Callable[[list[str]], int] = main) -> str:
    with pytest.raises(SystemExit) as exc:
        entry(argv)
    assert exc.value.code == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ")
    return lines[0]


def test_cli_errors_for_missing_folder_and_results(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert "does not exist" in _cli_error(capsys, [str(tmp_path / "nope")])
    (tmp_path / "config.yaml").write_text("seed: 0\n")
    assert "no results yet" in _cli_error(capsys, [str(tmp_path)])
    assert "does not exist" in _cli_error(capsys, [str(tmp_path / "nope")], export_main)


# --- end to end on the default experiment, shrunk ------------------------------------------------

TINY = ["+debug=tiny", "data.splits.train=600", "data.splits.val=200", "data.splits.test=200",
        "model.train.epochs=5", "model.train.batch_size=32", "heads.epochs=4",
        "search.budget=60", "search.population=12", "constraints.max_accuracy_drop=0.05"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from search.run import run

    cache = shared_cache(tmp_path_factory)
    with initialize_config_module(config_module="conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*TINY, f"cache_dir={cache}"])
    out = tmp_path_factory.mktemp("tiny-run") / "run"
    with open(os.devnull, "w") as quiet:
        run(cfg, run_dir=out, console=Console(file=quiet), progress=False)
    return out


def _mixed_trials(trials: pd.DataFrame, k: int = 8) -> list[int]:
    """Trials whose val samples leave at two or more different exits."""
    mixed = trials[[sum(f > 0 for f in json.loads(x)) >= 2 for x in trials["exit_fractions"]]]
    return [int(t) for t in mixed.drop_duplicates("config")["trial"][:k]]


@pytest.mark.slow
def test_points_run_for_real_as_the_proxy_predicted(tiny_run: Path) -> None:
    run = load_run(tiny_run)
    pareto = evaluate_run(tiny_run, points="pareto", run=run)
    main_pareto = run.trials[run.trials["pareto"] & (run.trials["strategy"] == "pymoo_nsga2")]
    assert len(pareto) == len(main_pareto) >= 1
    mixed = _mixed_trials(run.trials)
    assert len(mixed) >= 3
    df = evaluate_run(tiny_run, points=",".join(map(str, mixed)), run=run)
    df = pd.concat([pareto, df], ignore_index=True)
    assert (tiny_run / EVALUATED).is_file()
    written = pd.read_csv(tiny_run / EVALUATED)
    # a second call adds its points; the first call's stay (one row per trial)
    assert set(written["trial"]) == set(df["trial"]) and written["trial"].is_unique
    for col in ("trial", "predicted_accuracy", "measured_accuracy_val", "measured_accuracy_test",
                "predicted_macs", "measured_macs", "measured_macs_test", "predicted_energy_j",
                "measured_energy_j", "predicted_latency_s", "measured_latency_s",
                "exit_fractions_val", "exit_fractions_test", "exit_match", "generalisation_gap"):
        assert col in written.columns, col
    # every val disagreement with the proxy is a float32 tie at a threshold; no other one
    assert (df["exit_mismatches_val"] == df["exit_mismatch_ties_val"]).all()
    exact = df[df["exit_match"]]
    assert len(exact) >= 3
    np.testing.assert_allclose(exact["measured_accuracy_val"], exact["predicted_accuracy"], atol=0)
    np.testing.assert_allclose(exact["measured_macs"], exact["predicted_macs"], rtol=1e-12)
    np.testing.assert_allclose(exact["measured_energy_j"], exact["predicted_energy_j"], rtol=1e-12)
    np.testing.assert_allclose(exact["measured_latency_s"], exact["predicted_latency_s"],
                               rtol=1e-12)
    for fr in exact["exit_fractions_val"]:
        assert sum(json.loads(fr)) == pytest.approx(1.0)
    # test figures equal the prediction table's on test (up to ties)
    tie_free = df[df["exit_mismatches_test"] == 0]
    np.testing.assert_allclose(tie_free["measured_accuracy_test"],
                               tie_free["predicted_accuracy_test"], atol=0)


def _mixed_precision_point(run_dir: Path) -> str:
    """``chosen`` if its stages sit on the 8-bit device 0 and on a float device, else the
    first trial that does (boundary ``b`` starts device 1 at segment ``b``: 1 <= b <= C)."""
    n_cand = len(json.loads((run_dir / "summary.json").read_text())["candidates"])
    trials = pd.read_parquet(run_dir / "trials.parquet")
    mixed = [int(t) for t, c in zip(trials["trial"], trials["config"], strict=True)
             if 1 <= json.loads(c)["boundaries"][0] <= n_cand]
    assert mixed, "no trial runs on both the 8-bit MCU and a float device"
    chosen = (yaml.safe_load((run_dir / "chosen.yaml").read_text()) or {}).get("trial")
    return "chosen" if chosen in mixed else str(mixed[0])


def _qdq_ops_and_int8_weights(path: Path) -> tuple[set[str], int]:
    """The graph's QuantizeLinear/DequantizeLinear op types and its int8 initialisers."""
    graph = onnx.load(str(path)).graph
    ops = {n.op_type for n in graph.node} & {"QuantizeLinear", "DequantizeLinear"}
    return ops, sum(t.data_type == onnx.TensorProto.INT8 for t in graph.initializer)


@pytest.mark.slow
def test_a_point_exports_replays_and_quantises_only_its_8_bit_stages(
        tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    point = _mixed_precision_point(tiny_run)
    assert export_main([str(tiny_run), "--point", point, "--out", str(tmp_path / "x"),
                        "--int8"]) == 0
    manifest = json.loads((tmp_path / "x" / "manifest.json").read_text())
    check = manifest["verification_test"]
    assert check["samples"] == 200 and check["prediction_mismatches"] == 0
    assert all(st["max_abs_diff_vs_torch"] <= 1e-4 for st in manifest["stages"])
    out = capsys.readouterr().out
    assert "manifest:" in out and "same prediction" in out
    int8 = json.loads((tmp_path / "x" / "manifest_int8.json").read_text())
    assert int8["verification_test"]["samples"] == 200
    bits = {d["index"]: d["activation_bits"] for d in int8["devices"]}
    on_8_bit = [bits[st["device"]] <= 8 for st in int8["stages"]]
    assert any(on_8_bit) and not all(on_8_bit)  # both kinds, so both branches are checked
    for st, fp, quantised in zip(int8["stages"], manifest["stages"], on_8_bit, strict=True):
        ops, int8_weights = _qdq_ops_and_int8_weights(tmp_path / "x" / st["file"])
        if quantised:
            assert st["precision"] == "int8" and st["file"] != fp["file"]
            assert ops == {"QuantizeLinear", "DequantizeLinear"} and int8_weights > 0
        else:
            assert st["precision"] == "float32" and st["file"] == fp["file"]
            assert not ops and int8_weights == 0
    assert "not in trials" in _cli_error(capsys, [str(tiny_run), "--point", "999999"], export_main)


@pytest.mark.slow
def test_a_changed_backbone_or_bad_point_is_a_one_line_error(
        tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "not in trials.parquet" in _cli_error(capsys, [str(tiny_run), "--points", "0,999999"])
    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy)
    summary = json.loads((copy / "summary.json").read_text())
    summary["weights_hash"] = "0" * 64
    (copy / "summary.json").write_text(json.dumps(summary))
    assert "no longer matches" in _cli_error(capsys, [str(copy), "--points", "chosen"])
