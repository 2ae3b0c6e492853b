"""Typed settings parsed once: defaults in one place, old configs still parse, one-line errors."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

import conf
from evaluators._training import BackboneError, TrainRecipe
from evaluators.data.settings import DataSettings, loader_options
from evaluators.heads import HeadTraining
from evaluators.proxy import ConstraintSpec
from evaluators.settings import CandidateSettings, FeatureSettings, ModelSettings, defaults_of
from search.config import ExperimentSettings, parse_config, to_config
from search.settings import SearchSettings
from spaces.settings import SpaceSettings

CONF = Path(conf.__file__).parent
OLD = yaml.safe_load((Path(__file__).parent / "old_configs.yaml").read_text())


def _compose(overrides: list[str]) -> dict[str, Any]:
    with initialize_config_module(config_module="conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def _differences(old: Any, new: Any, path: str = "") -> list[str]:
    """Where ``new`` lacks or changes a value of ``old`` (extra keys in ``new`` are fine)."""
    if isinstance(old, dict):
        if not isinstance(new, dict):
            return [f"{path}: {old!r} became {new!r}"]
        return [d for k, v in old.items()
                for d in (_differences(v, new[k], f"{path}.{k}") if k in new
                          else [f"{path}.{k} is gone"])]
    return [] if old == new else [f"{path}: {old!r} became {new!r}"]


@pytest.mark.parametrize("case", sorted(OLD))
def test_composed_defaults_equal_the_old_yaml_values(case: str) -> None:
    """The YAML files name only what a preset chooses; composed with the settings' defaults,
    every value is what the YAML files said before they were trimmed."""
    cfg = _compose([*OLD[case]["overrides"], "cache_dir=results/cache"])
    assert _differences(OLD[case]["config"], to_config(parse_config(cfg))) == []


@pytest.mark.parametrize("case", sorted(OLD))
def test_a_config_the_old_code_wrote_still_parses_to_the_same_values(case: str) -> None:
    old = OLD[case]["config"]
    settings = parse_config(old)
    assert _differences(old, to_config(settings)) == []
    assert parse_config(to_config(settings)) == settings  # what a run folder holds reads back


def test_the_default_groups_are_the_dataclass_defaults() -> None:
    settings = parse_config(_compose([]))
    assert settings.search == SearchSettings() and settings.space == SpaceSettings()
    assert settings.features == FeatureSettings() and settings.constraints == ConstraintSpec()
    assert settings.heads.training == HeadTraining()
    assert settings.model.candidates == CandidateSettings()
    assert (settings.name, settings.seed, settings.device, settings.objectives) == (
        "default", 0, "auto", ("error", "macs", "energy"))
    assert settings.search.population == 100  # pymoo's population: one value, here
    assert parse_config(_compose(["search=optuna_tpe"])).search.batch_size == 10


def _group_defaults(group: str, option: dict[str, Any]) -> dict[str, Any]:
    if group == "search":
        return to_config(SearchSettings())
    if group == "space":
        return to_config(SpaceSettings())
    if group == "heads":
        return defaults_of(HeadTraining)
    if group == "data":
        return {**defaults_of(DataSettings), **defaults_of(loader_options(option["loader"]))}
    return {**defaults_of(ModelSettings), "candidates": defaults_of(CandidateSettings)}


@pytest.mark.parametrize("group", ["model", "data", "heads", "space", "search"])
def test_no_yaml_file_restates_a_default(group: str) -> None:
    """Each default lives in its dataclass only (a model's ``train`` recipe is one choice and
    is written out whole, so it is not compared key by key with TrainRecipe's defaults)."""
    for path in sorted((CONF / group).glob("*.yaml")):
        option = OmegaConf.to_container(OmegaConf.load(path)) or {}
        assert isinstance(option, dict)
        defaults = _group_defaults(group, option)
        same = [k for k, v in option.items()
                if k in defaults and defaults[k] == v and k != "backend"]  # the preset's name
        assert same == [], f"{path.name} restates the default of {same}"
    assert TrainRecipe() == TrainRecipe.from_config({})


def _with(cfg: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(cfg)
    *path, last = dotted.split(".")
    node = out
    for key in path:
        node = node[int(key)] if isinstance(node, list) else node[key]
    node[last] = value
    return out


BAD = [
    ("model.num_classes", 0, "model.num_classes=0 must be an integer >= 1"),
    ("model.input_shape", [1, "28"], "model.input_shape=[1, '28']"),
    ("model.candidates.tail_fraction", 2, "model.candidates.tail_fraction=2 must be in"),
    ("model.train.epochs", "three", "model.train.epochs='three' is not an integer"),
    ("model.train.optimizer", "lbfgs", "model.train.optimizer='lbfgs' is not one of adamw"),
    ("data.splits.train", "many", "data.splits.train='many' is not an integer"),
    ("data.download", "yes", "data.download='yes' is not true or false"),
    ("data.colour", True, "unknown data key 'colour'"),
    ("platform.devices.0.ram_bytes", -1, "device 'nrf52840'.ram_bytes=-1 must be a finite"),
    ("platform.devices.0.clock_hz", 1, "device 'nrf52840' has unknown key 'clock_hz'"),
    ("heads.lr", -1, "heads.lr=-1 must be in"),
    ("heads.amp", "on", "heads.amp='on' is not true or false"),
    ("space.thresholds.levels", 1, "space.thresholds.levels=1 must be in 2..4096"),
    ("space.devices", ["gpu"], "space.devices entry 'gpu' is not a device of"),
    ("space.boundaries", [1, 2, 3], "space.boundaries=[1, 2, 3] must have one boundary per link"),
    ("search.backend", "bayes", "search.backend='bayes' is not one of"),
    ("search.population", 1, "search.population=1 must be >= 2"),
    ("search.mutation_prob", 2, "search.mutation_prob=2 must be in [0.0, 1.0]"),
    ("search.heartbeat_s", 0, "search.heartbeat_s=0"),
    ("search.baselines", ["sdn"], "search.baselines=['sdn']: use a subset"),
    ("features.pool", 0, "features.pool=0 must be >= 1"),
    ("features.budget_gib", "4GB", "features.budget_gib='4GB' is not a finite number"),
    ("constraints.confidence", 1.5, "constraints.confidence=1.5 must be in [0.5, 1)"),
    ("constraints.max_latency", 0.1, "unknown constraints key 'max_latency'"),
    ("seed", -1, "config.seed=-1 must be >= 0"),
    ("cpu_threads", -2, "cpu_threads=-2 is negative"),
    ("device", "gpu", "device='gpu' is not a torch device; use cpu, cuda or auto"),
    ("objectives", ["error", "speed"], "objectives=['error', 'speed']: each must be one of"),
    ("worker", 3, "unknown config key 'worker'"),
]


@pytest.mark.parametrize(("key", "value", "message"), BAD, ids=[b[0] for b in BAD])
def test_a_bad_value_is_one_line_naming_the_key(key: str, value: Any, message: str) -> None:
    cfg = _with(_compose([]), key, value)
    with pytest.raises((ValueError, BackboneError)) as err:
        parse_config(cfg)
    text = str(err.value)
    assert message in text and "\n" not in text


def test_settings_pass_through_and_render_as_the_yaml_layout() -> None:
    settings = parse_config(_compose(["+experiment=ecg_mitbih", "data.root=/data/mitbih"]))
    assert parse_config(settings) is settings
    assert isinstance(settings, ExperimentSettings)
    data = to_config(settings)["data"]
    assert data["window"] == 187 and data["root"] == "/data/mitbih" and "options" not in data
    assert to_config(settings)["heads"]["members"][1] == {"name": "mlp64", "kind": "mlp",
                                                          "width": 64}


def test_cli_bad_value_is_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "EENN_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run(
        [sys.executable, "-m", "search", "features.pool=two", f"hydra.run.dir={tmp_path / 'r'}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert lines == ["error: features.pool='two' is not an integer; set features.pool=<integer>"]
    assert not (tmp_path / "r" / "config.yaml").exists()
