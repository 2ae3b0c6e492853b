"""Profiles measured on a tiny model: every entry present, the file checked against the model."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from evaluators.device_profile import ProfileError, load_profile, write_profile
from evaluators.platform import platform_from_config
from search.profile import ProfileSettings, ProfileSubject, measure_profile, price_platform
from search.profile._subject import make_subject
from search.profile.kit import write_kit
from tests.search.deploy._eenn_fixture import FAMILY, setup
from tests.search.deploy.test_evaluate import tiny_run as tiny_run_fixture

tiny_run = tiny_run_fixture  # the tiny default run, shared with the evaluate tests


@functools.cache
def subject() -> ProfileSubject:
    s = setup()
    return make_subject(model=s.model, candidates=s.costs.candidate_names,
                        family_names=FAMILY.names, family_members=FAMILY.as_config()["members"],
                        pool=3, head_modules=s.heads.heads, weights_hash="tiny-hash",
                        x=s.data["val"].tensors[0][:16])


def _complete(profile_tables: tuple, n_c: int, n_h: int) -> None:
    for t in profile_tables:
        assert t.segment_s.shape == (n_c + 1,) and t.head_s.shape == (n_c, n_h)
        assert (t.segment_s > 0).all() and (t.head_s >= 0).all() and t.call_s > 0
        assert t.threads == 1 and t.repeats == 3


def test_profile_has_every_entry_for_torch_and_onnxruntime(tmp_path: Path) -> None:
    sub = subject()
    settings = ProfileSettings(entries=("torch/fp32", "onnxruntime/fp32", "onnxruntime/int8"),
                               batches=(1, 4), repeats=3, threads=1)
    profile = measure_profile(sub, settings)
    keys = {t.key for t in profile.tables}
    assert keys == {(r, p, b) for r, p in [("torch", "fp32"), ("onnxruntime", "fp32"),
                                           ("onnxruntime", "int8")] for b in (1, 4)}
    _complete(profile.tables, len(sub.candidates), len(sub.heads))
    loaded = load_profile(write_profile(profile, tmp_path / "p.json"))
    loaded.check(weights_hash="tiny-hash", candidates=sub.candidates, heads=sub.heads,
                 head_family=sub.head_family)
    # a batch of 4 costs more per call than a batch of 1, on the whole backbone
    one, four = loaded.table("torch", "fp32", 1), loaded.table("torch", "fp32", 4)
    assert four.segment_s.sum() > one.segment_s.sum() * 0.9


def _platform(file: str) -> object:
    return platform_from_config({"name": "p", "links": [], "devices": [{
        "name": "cpu", "profile": {"file": file, "batch": 1}, "active_power_w": 1.0,
        "ram_bytes": 10**9, "flash_bytes": 10**9}]})


def test_price_platform_measures_host_once_and_refuses_a_foreign_file(tmp_path: Path) -> None:
    sub = subject()
    settings = ProfileSettings(repeats=3)
    host = price_platform(_platform("host"), sub, cache_dir=tmp_path, settings=settings)
    table = host.devices[0].measured
    assert table is not None and table.key == ("torch", "fp32", 1)
    cached = list((tmp_path / "device_profiles").glob("*.json"))
    assert len(cached) == 1
    again = price_platform(_platform("host"), sub, cache_dir=tmp_path, settings=settings)
    assert again.devices[0].measured.segment_s.tolist() == table.segment_s.tolist()  # cached
    raw = json.loads(cached[0].read_text())
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps({**raw, "weights_hash": "another-model"}))
    with pytest.raises(ProfileError, match=r"foreign.json: weights_hash anothe.*another model"):
        price_platform(_platform(str(foreign)), sub, cache_dir=tmp_path)


def test_unknown_profile_entry_is_named() -> None:
    with pytest.raises(ProfileError, match="'tflite/fp32'"):
        ProfileSettings(entries=("tflite/fp32",))


@pytest.fixture(scope="session")
def bare_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtual environment with only numpy and onnxruntime (built once per session)."""
    venv = tmp_path_factory.getbasetemp() / "venv-numpy-onnxruntime"
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "numpy", "onnxruntime"],
                       check=True, timeout=600)
    return python


