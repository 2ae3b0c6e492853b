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

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
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
from evaluators.models import ARCHITECTURES

# REQUIRED ... to_config: the group reader every settings parser uses (spaces, search), and
# plain, the one conversion of a config node to plain Python
__all__ = ["REQUIRED", "CandidateSettings", "ConfigError", "FeatureSettings", "Group",
           "ModelSettings", "defaults_of", "plain", "strict_int", "strict_str", "to_config"]

_log = logging.getLogger(__name__)


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


def _input_shape(g: Group, name: str) -> tuple[int, ...] | None:
    shape = g.values.get("input_shape")
    if shape is None:
        return None
    if (not isinstance(shape, (list, tuple)) or not shape
            or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape)):
        raise ConfigError(f"model.input_shape={shape!r} for model {name!r}; set it to one "
                          "sample's shape without the batch dimension, e.g. [3, 32, 32]")
    if min(shape) < 1:
        raise ConfigError(f"model.input_shape={list(shape)!r} has a dimension < 1")
    return tuple(shape)


def _num_classes(g: Group) -> int | None:
    num_classes = g.values.get("num_classes")
    if num_classes is not None and (isinstance(num_classes, bool)
                                    or not isinstance(num_classes, int) or num_classes < 1):
        raise ConfigError(f"model.num_classes={num_classes!r} must be an integer >= 1")
    return num_classes


def _foreign_preset(name: str, arch: str, tv_name: str | None) -> bool:
    """Whether ``model.arch`` was overridden on a preset written for another architecture
    (the preset's name is a registry key, or its ``tv_name``, that is not ``arch``)."""
    if ":" not in arch and arch not in ARCHITECTURES:
        return False  # not an architecture at all: building it says so
    if tv_name is not None:
        return arch != f"torchvision:{tv_name}"
    return name in ARCHITECTURES and arch != name


def _own_name(arch: str) -> str:
    """A run name for ``arch``: ``pkg.mod:Net`` -> ``Net``, ``torchvision:x`` ->
    ``torchvision_x``."""
    if arch.startswith("torchvision:"):
        return arch.replace(":", "_", 1)
    return arch.rpartition(":")[2] or arch


@dataclass(frozen=True, kw_only=True)
class ModelSettings:
    """``model``: the backbone (architecture, checkpoint or training recipe) and its candidates.

    ``checkpoint`` is a state dict / TorchScript / ``.pt2`` file; ``None`` trains ``arch`` once
    with ``train`` and caches it. ``kwargs`` go to the architecture's constructor, which checks
    them. ``input_shape`` and ``num_classes`` are for ``search.inspect`` (no data); a run takes
    both from the data. ``tv_name`` is the helper key of ``conf/model/torchvision.yaml`` that its
    name and arch are built from.

    A preset's ``input_shape``, ``num_classes`` and ``train`` belong to its architecture: when
    ``model.arch`` is overridden on a preset written for another one (``model.arch=pkg.mod:Net``
    on the default ``mnist_cnn``), the run is named after ``arch``, shape and classes come from
    the data and ``train`` is :class:`TrainRecipe`'s defaults, the recipe for unknown models;
    one log line says so.
    """

    name: str
    arch: str
    input_shape: tuple[int, ...] | None = None  # one sample, without the batch dimension
    num_classes: int | None = None
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    checkpoint: Path | None = None
    candidates: CandidateSettings = CandidateSettings()
    train: TrainRecipe = field(default_factory=TrainRecipe)
    tv_name: str | None = None

    def shape_and_classes(self) -> tuple[tuple[int, ...], int]:
        """``input_shape`` and ``num_classes`` where no data gives them (``search.inspect``)."""
        if self.input_shape is None or self.num_classes is None:
            raise ConfigError(f"model {self.name!r} has no input_shape/num_classes (a run takes "
                              "them from the data); set model.input_shape=[C, H, W] and "
                              "model.num_classes=<classes> to inspect it without data")
        return self.input_shape, self.num_classes

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any] | None) -> ModelSettings:
        g = Group.of("model", cfg)
        g.check_keys(f.name for f in fields(cls))
        arch = g.text("arch", None, optional=True)
        if not arch:
            raise BackboneError("model.arch is not set; name a registry key, torchvision:<name> "
                                "or module:Callable")
        name = g.text("name", _own_name(arch))
        tv_name = g.text("tv_name", None, optional=True)
        checkpoint = g.text("checkpoint", None, optional=True)
        settings = cls(
            name=name, arch=arch, input_shape=_input_shape(g, name), num_classes=_num_classes(g),
            kwargs=g.mapping("kwargs", {}),
            checkpoint=Path(checkpoint).expanduser() if checkpoint else None,
            candidates=CandidateSettings.from_mapping(g.values.get("candidates")),
            train=TrainRecipe.from_config(g.values.get("train")),
            tv_name=tv_name,
        )
        if not _foreign_preset(name, arch, tv_name):
            return settings
        own = replace(settings, name=_own_name(arch), input_shape=None, num_classes=None,
                      train=TrainRecipe(), tv_name=None)
        _log.warning("model.arch=%s is not the architecture of preset %r: its input_shape, "
                     "num_classes and train recipe are dropped; the run is named %r, shape and "
                     "classes come from the data%s", arch, name, own.name,
                     "" if checkpoint else ", and it trains with the recipe for unknown models "
                     f"({own.train.describe()}); to choose it, use model=custom model.arch={arch} "
                     "model.train.<key>=<value>")
        return own
