"""The paper's experiments (conf/experiment/*.yaml): they compose, every config group option
instantiates, and each experiment runs end to end in tiny mode (``+debug=tiny``) on small files
written in the real on-disk formats, offline.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

import conf
from evaluators.data import DataError, DataSettings, DataSplits, load_data
from evaluators.heads import head_family_from_config
from evaluators.models import build_architecture
from evaluators.platform import platform_from_config
from evaluators.proxy import OBJECTIVES
from search.backends import History, make_backend
from search.settings import SearchSettings
from spaces.space import build_space
from tests._synthetic import synthetic_platform, synthetic_split
from tests.search._datasets import RUN_FILES, search_cli, shared_cache, write_dataset

CONF = Path(conf.__file__).parent
README = CONF.parent / "README.md"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
# one slow end-to-end run each; resnet18/50 differ from resnet152 only in the model option,
# which test_every_model_option_builds instantiates and runs (keeps the suite within budget)
END_TO_END = ["default", "kws_speech_commands", "ecg_mitbih", "resnet152_cifar10"]
TINY_SPLITS = {"train": 40, "val": 20, "test": 20}


def _load(cfg: dict[str, Any], *, seed: int) -> DataSplits:
    """``load_data`` on a ``data`` mapping, parsed as the entry points parse it."""
    return load_data(DataSettings.from_mapping(cfg), seed=seed)


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def _compose(overrides: list[str]) -> dict[str, Any]:
    with initialize_config_module(config_module="conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    for name in ("cifar10", "speech_commands", "mitbih"):
        write_dataset(name, root / name)
    return root


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_cache(tmp_path_factory)


def test_the_readme_lists_every_experiment() -> None:
    """The README's experiment table and conf/experiment/ name the same experiments."""
    text = README.read_text()
    table = text[text.index("| experiment |"):].split("\n\n", 1)[0]
    listed = {name for row in table.splitlines()[2:]
              for name in re.findall(r"`([a-z0-9_]+)`", row.split("|")[1])}
    assert listed == set(EXPERIMENTS)
    assert set(END_TO_END) <= set(EXPERIMENTS)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes(name: str) -> None:
    cfg = _compose([f"+experiment={name}"])
    assert cfg["name"] == name
    assert cfg["model"]["num_classes"] == cfg["data"]["num_classes"]
    assert "error" in cfg["objectives"] and set(cfg["objectives"]) <= set(OBJECTIVES)
    if name.startswith("resnet"):
        assert cfg["objectives"] == ["error", "macs", "energy"]  # the paper's objectives
    if cfg["data"]["name"] == "speech_commands":  # bare yes/no/on/off are YAML booleans
        assert all(isinstance(w, str) for w in cfg["data"]["words"])
    tiny = _compose([f"+experiment={name}", "+debug=tiny"])
    for group in ("model", "data", "platform"):  # tiny shrinks, never swaps
        assert tiny[group]["name"] == cfg[group]["name"]
    assert tiny["name"] == name and tiny["objectives"] == cfg["objectives"]
    full_sizes = cfg["data"].get("splits") or {}
    assert all(tiny["data"]["splits"][k] < full_sizes[k] for k in full_sizes if full_sizes[k])
    assert tiny["model"]["train"]["epochs"] <= cfg["model"]["train"]["epochs"]
    assert tiny["search"]["budget"] < cfg["search"]["budget"] and tiny["device"] == "cpu"


@pytest.mark.parametrize("option", [o for o in _options("model")
                                    if o != "custom"])  # a template: test_config parses it
def test_every_model_option_builds(option: str) -> None:
    m = _compose([f"model={option}"])["model"]
    with torch.device("meta"):  # shapes only: no weights, no compute
        net = build_architecture(m["arch"], num_classes=m["num_classes"], **m["kwargs"])
        out = net.eval()(torch.empty(2, *m["input_shape"]))
    assert tuple(out.shape) == (2, m["num_classes"])


@pytest.mark.parametrize("option", _options("platform"))
def test_every_platform_option_parses(option: str) -> None:
    platform = platform_from_config(_compose([f"platform={option}"])["platform"])
    assert platform.name == option


def _data_overrides(option: str, root: Path, tmp_path: Path) -> list[str]:
    if option == "npz":
        rng = np.random.default_rng(0)
        np.savez(tmp_path / "d.npz", x=rng.normal(size=(150, 1, 8, 8)).astype(np.float32),
                 y=np.arange(150) % 3)
        return [f"data.path={tmp_path / 'd.npz'}"]
    if option == "generic":
        return ["data.dataset._target_=torchvision.datasets.FakeData", "+data.dataset.size=150",
                "+data.dataset.image_size=[1,8,8]", "+data.dataset.num_classes=3",
                "+data.dataset.transform._target_=torchvision.transforms.ToTensor"]
    return [] if option == "mnist5k" else [f"data.root={root / option}"]


@pytest.mark.parametrize("option", _options("data"))
def test_every_data_option_loads(option: str, data_root: Path, tmp_path: Path) -> None:
    overrides = [f"data={option}", *_data_overrides(option, data_root, tmp_path),
                 *(f"data.splits.{k}={v}" for k, v in TINY_SPLITS.items())]
    cfg = _compose(overrides)["data"]
    data = _load(cfg, seed=0)
    assert (len(data.train), len(data.val), len(data.test)) == (40, 20, 20)
    x, y = data.train[0]
    assert tuple(x.shape) == data.input_shape and x.dtype == torch.float32
    assert 0 <= y < data.num_classes
    if cfg.get("num_classes"):
        assert data.num_classes == cfg["num_classes"]


