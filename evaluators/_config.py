"""Reading one config group into typed values, with one-line errors that name key, value and fix.

Every settings parser (``evaluators/settings.py``, ``spaces/settings.py``,
``search/settings.py``) reads its group through :class:`Group`, so a bad value reads the same
everywhere: ``<group>.<key>=<value> is not an integer; set <group>.<key>=<integer>``.
:func:`to_config` turns settings back into the plain mapping a YAML file holds.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import OmegaConf

__all__ = ["REQUIRED", "ConfigError", "Group", "defaults_of", "plain", "strict_int",
           "strict_str", "to_config"]

T = TypeVar("T")


def plain(cfg: Any) -> Any:
    """A resolved plain-Python copy of a config node (OmegaConf); plain values pass through."""
    if OmegaConf.is_config(cfg):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


class ConfigError(ValueError):
    """A config value of the wrong type or outside its range; the message names the fix."""


class _Required(Enum):
    REQUIRED = "required"


REQUIRED = _Required.REQUIRED  # a key without a default: absent (or null) is an error


@dataclass(frozen=True)
class Group:
    """The mapping of one config group (``where`` is its dotted name, e.g. ``search``)."""

    where: str
    values: Mapping[str, Any]
    error: type[Exception] = ConfigError

    @classmethod
    def of(cls, where: str, values: Any, *, error: type[Exception] = ConfigError) -> Group:
        """``values`` as a group: ``None`` is empty, anything but a mapping an error."""
        values = plain(values)
        if values is None:
            return cls(where, {}, error)
        if not isinstance(values, Mapping):
            raise error(f"{where}={values!r} must be a mapping of keys to values")
        return cls(where, {str(k): v for k, v in values.items()}, error)

    def sub(self, key: str) -> Group:
        """The nested group ``where.key`` (absent or null: empty)."""
        return Group.of(f"{self.where}.{key}", self.values.get(key), error=self.error)

    def check_keys(self, known: Iterable[str]) -> None:
        """An unknown key is an error naming it and the keys that exist."""
        names = list(known)
        unknown = sorted(set(self.values) - set(names))
        if unknown:
            raise self.error(f"unknown {self.where} key {unknown[0]!r}; use {', '.join(names)}")

    def _raw(self, key: str, default: Any) -> Any:
        raw = self.values.get(key, default)
        if raw is REQUIRED or (raw is None and default is REQUIRED):
            raise self.error(f"{self.where}.{key} is not set; add {self.where}.{key}=<value>")
        return raw

    def _fail(self, key: str, raw: Any, what: str) -> Exception:
        return self.error(f"{self.where}.{key}={raw!r} {what}")

    def integer(self, key: str, default: Any = REQUIRED, *, low: int | None = None,
                high: int | None = None, optional: bool = False) -> Any:
        """An int (``True``/``2.5``/``"3"`` are errors) in ``[low, high]``; ``None`` if optional."""
        raw = self._raw(key, default)
        if raw is None and optional:
            return None
        if isinstance(raw, float) and raw.is_integer():
            raw = int(raw)
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise self._fail(key, raw, f"is not an integer; set {self.where}.{key}=<integer>")
        self._check_range(key, raw, low=low, high=high)
        return int(raw)

    def number(self, key: str, default: Any = REQUIRED, *, low: float | None = None,
               high: float | None = None, above: float | None = None,
               below: float | None = None, optional: bool = False) -> Any:
        """A finite float in ``[low, high]`` (``above``/``below``: strict bounds); ``None`` if
        optional."""
        raw = self._raw(key, default)
        if raw is None and optional:
            return None
        if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw):
            raise self._fail(key, raw, f"is not a finite number; set {self.where}.{key}=<number>")
        self._check_range(key, raw, low=low, high=high, above=above, below=below)
        return float(raw)

    def _check_range(self, key: str, value: float, *, low: float | None = None,
                     high: float | None = None, above: float | None = None,
                     below: float | None = None) -> None:
        """One message for every bound: ``must be in [0.0, 1.0)``, ``must be >= 1``, ..."""
        ok = ((low is None or value >= low) and (high is None or value <= high)
              and (above is None or value > above) and (below is None or value < below))
        if ok:
            return
        left = f"[{low}" if low is not None else f"({above}" if above is not None else ""
        right = f"{high}]" if high is not None else f"{below})" if below is not None else ""
        if left and right:
            raise self._fail(key, value, f"must be in {left}, {right}")
        if left:
            raise self._fail(key, value, f"must be {'>=' if low is not None else '>'} {left[1:]}")
        raise self._fail(key, value, f"must be {'<=' if high is not None else '<'} {right[:-1]}")

    def flag(self, key: str, default: Any = REQUIRED) -> bool:
        """``true`` or ``false`` (a string or a number is an error)."""
        raw = self._raw(key, default)
        if not isinstance(raw, bool):
            raise self._fail(key, raw, f"is not true or false; set {self.where}.{key}=true|false")
        return raw

    def text(self, key: str, default: Any = REQUIRED, *, choices: Sequence[str] | None = None,
             optional: bool = False) -> Any:
        """A string (numbers are taken as written), one of ``choices`` when given."""
        raw = self._raw(key, default)
        if raw is None and optional:
            return None
        if isinstance(raw, (Mapping, list, tuple, bool)):
            raise self._fail(key, raw, f"is not a string; set {self.where}.{key}=<text>")
        value = str(raw)
        if choices is not None and value not in choices:
            raise self._fail(key, raw, f"is not one of {', '.join(choices)}")
        return value

    def items(self, key: str, default: Any = REQUIRED, *, item: Callable[[Any], T],
              optional: bool = False, what: str = "a list") -> Any:
        """A list read element-wise by ``item`` (raising ValueError/TypeError on a bad one); null
        is empty, or ``None`` when ``optional``."""
        raw = self._raw(key, default)
        if raw is None:
            return None if optional else ()
        if isinstance(raw, (str, bytes, Mapping)) or not isinstance(raw, Iterable):
            raise self._fail(key, raw, f"is not {what}; set {self.where}.{key}=[...]")
        try:
            return tuple(item(x) for x in raw)
        except (TypeError, ValueError):
            raise self._fail(key, list(raw), f"is not {what}; set {self.where}.{key}=[...]") \
                from None

    def mapping(self, key: str, default: Any = REQUIRED) -> dict[str, Any]:
        """A free-form mapping (validated by whoever consumes it)."""
        raw = self._raw(key, default)
        if raw is None:
            return {}
        if not isinstance(raw, Mapping):
            raise self._fail(key, raw, f"must be a mapping; set {self.where}.{key}.<name>=<value>")
        return {str(k): v for k, v in raw.items()}


def strict_int(value: Any) -> int:
    """``value`` if it is an int (not a bool, not a string), for :meth:`Group.items`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(value)
    return value


def strict_str(value: Any) -> str:
    """``value`` if it is a string (YAML's bare yes/no are booleans), for :meth:`Group.items`."""
    if not isinstance(value, str):
        raise TypeError(value)
    return value


def to_config(value: Any) -> Any:
    """Settings as the plain mapping of a YAML file (a dataclass may define ``as_config``)."""
    as_config = getattr(value, "as_config", None)
    if callable(as_config) and dataclasses.is_dataclass(value):
        return as_config()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_config(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): to_config(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_config(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def defaults_of(cls: type) -> dict[str, Any]:
    """The fields of dataclass ``cls`` that have a default, as plain config values."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = to_config(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = to_config(f.default_factory())
    return out
