"""The preparation stage: everything the search needs, computed once and cached.

``prepare(settings)`` runs data -> backbone -> exit candidates -> one-pass feature
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
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from evaluators._cache import cache_lock
from evaluators.backbone import BackboneInfo, get_backbone
from evaluators.costs import BackboneCosts
from evaluators.data import DataSplits, load_data
from evaluators.device import resolve_device
from evaluators.features import FeatureStore, extract_features, iter_batches
from evaluators.head_training import TrainedHeads, train_heads
from evaluators.heads import HeadFamily, head_costs
from evaluators.platform import Platform
from evaluators.predictions import PredictionTable
from evaluators.tables import build_prediction_table
from search.config import ExperimentSettings, parse_config
from spaces._profile_cache import cached_profile
from spaces.profile import BackboneProfile

__all__ = ["Prepared", "prepare", "seed_everything"]


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


def seed_everything(seed: int) -> None:
    """The run's one seed, set in one place (Python, numpy, torch)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def prepare(settings: ExperimentSettings | Mapping[str, Any] | DictConfig, *,
            progress: bool = True) -> Prepared:
    """Run (or read from the cache) every stage before the search.

    The entry points pass parsed settings; a composed config (a script, a run folder's
    ``config.yaml``) is parsed here first, once.
    """
    s = parse_config(settings)
    with cache_lock(s.cache_dir):  # the jobs of a sweep share the cache: one builds at a time
        return _prepare(s, progress=progress)


def _prepare(s: ExperimentSettings, *, progress: bool) -> Prepared:
    seed_everything(s.seed)
    dev = resolve_device(s.device)
    data = load_data(s.data, seed=s.data_seed)  # split and backbone: data_seed, not the search's
    model, info = get_backbone(s.model, data, cache_dir=s.cache_dir, seed=s.data_seed,
                               device=s.device)
    example = torch.zeros(1, *data.input_shape)
    profile = cached_profile(model, example, cache_dir=s.cache_dir,
                             weights_hash=info.weights_hash,
                             options=s.model.candidates.options())
    if not profile.candidates:
        raise ValueError(
            f"model {s.model.name!r} has no exit candidate; lower "
            "model.candidates.tail_fraction or list model.candidates.modules"
        )
    store = extract_features(
        model,
        {"train": data.train, "val": data.val, "test": data.test},
        points=[c.name for c in profile.candidates],
        kind=profile.candidates[0].kind,
        pool=s.features.pool,
        cache_dir=s.cache_dir,
        weights_hash=info.weights_hash,
        data_fingerprint=data.fingerprint,
        batch_size=s.features.batch_size,
        budget_gib=s.features.budget_gib,
        device=dev.type,
        train_precision=s.features.train_precision,
        eval_precision=s.features.eval_precision,
        progress=progress,
    )
    family = s.heads
    heads = train_heads(store, family, seed=s.seed, device=dev.type, progress=progress)
    predictions = build_prediction_table(store, heads, device=dev.type)
    macs, params = head_costs(
        family,
        [store.raw_shapes[p] for p in store.points],
        pool=store.pool,
        num_classes=store.num_classes,
    )
    costs = profile.to_backbone_costs(head_macs=macs, head_params=params, head_names=family.names)
    platform = s.platform
    if any(d.profile is not None for d in platform.devices):  # measured costs: load or measure
        from search.profile import price_platform
        from search.profile._subject import make_subject

        x = torch.cat([b.float() for b, _ in iter_batches(data.val, 256)])[:256]
        subject = make_subject(
            model=model, candidates=costs.candidate_names, family_names=family.names,
            family_members=family.as_config()["members"], pool=store.pool,
            head_modules=heads.heads, weights_hash=info.weights_hash, x=x)
        platform = price_platform(platform, subject, cache_dir=s.cache_dir)
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
