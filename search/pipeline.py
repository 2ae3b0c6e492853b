"""The preparation stage: everything the search needs, computed once and cached.

``prepare(cfg)`` runs data -> backbone -> exit candidates -> one-pass feature
cache -> trained heads -> prediction table -> cost table. Every step is cached
on disk by content hash (see the modules it calls), so a second run with the
same configuration only reads files. The search itself never touches the
backbone again: it reads :attr:`Prepared.predictions`, :attr:`Prepared.costs`
and :attr:`Prepared.platform`.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from evaluators.backbone import BackboneInfo, get_backbone, resolve_device
from evaluators.costs import BackboneCosts
from evaluators.data import DataSplits, load_data
from evaluators.features import FeatureStore, extract_features
from evaluators.head_training import TrainedHeads, train_heads
from evaluators.heads import HeadFamily, head_costs, head_family_from_config
from evaluators.platform import Platform, platform_from_config
from evaluators.predictions import PredictionTable
from evaluators.tables import build_prediction_table
from spaces.profile import BackboneProfile, profile_backbone

__all__ = ["Prepared", "plain", "prepare", "seed_everything"]


@dataclass(frozen=True, kw_only=True, eq=False)
class Prepared:
    """The outputs of the preparation stage, each a plain value or a cached file."""

    data: DataSplits
    model: nn.Module
    backbone: BackboneInfo
    profile: BackboneProfile
    store: FeatureStore
    family: HeadFamily
    heads: TrainedHeads
    predictions: PredictionTable
    costs: BackboneCosts
    platform: Platform


def plain(cfg: Any) -> Any:
    """A resolved plain-Python copy of a config node (dicts and lists pass through)."""
    if isinstance(cfg, DictConfig) or OmegaConf.is_config(cfg):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


def seed_everything(seed: int) -> None:
    """The run's one seed, set in one place (Python, numpy, torch)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _candidate_options(model_cfg: Mapping[str, Any]) -> dict[str, Any]:
    opts = dict(model_cfg.get("candidates") or {})
    known = {"max_candidates", "min_mac_fraction", "tail_fraction", "modules"}
    unknown = set(opts) - known
    if unknown:
        raise ValueError(
            f"unknown model.candidates option(s) {sorted(unknown)}; use {sorted(known)}"
        )
    return {k: v for k, v in opts.items() if v is not None}


def prepare(cfg: Mapping[str, Any] | DictConfig, *, progress: bool = True) -> Prepared:
    """Run (or read from the cache) every stage before the search for ``cfg``."""
    cfg = plain(cfg)
    seed = int(cfg.get("seed", 0))
    seed_everything(seed)
    device = str(cfg.get("device", "auto"))
    dev = resolve_device(device)
    cache_dir = Path(str(cfg.get("cache_dir", "results/cache"))).expanduser()
    platform = platform_from_config(cfg["platform"])
    data = load_data(cfg["data"], seed=seed)
    model, info = get_backbone(cfg["model"], data, cache_dir=cache_dir, seed=seed, device=device)
    example = torch.zeros(1, *data.input_shape)
    profile = profile_backbone(model, example, **_candidate_options(cfg["model"]))
    if not profile.candidates:
        raise ValueError(
            f"model {cfg['model'].get('name')!r} has no exit candidate; lower "
            "model.candidates.tail_fraction or list model.candidates.modules"
        )
    features = dict(cfg.get("features") or {})
    store = extract_features(
        model,
        {"train": data.train, "val": data.val, "test": data.test},
        points=[c.name for c in profile.candidates],
        kind=profile.candidates[0].kind,
        pool=int(features.get("pool", 4)),
        cache_dir=cache_dir,
        weights_hash=info.weights_hash,
        data_fingerprint=data.fingerprint,
        batch_size=int(features.get("batch_size", 256)),
        budget_gib=float(features.get("budget_gib", 4.0)),
        device=dev.type,
        train_precision=str(features.get("train_precision", "auto")),
        eval_precision=str(features.get("eval_precision", "fp32")),
        progress=progress,
    )
    family = head_family_from_config(cfg["heads"])
    heads = train_heads(store, family, seed=seed, device=dev.type, progress=progress)
    predictions = build_prediction_table(store, heads, device=dev.type)
    macs, params = head_costs(
        family,
        [store.raw_shapes[p] for p in store.points],
        pool=store.pool,
        num_classes=store.num_classes,
    )
    costs = profile.to_backbone_costs(head_macs=macs, head_params=params, head_names=family.names)
    return Prepared(
        data=data,
        model=model,
        backbone=info,
        profile=profile,
        store=store,
        family=family,
        heads=heads,
        predictions=predictions,
        costs=costs,
        platform=platform,
    )
