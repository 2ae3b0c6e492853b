"""Typed settings of the ``data`` group: the keys every dataset has, plus its loader's options.

``conf/data/<name>.yaml`` is flat (``data.root``, ``data.window``, ...); here the keys every
loader shares are fields of :class:`DataSettings` and the rest are the loader's own
:class:`LoaderOptions` subclass (``Options`` next to each loader, with their defaults), read
by the same parse. ``data.dataset`` of the generic loader is free-form: it is whatever the
``_target_`` callable takes, checked when it is instantiated.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from evaluators._config import Group, to_config
from evaluators.data._pool import DataError
from evaluators.data._splits import SPLITS

__all__ = ["LOADERS", "DataSettings", "LoaderOptions", "SplitSizes", "loader_options"]

# loader name -> (load function, options class), both "module:attribute", imported when used
LOADERS: dict[str, tuple[str, str]] = {
    "mnist5k": ("evaluators.data._mnist5k:load", "evaluators.data.settings:LoaderOptions"),
    "cifar10": ("evaluators.data._cifar10:load", "evaluators.data.settings:LoaderOptions"),
    "speech_commands": ("evaluators.data._speech_commands:load",
                        "evaluators.data._speech_commands:SpeechCommandsOptions"),
    "mitbih": ("evaluators.data._mitbih:load", "evaluators.data._mitbih:MitbihOptions"),
    "generic": ("evaluators.data._custom:load_generic", "evaluators.data._custom:GenericOptions"),
    "npz": ("evaluators.data._custom:load_npz", "evaluators.data._custom:NpzOptions"),
}
_NEEDS_ROOT = ("cifar10", "speech_commands", "mitbih")


def _attribute(spec: str) -> Any:
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True, kw_only=True)
class LoaderOptions:
    """A loader's own keys of ``data`` (none for mnist5k and cifar10); subclasses add fields."""

    @classmethod
    def from_group(cls, g: Group) -> LoaderOptions:
        """Read this loader's keys from ``g`` (the keys were checked against the fields)."""
        del g
        return cls()


def loader_options(loader: str) -> type[LoaderOptions]:
    """The options class of ``loader`` (a one-line error names the known loaders)."""
    if loader not in LOADERS:
        raise DataError(f"unknown data.loader={loader!r}; use one of {', '.join(sorted(LOADERS))}")
    options: type[LoaderOptions] = _attribute(LOADERS[loader][1])
    return options


@dataclass(frozen=True, kw_only=True)
class SplitSizes:
    """``data.splits``: samples drawn for train, val and test (``None``: all that remain)."""

    train: int | None = None
    val: int | None = None
    test: int | None = None

    def as_mapping(self) -> dict[str, int | None]:
        return {s: getattr(self, s) for s in SPLITS}

    @classmethod
    def from_group(cls, g: Group) -> SplitSizes:
        unknown = set(g.values) - set(SPLITS)
        if unknown:
            raise DataError(f"data.splits has unknown keys {sorted(unknown)}; use train, val and "
                            "test")
        return cls(**{s: g.integer(s, None, optional=True) for s in SPLITS})


_COMMON = ("name", "loader", "root", "download", "num_classes", "splits")


@dataclass(frozen=True, kw_only=True)
class DataSettings:
    """``data``: which dataset, where it is, how it is split, and its loader's options."""

    name: str
    loader: str
    root: Path | None = None  # the folder the dataset is in (file-based loaders)
    download: bool = False  # fetch it into root when it is not there (needs network)
    num_classes: int | None = None  # None: what the data says; otherwise checked against it
    splits: SplitSizes = SplitSizes()
    options: LoaderOptions = LoaderOptions()

    def folder(self) -> Path:
        """``root``, which file-based loaders need (a one-line error when it is unset)."""
        if self.root is None:
            raise DataError(f"data.root is not set for data.loader={self.loader}; set "
                            "data.root=<the folder that holds the dataset>")
        return self.root

    def as_config(self) -> dict[str, Any]:
        """The flat ``conf/data`` layout: common keys with the loader's options among them."""
        common = {k: to_config(getattr(self, k)) for k in _COMMON if k != "splits"}
        return {**common, **to_config(self.options), "splits": to_config(self.splits)}

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any] | None) -> DataSettings:
        g = Group.of("data", cfg, error=DataError)
        loader = g.text("loader", None, optional=True) or g.text("name", None, optional=True)
        if not loader:
            raise DataError(f"data.loader is not set; use one of {', '.join(sorted(LOADERS))}")
        options = loader_options(loader)
        g.check_keys([*_COMMON, *(f.name for f in fields(options))])
        root = g.text("root", None, optional=True)
        settings = cls(
            name=g.text("name", loader), loader=loader,
            root=Path(root).expanduser() if root else None,
            download=g.flag("download", False),
            num_classes=g.integer("num_classes", None, low=1, optional=True),
            splits=SplitSizes.from_group(g.sub("splits")),
            options=options.from_group(g),
        )
        if loader in _NEEDS_ROOT:
            settings.folder()
        return settings
