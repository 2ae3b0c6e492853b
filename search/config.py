"""The experiment's settings, parsed once at the entry points, and their defaults for Hydra.

``parse_config(cfg)`` turns a composed config (a ``DictConfig`` or a plain mapping, e.g. a run
folder's ``config.yaml``) into :class:`ExperimentSettings`, a tree of frozen dataclasses; a
bad key or value is a one-line error that names it and the fix. Below the entry points
(``python -m search``, ``search.worker``, ``search.inspect``, reading a run folder back)
every function receives these typed values.

Defaults live in ONE place: the dataclass fields (here and next to each group's consumer:
``evaluators/settings.py``, ``evaluators/data/settings.py`` and the loaders,
``evaluators/{heads,platform,proxy,_training}.py``, ``spaces/settings.py``,
``search/settings.py``). :func:`register` hands them to Hydra's ConfigStore as the config
``settings_defaults`` (first in ``conf/config.yaml``'s defaults list) and one
``settings_defaults/data/<loader>`` per data loader (first in each ``conf/data`` file), so
every key can be overridden on the command line while the YAML files name only what a preset
chooses. The nodes are untyped on purpose: Hydra's own type errors are multi-line and cannot
name the fix, so the checks are all here. ``python -m search --cfg job`` prints every key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore

from evaluators.data.settings import LOADERS, DataSettings, loader_options
from evaluators.device import check_device
from evaluators.heads import HeadFamily, HeadTraining, head_family_from_config
from evaluators.platform import Platform, platform_from_config
from evaluators.proxy import OBJECTIVES, ConstraintSpec
from evaluators.settings import (
    ConfigError,
    FeatureSettings,
    Group,
    ModelSettings,
    defaults_of,
    plain,
    to_config,
)
from search.settings import SearchSettings
from spaces.settings import SpaceSettings

__all__ = ["ConfigError", "ExperimentSettings", "parse_config", "register", "resolve_guarantee",
           "to_config"]

CACHE_DIR_ENV, CACHE_DIR = "EENN_CACHE_DIR", "results/cache"
_GROUPS = ("model", "data", "platform", "heads", "space", "search", "features", "constraints")


def _cache_dir() -> Path:
    return Path(os.environ.get(CACHE_DIR_ENV, CACHE_DIR))


@dataclass(frozen=True, kw_only=True)
class ExperimentSettings:
    """One experiment: the top-level keys of ``conf/config.yaml`` and every config group.

    ``seed``: the search's seed (sampler, baselines, head training); ``data_seed``: draws the
    train/val/test split and seeds the backbone's training, so runs that differ only in
    ``seed`` share one split and one backbone (a mapping without ``data_seed``, e.g. a run
    folder written before it existed, reads it as ``seed``, which both were then);
    ``device``: ``cpu``, ``cuda[:n]`` or ``auto`` (a GPU when one is present);
    ``cpu_threads``: torch threads on the CPU (0: torch's default, shared out between the jobs
    of a joblib sweep); ``cache_dir``: backbone checkpoints, feature caches, heads and
    prediction tables, keyed by content hashes (default ``$EENN_CACHE_DIR`` or
    ``results/cache``); ``objectives``: minimised, in this order; the first one that is not
    ``error`` is the primary cost (the chosen point).
    """

    model: ModelSettings
    data: DataSettings
    platform: Platform
    heads: HeadFamily
    space: SpaceSettings = field(default_factory=SpaceSettings)
    search: SearchSettings = field(default_factory=SearchSettings)
    features: FeatureSettings = field(default_factory=FeatureSettings)
    constraints: ConstraintSpec = field(default_factory=ConstraintSpec)
    name: str = "default"
    seed: int = 0
    data_seed: int = 0
    device: str = "auto"
    cpu_threads: int = 0
    cache_dir: Path = field(default_factory=_cache_dir)
    objectives: tuple[str, ...] = ("error", "macs", "energy")


def _objectives(g: Group, default: tuple[str, ...]) -> tuple[str, ...]:
    objectives = g.items("objectives", default, item=str, what="a list of objectives")
    if not objectives or set(objectives) - set(OBJECTIVES) or len(set(objectives)) < len(
            objectives):
        raise ConfigError(f"objectives={list(objectives)!r}: each must be one of {OBJECTIVES}, "
                          "at most once")
    return tuple(objectives)


def _top_level(g: Group) -> dict[str, Any]:
    d: dict[str, Any] = {f.name: f.default for f in fields(ExperimentSettings)
                         if f.name not in _GROUPS}
    threads = g.integer("cpu_threads", d["cpu_threads"])
    if threads < 0:
        raise ConfigError(f"cpu_threads={threads} is negative; use 0 (automatic) or a count")
    cache_dir = g.text("cache_dir", None, optional=True)
    seed = g.integer("seed", d["seed"], low=0)
    return {"name": g.text("name", d["name"]), "seed": seed,
            "data_seed": g.integer("data_seed", seed, low=0),
            "device": check_device(g.text("device", d["device"])), "cpu_threads": threads,
            "cache_dir": Path(cache_dir).expanduser() if cache_dir else _cache_dir(),
            "objectives": _objectives(g, d["objectives"])}


def parse_config(cfg: Any) -> ExperimentSettings:
    """Check the whole composed config ``cfg`` once and return it typed (one-line errors)."""
    if isinstance(cfg, ExperimentSettings):
        return cfg
    g = Group.of("config", plain(cfg))
    g.check_keys(f.name for f in fields(ExperimentSettings))
    for group in ("model", "data", "platform", "heads"):
        if g.values.get(group) is None:
            raise ConfigError(f"config group {group} is missing; compose conf/config.yaml or "
                              f"set {group}=<a file in conf/{group}/>")
    settings = ExperimentSettings(
        model=ModelSettings.from_mapping(g.values["model"]),
        data=DataSettings.from_mapping(g.values["data"]),
        platform=platform_from_config(g.values["platform"]),
        heads=head_family_from_config(g.values["heads"]),
        space=SpaceSettings.from_mapping(g.values.get("space")),
        search=SearchSettings.from_mapping(g.values.get("search")),
        features=FeatureSettings.from_mapping(g.values.get("features")),
        constraints=ConstraintSpec.from_mapping(g.values.get("constraints")),
        **_top_level(g),
    )
    settings.space.check_platform(settings.platform)
    return settings


def resolve_guarantee(settings: ExperimentSettings, *,
                      n_val: int) -> tuple[ExperimentSettings, str | None]:
    """``settings`` with ``constraints.guarantee.method=auto`` resolved for ``n_val`` val
    samples (:meth:`evaluators.risk.GuaranteeSpec.for_val`), and the note when it does not
    certify. Done once the val split's size is known, before it is cut."""
    c = settings.constraints
    spec, note = c.guarantee.for_val(n_val, max_accuracy_drop=c.max_accuracy_drop)
    return replace(settings, constraints=replace(c, guarantee=spec)), note


def _defaults() -> dict[str, Any]:
    """Every default of :class:`ExperimentSettings` as a plain config (no group option chosen)."""
    top = {f.name: to_config(f.default) for f in fields(ExperimentSettings)
           if f.name not in _GROUPS and f.name != "cache_dir"}
    groups = {
        "model": defaults_of(ModelSettings),
        "data": {k: v for k, v in defaults_of(DataSettings).items() if k != "options"},
        "heads": defaults_of(HeadTraining),
        "space": to_config(SpaceSettings()), "search": to_config(SearchSettings()),
        "features": to_config(FeatureSettings()), "constraints": to_config(ConstraintSpec()),
    }
    return {**top, "cache_dir": f"${{oc.env:{CACHE_DIR_ENV},{CACHE_DIR}}}", **groups}


def register() -> None:
    """Store the defaults in Hydra's ConfigStore (done on import; storing again is harmless)."""
    store = ConfigStore.instance()
    store.store(name="settings_defaults", node=_defaults())
    for loader in LOADERS:
        store.store(group="settings_defaults/data", name=loader,
                    node=defaults_of(loader_options(loader)))


register()
