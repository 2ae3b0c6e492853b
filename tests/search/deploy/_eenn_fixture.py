"""A tiny but complete early-exit setup for runtime and export tests.

A seeded fx-traceable CNN with a residual block and in-place ReLUs, random
(seeded) inputs whose labels depend on them, the real feature cache, heads
trained for a few epochs, the real prediction table and cost table, and the
three-device synthetic platform. Built once per test process.
"""

from __future__ import annotations

import functools
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from evaluators.costs import BackboneCosts
from evaluators.eenn import METRICS, EENNConfig, ExitChoice
from evaluators.features import extract_features
from evaluators.head_training import TrainedHeads, train_heads
from evaluators.heads import HeadFamily, HeadSpec, HeadTraining, head_costs
from evaluators.platform import Platform
from evaluators.predictions import PredictionTable
from evaluators.tables import build_prediction_table
from spaces.profile import BackboneProfile, profile_backbone
from tests._synthetic import synthetic_platform

N_CLASSES = 4
FAMILY = HeadFamily(
    members=(HeadSpec(name="linear", kind="linear"), HeadSpec(name="mlp8", kind="mlp", width=8),
             HeadSpec(name="conv4", kind="conv", width=4)),
    training=HeadTraining(epochs=4, batch_size=32, lr=0.02),
)


class TinyNet(nn.Module):
    """conv -> residual block -> strided conv -> conv -> pool -> linear, in-place ReLUs."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(2, 6, 3, padding=1), nn.BatchNorm2d(6),
                                  nn.ReLU(inplace=True))
        self.b1 = nn.Conv2d(6, 6, 3, padding=1)
        self.b2 = nn.Conv2d(6, 6, 3, padding=1)
        self.down = nn.Sequential(nn.Conv2d(6, 12, 3, stride=2, padding=1), nn.ReLU(inplace=True))
        self.deep = nn.Sequential(nn.Conv2d(12, 12, 3, padding=1), nn.ReLU(inplace=True))
        self.head = nn.Linear(12, N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.b2(torch.relu(self.b1(x))))
        x = self.deep(self.down(x))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


@dataclass(frozen=True, kw_only=True, eq=False)
class Setup:
    model: nn.Module
    profile: BackboneProfile
    heads: TrainedHeads
    table: PredictionTable
    costs: BackboneCosts
    platform: Platform
    data: dict[str, TensorDataset]


def _data(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, 10, 10, generator=g)
    labels = (x[:, 0, :5].mean(dim=(1, 2)) > 0).long() * 2 + (x[:, 1, 5:].mean(dim=(1, 2)) > 0)
    return TensorDataset(x, labels.long())


@functools.cache
def setup() -> Setup:
    """Build (once) the tiny model, its caches, heads, tables and costs."""
    torch.manual_seed(0)
    model = TinyNet().eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        model.stem[1].running_mean.uniform_(-0.2, 0.2)
        model.stem[1].running_var.uniform_(0.5, 2.0)
    data = {"train": _data(160, 1), "val": _data(120, 2), "test": _data(90, 3)}
    profile = profile_backbone(model, data["val"].tensors[0][:1], tail_fraction=0.0)
    cache = Path(tempfile.mkdtemp(prefix="eenn-runtime-test-"))
    store = extract_features(model, data, points=[c.name for c in profile.candidates], pool=3,
                             cache_dir=cache, weights_hash="tiny", data_fingerprint="tiny",
                             batch_size=32, progress=False)
    heads = train_heads(store, FAMILY, seed=0, device="cpu", progress=False)
    table = build_prediction_table(store, heads)
    macs, params = head_costs(FAMILY, [store.raw_shapes[p] for p in store.points], pool=3,
                              num_classes=N_CLASSES)
    costs = profile.to_backbone_costs(head_macs=macs, head_params=params, head_names=FAMILY.names)
    return Setup(model=model, profile=profile, heads=heads, table=table, costs=costs,
                 platform=synthetic_platform(3), data=data)


def tie_threshold(s: Setup, metric: str, c: int, h: int, q: float) -> float:
    """A val confidence itself (inverted-CDF quantile): one sample sits on the threshold."""
    conf = s.table.val.head_conf[METRICS.index(metric), c, h].astype(np.float64)
    return float(np.quantile(conf, q, method="inverted_cdf"))


def gap_threshold(s: Setup, metric: str, c: int, h: int, q: float, *, shift: int = 0) -> float:
    """A float32 threshold halfway between two val confidences near quantile ``q``.

    No val confidence lies within 1e-6 of it, so float32 kernel noise cannot
    move a sample across it; ``shift`` moves it by that many confidence gaps.
    """
    u = np.unique(s.table.val.head_conf[METRICS.index(metric), c, h].astype(np.float64))
    k = int(np.clip(round(q * len(u)), 1, len(u) - 1)) + shift
    for j in sorted(range(1, len(u)), key=lambda j: abs(j - k)):
        if u[j] - u[j - 1] > 4e-6:
            return float(np.float32((u[j] + u[j - 1]) / 2))
    raise AssertionError("no usable gap between val confidences")


def configs(s: Setup) -> list[EENNConfig]:
    """Several configurations: no exit, one exit, every candidate, each metric, relays."""
    n_c = s.costs.n_candidates
    out = [EENNConfig(exits=(), boundaries=(n_c + 1, n_c + 1))]
    for i, metric in enumerate(METRICS):
        cands = range(n_c) if i == 0 else range(i % 2, n_c, 2)
        exits = tuple(ExitChoice(candidate=c, head=(c + i) % 3,
                                 threshold=gap_threshold(s, metric, c, (c + i) % 3, 0.6))
                      for c in cands)
        bounds = [(1, n_c), (0, 2), (2, 2)][i]
        out.append(EENNConfig(exits=exits, boundaries=bounds, metric=metric))
    out.append(EENNConfig(exits=(ExitChoice(candidate=n_c - 1, head=1, threshold=0.0),),
                          boundaries=(0, 0)))  # everyone leaves at the last candidate
    return out
