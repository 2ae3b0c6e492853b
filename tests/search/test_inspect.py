"""search.inspect: candidate table from composed configs, CSV in the run dir, one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

from evaluators.macs import count_macs
from evaluators.models.mnist_cnn import MnistCNN
from search.inspect import check_model_choice, inspect

MODELS = sorted(
    p.name.removesuffix(".yaml")
    for p in (resources.files("conf") / "model").iterdir()
    if p.name.endswith(".yaml")
)


def _cfg(*overrides: str) -> DictConfig:
    with initialize_config_module(config_module="conf", version_base=None):
        return compose(config_name="config", overrides=list(overrides))


def test_mnist_cnn_table() -> None:
    frame = inspect(_cfg("model=mnist_cnn"))
    assert list(frame["name"]) == [f"features_{i}_2" for i in range(6)]
    assert frame["shape"].iloc[0] == "8x28x28" and frame["activation_kib_int8"].iloc[0] == 6.125
    assert frame.attrs["total_macs"] == count_macs(
        MnistCNN(num_classes=10), torch.zeros(1, 1, 28, 28)
    )
    assert frame["mac_share"].is_monotonic_increasing and frame["mac_share"].iloc[-1] < 1.0
    assert frame["segment_macs"].sum() + frame.attrs["tail_macs"] == frame.attrs["total_macs"]


@pytest.mark.parametrize("name", MODELS)
def test_every_model_config_has_candidates(name: str) -> None:
    frame = inspect(_cfg(f"model={name}"))
    assert len(frame) >= 3, name
    assert frame.attrs["output_size"] == _cfg(f"model={name}").model.num_classes


def test_torchvision_by_name_and_candidate_options() -> None:
    cfg = _cfg(
        "model=torchvision", "model.tv_name=mobilenet_v2", "model.candidates.max_candidates=4"
    )
    assert (
        cfg.model.name == "torchvision_mobilenet_v2"
        and cfg.model.arch == "torchvision:mobilenet_v2"
    )
    frame = inspect(cfg)
    assert len(frame) == 4 and frame.attrs["total_macs"] == 300_774_272  # torchvision: 0.301 GMACs


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["~model.input_shape"], r"model.input_shape=None for model 'mnist_cnn'"),
        (["model.input_shape=[3,32,32]"], r"example input of shape \(1, 3, 32, 32\) does not fit"),
        (["model.arch=nope"], "unknown model arch='nope'"),
        (["+model.candidates.every=1"], "unknown model.candidates key 'every'"),
        (["model.candidates.min_mac_fraction=2"], "min_mac_fraction=2"),
    ],
)
def test_bad_model_config_one_line(overrides: list[str], match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        inspect(_cfg("model=mnist_cnn", *overrides))
    assert "\n" not in str(info.value)


def test_unknown_model_name_one_line() -> None:
    with pytest.raises(SystemExit) as info:
        check_model_choice(["model=resnet9000", "seed=1"])
    assert str(info.value).startswith("error: unknown model 'resnet9000'; use one of ")
    assert "mnist_cnn" in str(info.value) and "\n" not in str(info.value)
    check_model_choice(["model=mnist_cnn"])  # known: returns


@pytest.mark.slow
def test_command_line_writes_csv(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "search.inspect",
            "model=cifar_resnet18",
            f"hydra.run.dir={tmp_path}",
        ],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert "exit candidates of cifar_resnet18" in run.stdout
    written = pd.read_csv(tmp_path / "candidates.csv")
    expected = inspect(_cfg("model=cifar_resnet18"))
    assert list(written["name"]) == list(expected["name"])
    assert list(written["cumulative_macs"]) == list(expected["cumulative_macs"])
    bad = subprocess.run(
        [sys.executable, "-m", "search.inspect", "model=nope", f"hydra.run.dir={tmp_path}"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode != 0 and bad.stderr.strip().count("\n") == 0
    assert "unknown model 'nope'" in bad.stderr
    # without hydra.run.dir the table goes to results/inspect, never among search runs
    env = {**os.environ, "PYTHONPATH": str(root)}
    plain = subprocess.run([sys.executable, "-m", "search.inspect", "model=mnist_cnn"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert plain.returncode == 0, plain.stderr
    assert list((tmp_path / "results" / "inspect").glob("*/candidates.csv"))
    assert not (tmp_path / "results" / "runs").exists()
