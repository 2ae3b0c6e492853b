"""README's bring-your-own run, end to end: a user's npz and model class, only paths given.

The files are the README's example; the run adds ``+debug=tiny`` (a smaller split and search)
and the cache and run folders. Then the cached backbone gets 64 bytes flipped and ``prepare``
must notice and retrain it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import yaml

from search.config import parse_config
from search.pipeline import prepare
from tests.search._datasets import search_cli

MODEL = '''
import torch
from torch import nn


class Net(nn.Module):
    """A small 1-D CNN for (1, 64) sequences."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(1, 8, 5, padding=2), nn.ReLU(),
            nn.Conv1d(8, 16, 5, stride=2, padding=2), nn.ReLU(),
            nn.Conv1d(16, 16, 5, stride=2, padding=2), nn.ReLU(),
            nn.AdaptiveAvgPool1d(1), nn.Flatten(),
        )
        self.classifier = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
'''


def write_example(folder: Path) -> None:
    """``mymodel.py`` and ``mydata.npz``: 3 classes of noisy sine waves, 300 samples."""
    (folder / "mymodel.py").write_text(MODEL)
    rng = np.random.default_rng(0)
    y = np.arange(300) % 3
    t = np.linspace(0, 1, 64)
    x = np.sin(2 * np.pi * (2 + 3 * y[:, None]) * t) + rng.normal(0, 0.5, (300, 64))
    np.savez(folder / "mydata.npz", x=x[:, None, :].astype(np.float32), y=y)


@pytest.mark.slow
def test_readme_run_on_a_users_npz_and_model(tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    write_example(tmp_path)
    run = tmp_path / "run"
    done = search_cli(["model.arch=mymodel:Net", "data=npz", "data.path=mydata.npz",
                       "+debug=tiny", f"hydra.run.dir={run}"], cwd=tmp_path,
                      cache=tmp_path / "cache")
    assert done.returncode == 0, done.stderr[-3000:]
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["model"]["name"] == "Net" and config["model"]["train"]["epochs"] is None
    assert (run / "summary.json").is_file()
    assert "Traceback" not in done.stderr
    backbones = list((tmp_path / "cache" / "backbones").glob("mymodel_Net-*.pt"))
    assert len(backbones) == 1
    raw = bytearray(backbones[0].read_bytes())
    for i in range(len(raw) // 2, len(raw) // 2 + 64):
        raw[i] ^= 0xFF
    backbones[0].write_bytes(bytes(raw))
    settings = parse_config({**config, "cache_dir": str(tmp_path / "cache"),
                             "data": {**config["data"], "path": str(tmp_path / "mydata.npz")}})
    import sys
    sys.path.insert(0, str(tmp_path))
    try:
        with caplog.at_level(logging.WARNING, logger="evaluators.backbone"):
            prepared = prepare(settings, progress=False)
    finally:
        sys.path.remove(str(tmp_path))
    assert prepared.backbone.trained_now
    assert any("is corrupt" in r.getMessage() for r in caplog.records)
