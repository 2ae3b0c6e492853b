"""Typed settings of the evaluators' config groups: ``model`` and ``features``.

Each is a frozen dataclass whose field defaults are the one place a default lives
(``search/config.py`` hands them to Hydra, so ``conf/`` files name only what a preset
chooses); ``from_mapping`` reads the group once, at the entry point, with one-line errors.
The other evaluators' groups have their typed values next to their consumers:
``platform`` -> :class:`evaluators.platform.Platform`, ``heads`` ->
:class:`evaluators.heads.HeadFamily`, ``constraints`` -> :class:`evaluators.proxy.ConstraintSpec`,
``model.train`` -> :class:`evaluators._training.TrainRecipe`, ``data`` ->
:class:`evaluators.data.settings.DataSettings`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from evaluators._config import (
    REQUIRED,
    ConfigError,
    Group,
    defaults_of,
    plain,
    strict_int,
    strict_str,
    to_config,
)
from evaluators._extract import PRECISIONS
from evaluators._training import BackboneError, TrainRecipe

# REQUIRED ... to_config: the group reader every settings parser uses (spaces, search), and
# plain, the one conversion of a config node to plain Python
__all__ = ["REQUIRED", "CandidateSettings", "ConfigError", "FeatureSettings", "Group",
           "ModelSettings", "defaults_of", "plain", "strict_int", "strict_str", "to_config"]


@dataclass(frozen=True, kw_only=True)
class FeatureSettings:
    """``features``: the one-pass feature cache every head trains on."""

    pool: int = 4  # adaptive average pooling of each candidate's activation to <= pool x pool
    batch_size: int = 256
    budget_gib: float = 4.0  # refuse (with the knobs to turn) a feature cache larger than this
    # arithmetic of the backbone pass (recorded in the cache and summary.json): fp32 = IEEE
    # float32 (TF32 off) | tf32 (TF32 matrix units on a CUDA GPU) | bf16 | fp16 (autocast) |
    # auto (bf16 on a CUDA GPU, fp32 on a CPU)
    train_precision: str = "auto"  # train features: they only fit the heads (stored as fp16)
    eval_precision: str = "fp32"  # val/test features and logits: what the search reads

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any] | None) -> FeatureSettings:
        g = Group.of("features", cfg)
        g.check_keys(f.name for f in fields(cls))
        d = cls()
        return cls(pool=g.integer("pool", d.pool, low=1),
                   batch_size=g.integer("batch_size", d.batch_size, low=1),
                   budget_gib=g.number("budget_gib", d.budget_gib, above=0.0),
                   train_precision=g.text("train_precision", d.train_precision,
                                          choices=PRECISIONS),
                   eval_precision=g.text("eval_precision", d.eval_precision,
                                         choices=PRECISIONS))


@dataclass(frozen=True, kw_only=True)
class CandidateSettings:
    """``model.candidates``: which layer outputs may carry an exit (:mod:`spaces.profile`)."""

    max_candidates: int | None = None  # keep at most this many, spread evenly by cumulative MACs
    min_mac_fraction: float = 0.0  # minimum MAC distance between kept candidates, share of total
    tail_fraction: float = 0.01  # drop points after which less than this share of MACs remains
    modules: tuple[str, ...] | None = None  # module paths for hooks (models fx cannot trace)

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any] | None) -> CandidateSettings:
        g = Group.of("model.candidates", cfg)
        g.check_keys(f.name for f in fields(cls))
        d = cls()
        return cls(
            max_candidates=g.integer("max_candidates", d.max_candidates, low=0, optional=True),
            min_mac_fraction=g.number("min_mac_fraction", d.min_mac_fraction, low=0.0, below=1.0),
            tail_fraction=g.number("tail_fraction", d.tail_fraction, low=0.0, below=1.0),
            modules=g.items("modules", d.modules, item=strict_str, optional=True,
                            what="a list of module paths"),
        )

    def options(self) -> dict[str, Any]:
        """Keyword arguments of :func:`spaces.profile.profile_backbone` (unset ones left out)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        if self.modules is not None:
            values["modules"] = list(self.modules)
        return {k: v for k, v in values.items() if v is not None}


def _input_shape(g: Group, name: str) -> tuple[int, ...]:
    shape = g.values.get("input_shape")
    if (not isinstance(shape, (list, tuple)) or not shape
            or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape)):
        raise ConfigError(f"model.input_shape={shape!r} for model {name!r}; set it to one "
                          "sample's shape without the batch dimension, e.g. [3, 32, 32]")
    if min(shape) < 1:
        raise ConfigError(f"model.input_shape={list(shape)!r} has a dimension < 1")
    return tuple(shape)


@dataclass(frozen=True, kw_only=True)
class ModelSettings:
    """``model``: the backbone (architecture, checkpoint or training recipe) and its candidates.

    ``checkpoint`` is a state dict / TorchScript / ``.pt2`` file; ``None`` trains ``arch`` once
    with ``train`` and caches it. ``kwargs`` go to the architecture's constructor, which checks
    them. ``tv_name`` is the helper key of ``conf/model/torchvision.yaml`` that its name and
    arch are built from.
    """

    name: str
    arch: str
    input_shape: tuple[int, ...]  # one sample, without the batch dimension
    num_classes: int
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    checkpoint: Path | None = None
    candidates: CandidateSettings = CandidateSettings()
    train: TrainRecipe = field(default_factory=TrainRecipe)
    tv_name: str | None = None

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any] | None) -> ModelSettings:
        g = Group.of("model", cfg)
        g.check_keys(f.name for f in fields(cls))
        arch = g.text("arch", None, optional=True)
        if not arch:
            raise BackboneError("model.arch is not set; name a registry key, torchvision:<name> "
                                "or module:Callable")
        name = g.text("name", arch)
        num_classes = g.values.get("num_classes")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ConfigError(f"model.num_classes={num_classes!r} must be an integer >= 1")
        checkpoint = g.text("checkpoint", None, optional=True)
        return cls(
            name=name, arch=arch, input_shape=_input_shape(g, name), num_classes=num_classes,
            kwargs=g.mapping("kwargs", {}),
            checkpoint=Path(checkpoint).expanduser() if checkpoint else None,
            candidates=CandidateSettings.from_mapping(g.values.get("candidates")),
            train=TrainRecipe.from_config(g.values.get("train")),
            tv_name=g.text("tv_name", None, optional=True),
        )