@pytest.mark.slow
def test_kit_profiles_in_a_venv_with_only_numpy_and_onnxruntime(tmp_path: Path,
                                                                 bare_venv: Path) -> None:
    sub = subject()
    kit = write_kit(sub, tmp_path / "kit", int8=True)
    out = tmp_path / "profile.json"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.run([str(bare_venv), str(kit / "profile_kit.py"), str(kit), "--out",
                           str(out), "--batches", "1", "4", "--precision", "fp32", "int8",
                           "--repeats", "3"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    check = subprocess.run([str(bare_venv), "-c", "import torch"], env=env, capture_output=True)
    assert check.returncode != 0  # the kit really ran without torch (or this package)
    profile = load_profile(out)
    profile.check(weights_hash="tiny-hash", candidates=sub.candidates, heads=sub.heads,
                  head_family=sub.head_family)
    assert {t.key for t in profile.tables} == {("onnxruntime", p, b) for p in ("fp32", "int8")
                                               for b in (1, 4)}
    assert np.all([t.segment_s.shape == (len(sub.candidates) + 1,) for t in profile.tables])


@pytest.mark.slow
def test_platform_host_runs_end_to_end(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A search on platform=host: latency priced from this machine's cached profile."""
    from hydra import compose, initialize_config_module
    from rich.console import Console

    from evaluators.device_profile import path_seconds
    from search.run import run
    from tests.search._datasets import shared_cache
    from tests.search.deploy.test_evaluate import TINY

    cache = shared_cache(tmp_path_factory)
    with initialize_config_module(config_module="conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            *TINY, f"cache_dir={cache}", "platform=host", "objectives=[error,latency]"])
    out = tmp_path_factory.mktemp("host-run") / "run"
    with open(os.devnull, "w") as quiet:
        result = run(cfg, run_dir=out, console=Console(file=quiet), progress=False)
    summary = json.loads((out / "summary.json").read_text())
    device = summary["platform"]["devices"][0]
    assert device["priced_by"].startswith("measured profile")
    assert "no power meter" in device["energy"]
    # the profile platform=host measured (other tests may cache other profiles beside it)
    (profile,) = [p for p in map(load_profile, (cache / "device_profiles").glob("*.json"))
                  if [t.key for t in p.tables] == [("torch", "fp32", 1)]]
    table = profile.table("torch", "fp32", 1)
    assert summary["backbone"]["latency_s_first"] == pytest.approx(
        path_seconds(table, exits=[])[0])
    assert summary["backbone"]["energy_j_first"] == pytest.approx(
        15.0 * summary["backbone"]["latency_s_first"])
    assert result.summary["status"] in ("feasible", "no_feasible_eenn")


def test_onnxruntime_not_installed_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    with pytest.raises(ProfileError, match="onnxruntime is not installed; pip install"):
        measure_profile(subject(), ProfileSettings(entries=("onnxruntime/fp32",), repeats=1))


def test_in_context_times_add_up_to_the_running_eenn() -> None:
    """The profile's backbone path against the backbone-only EENN, both on this thread's CPU
    clock (generous bound: the machine is shared)."""
    from evaluators.device_profile import path_seconds
    from evaluators.eenn import EENNConfig
    from search.deploy._latency import measure_latency
    from search.deploy.runtime import build_eenn

    sub, s = subject(), setup()
    profile = measure_profile(sub, ProfileSettings(batches=(1,), repeats=15, clock="cpu"))
    eenn = build_eenn(sub.model, EENNConfig(exits=()), candidates=s.profile.candidates,
                      heads=sub.head_modules, n_devices=1)
    measured = measure_latency(eenn, sub.x, batch=1, repeats=7, threads=1, clock="cpu")
    predicted = path_seconds(profile.tables[0], exits=[])[0]
    assert 0.5 < predicted / measured < 2.0


@pytest.mark.slow
@pytest.mark.parametrize("runtime", ["torch", "onnxruntime"])
def test_evaluate_writes_measured_against_predicted_latency(tiny_run: Path, runtime: str) -> None:
    from search.deploy.evaluate import LatencyOptions, evaluate_run, load_run
    from search.report._records import get_predicted_measured
    from search.rundir import load_run as load_folder

    run = load_run(tiny_run)
    df = evaluate_run(tiny_run, points="chosen", run=run,
                      latency=LatencyOptions(samples=20, repeats=2, batch=32, runtime=runtime))
    row = df.iloc[0]
    for col in ("measured_latency_b1_s", "predicted_latency_b1_s", "measured_latency_batch_s",
                "predicted_latency_batch_s"):
        assert row[col] > 0, col
    assert row["latency_batch"] == 32 and row["latency_threads"] == 1
    assert row["latency_runtime"] == runtime
    # measured and predicted come from the same runtime (generous: a shared machine, tiny model)
    assert 0.2 < row["predicted_latency_b1_s"] / row["measured_latency_b1_s"] < 5.0
    pairs = {p.quantity for p in get_predicted_measured(load_folder(tiny_run))}
    assert {"latency_b1_s", "latency_batch_s"} <= pairs  # the report plots them