def test_heads_space_and_search_options_instantiate(tmp_path: Path) -> None:
    for option in _options("heads"):
        assert head_family_from_config(_compose([f"heads={option}"])["heads"]).names
    val = synthetic_split(n=200, c=4, h=3, seed=0)
    for option in _options("space"):
        space = build_space(_compose([f"space={option}"])["space"], val=val,
                            platform=synthetic_platform())
        assert space.variables
    for option in _options("search"):
        cfg = _compose([f"search={option}"])["search"]
        settings = SearchSettings.from_mapping(cfg)
        assert settings.backend == option
        (tmp_path / option).mkdir()
        backend = make_backend(option, space=space, settings=settings, seed=0, n_obj=3,
                               run_dir=tmp_path / option,
                               history=History(X=np.zeros((0, space.n_genes)), F=np.zeros((0, 3)),
                                               G=np.zeros((0, 2))))
        rows = backend.ask(4)
        assert 1 <= len(rows) <= 4 and rows.shape[1] == space.n_genes
        for config in space.configs(space.repair_matrix(rows)):  # EENNs the space can hold
            assert len(config.exits) <= space.max_exits
            assert all(e.candidate < space.n_candidates and e.head < space.n_heads
                       for e in config.exits)
            assert len(config.boundaries) == space.n_links


def _check_run_folder(run: Path, name: str) -> None:
    for f in RUN_FILES:
        assert (run / f).is_file() and (run / f).stat().st_size > 0, f
    cfg = _compose([f"+experiment={name}", "+debug=tiny"])
    summary = json.loads((run / "summary.json").read_text())
    assert summary["experiment"] == name
    assert summary["objectives"] == cfg["objectives"]
    assert summary["platform"]["name"] == cfg["platform"]["name"]
    assert 1 <= len(summary["candidates"]) <= cfg["model"]["candidates"]["max_candidates"]
    trials = pd.read_parquet(run / "trials.parquet")
    main = cfg["search"]["backend"]
    assert (trials["strategy"] == main).sum() == cfg["search"]["budget"]
    assert set(trials["strategy"]) == {main, "random", "manual"}
    assert trials["trial"].is_unique
    chosen = yaml.safe_load((run / "chosen.yaml").read_text())
    assert chosen["strategy"] == main and chosen["val"] and chosen["test"]
    pareto = pd.read_csv(run / "pareto.csv")
    assert len(pareto) >= 1 and set(pareto["trial"]) <= set(trials["trial"])
    assert "<html" in (run / "report.html").read_text()[:2000].lower()


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("runs")


def _run_tiny(name: str, *, runs: Path, data_root: Path,
              cache: Path) -> tuple[Path, subprocess.CompletedProcess[str]]:
    data = _compose([f"+experiment={name}"])["data"]["name"]
    root = [] if data == "mnist5k" else [f"data.root={data_root / data}"]
    done = search_cli([f"+experiment={name}", "+debug=tiny", *root,
                       f"hydra.run.dir={runs / name}"], cwd=runs, cache=cache)
    assert done.returncode == 0, done.stderr[-3000:]
    return runs / name, done


@pytest.mark.slow
@pytest.mark.parametrize("name", END_TO_END)
def test_experiment_runs_end_to_end_in_tiny_mode(name: str, runs: Path, data_root: Path,
                                                 cache: Path) -> None:
    run, done = _run_tiny(name, runs=runs, data_root=data_root, cache=cache)
    assert "chosen point" in done.stdout
    _check_run_folder(run, name)


@pytest.fixture
def finished_run(runs: Path, data_root: Path, cache: Path) -> Path:
    """The tiny ECG run folder (made now when that test did not run first)."""
    if not (runs / "ecg_mitbih" / "trials.parquet").is_file():
        _run_tiny("ecg_mitbih", runs=runs, data_root=data_root, cache=cache)
    return runs / "ecg_mitbih"


@pytest.mark.slow
def test_wrong_data_root_is_one_line_and_keeps_results(finished_run: Path, data_root: Path,
                                                       cache: Path) -> None:
    kept = {f: (finished_run / f).read_bytes()
            for f in ("trials.parquet", "pareto.csv", "chosen.yaml", "summary.json")}
    # the CIFAR experiment pointed at the Speech Commands folder, into the finished run folder
    done = search_cli(["+experiment=resnet152_cifar10", "+debug=tiny",
                       f"data.root={data_root / 'speech_commands'}",
                       f"hydra.run.dir={finished_run}"], cwd=finished_run.parent, cache=cache)
    assert done.returncode == 2
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: CIFAR-10 batch file not found at ")
    assert str(data_root / "speech_commands") in lines[0] and "data.root=" in lines[0]
    for f, content in kept.items():
        assert (finished_run / f).read_bytes() == content, f"{f} was overwritten"


@pytest.mark.parametrize(("data", "writer", "message"), [
    ("mitbih", "cifar10", "MIT-BIH records"),
    ("speech_commands", "mitbih", "Speech Commands word folders"),
])
def test_data_root_with_other_files_names_it(data: str, writer: str, message: str,
                                             data_root: Path) -> None:
    cfg = _compose([f"data={data}", f"data.root={data_root / writer}"])["data"]
    with pytest.raises(DataError, match=message) as err:
        _load(cfg, seed=0)
    text = str(err.value)
    assert "\n" not in text and str(data_root / writer) in text and "data.root=" in text


def test_corrupt_cifar_batch_names_the_file(tmp_path: Path) -> None:
    root = write_dataset("cifar10", tmp_path / "cifar10")
    (root / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")
    cfg = _compose(["data=cifar10", f"data.root={root}"])["data"]
    with pytest.raises(DataError, match="data_batch_3") as err:
        _load(cfg, seed=0)
    assert "\n" not in str(err.value)
