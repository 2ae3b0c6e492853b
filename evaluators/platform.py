"""Hardware description: a chain of devices joined by links.

A platform is an ordered chain (e.g. sensor MCU -> edge gateway -> fog GPU).
Data only flows forward along it. Every figure is a plain SI value so the
cost model never guesses units: MAC/s, J/MAC, W, bytes, bit/s, s, J/byte.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from evaluators.device_profile import PRECISIONS, RUNTIMES, ProfileRef, ProfileTable

__all__ = ["Device", "Link", "Platform", "PlatformError", "platform_from_config"]


class PlatformError(ValueError):
    """A platform description with a missing, negative or inconsistent figure."""


@dataclass(frozen=True, kw_only=True)
class Device:
    """One compute tier: throughput, energy per MAC, static power and memory.

    A device that names a ``profile`` (:class:`ProfileRef`) is priced from measured times
    instead of ``macs_per_second``: its latency comes from the profile's table (``measured``,
    filled in once the model is known, see :func:`with_measured`) and its energy is
    ``active_power_w`` times that time (no power meter: an estimate). ``macs_per_second`` may
    stand beside a profile for reference; it then prices nothing.
    """

    name: str
    macs_per_second: float
    energy_per_mac_j: float
    static_power_w: float
    ram_bytes: int
    flash_bytes: int
    activation_bits: int = 32
    profile: ProfileRef | None = None
    active_power_w: float | None = None
    measured: ProfileTable | None = None

    @property
    def activation_bytes_per_element(self) -> int:
        """Bytes per activation element at the device's supported bit-width."""
        return max(1, self.activation_bits // 8)

    def with_measured(self, table: ProfileTable) -> Device:
        """This device priced from ``table`` (the entry its profile reference names)."""
        return replace(self, measured=table)

    def as_config(self) -> dict[str, Any]:
        """The device as the platform config would write it (reads back to an equal device)."""
        keys = ["name", "macs_per_second", "energy_per_mac_j", "static_power_w", "ram_bytes",
                "flash_bytes", "activation_bits"]
        if self.profile is None:
            return {k: getattr(self, k) for k in keys}
        out: dict[str, Any] = {"name": self.name, "profile": vars(self.profile),
                               "active_power_w": self.active_power_w}
        if math.isfinite(self.macs_per_second):
            out["macs_per_second"] = self.macs_per_second
        return {**out, **{k: getattr(self, k) for k in keys[4:]}}

    def summary(self) -> dict[str, Any]:
        """The device as plain values for summary.json (says how it is priced)."""
        out: dict[str, Any] = {k: getattr(self, k) for k in (
            "name", "macs_per_second", "energy_per_mac_j", "static_power_w", "ram_bytes",
            "flash_bytes", "activation_bits")}
        if self.profile is None:
            out["priced_by"] = "analytic: macs / macs_per_second"
            return out
        out.update({"profile": vars(self.profile), "active_power_w": self.active_power_w,
                    "priced_by": "measured profile (segments, heads with pooling and decision, "
                                 "per-call overhead)",
                    "energy": "active_power_w x measured time (no power meter; an estimate)"})
        if self.measured is not None:
            out["profile_threads"] = self.measured.threads
        return out


@dataclass(frozen=True, kw_only=True)
class Link:
    """A connection between two consecutive devices of the chain."""

    name: str
    bandwidth_bits_per_s: float
    latency_s: float
    energy_per_byte_j: float


@dataclass(frozen=True, kw_only=True)
class Platform:
    """Devices in chain order and the ``len(devices) - 1`` links between them."""

    name: str
    devices: tuple[Device, ...]
    links: tuple[Link, ...]

    def __post_init__(self) -> None:
        if not self.devices:
            raise PlatformError(f"platform {self.name!r} has no devices; list at least one")
        if len(self.links) != len(self.devices) - 1:
            raise PlatformError(
                f"platform {self.name!r} has {len(self.devices)} devices and "
                f"{len(self.links)} links; a chain needs exactly {len(self.devices) - 1}"
            )

    @property
    def n_devices(self) -> int:
        return len(self.devices)

    def with_tables(self, tables: Sequence[ProfileTable | None]) -> Platform:
        """This platform with every profiled device priced from its measured table."""
        devices = tuple(d if t is None else d.with_measured(t)
                        for d, t in zip(self.devices, tables, strict=True))
        return replace(self, devices=devices)

    def check_priced(self) -> None:
        """A profiled device whose table was never loaded cannot price anything."""
        for d in self.devices:
            if d.profile is not None and d.measured is None:
                raise PlatformError(f"device {d.name!r} names profile {d.profile.file!r} but no "
                                    "table was loaded for it; prepare the run (search.pipeline."
                                    "prepare) before pricing paths")


_DEVICE_FIELDS: dict[str, type] = {
    "macs_per_second": float,
    "energy_per_mac_j": float,
    "static_power_w": float,
    "ram_bytes": int,
    "flash_bytes": int,
}
_LINK_FIELDS: dict[str, type] = {
    "bandwidth_bits_per_s": float,
    "latency_s": float,
    "energy_per_byte_j": float,
}
_STRICTLY_POSITIVE = {"macs_per_second", "bandwidth_bits_per_s", "ram_bytes", "flash_bytes"}


def _figures(entry: Mapping[str, Any], fields: Mapping[str, type], *, where: str) -> dict[str, Any]:
    """Read and check the numeric figures of one device or link entry."""
    values: dict[str, Any] = {}
    for key, kind in fields.items():
        if key not in entry or entry[key] is None:
            raise PlatformError(f"{where} is missing {key!r}; add it to the platform config")
        raw = entry[key]
        try:
            value: float = float(raw)
        except (TypeError, ValueError):
            raise PlatformError(f"{where}.{key}={raw!r} is not a number") from None
        if math.isnan(value):
            raise PlatformError(f"{where}.{key}={raw!r} is not a number")
        if not math.isfinite(value) or value < 0 or (key in _STRICTLY_POSITIVE and value == 0):
            bound = "> 0" if key in _STRICTLY_POSITIVE else ">= 0"
            raise PlatformError(f"{where}.{key}={raw!r} must be a finite number {bound}")
        if kind is int:
            value = int(value)
        values[key] = value
    return values


def _entry(entry: Any, fields: Mapping[str, type], *, where: str) -> Mapping[str, Any]:
    """One device or link mapping, its keys checked."""
    if not isinstance(entry, Mapping):
        raise PlatformError(f"{where}={entry!r} is not a mapping of its figures")
    device_only = ["activation_bits", "profile", "active_power_w"]
    known = ["name", *fields, *(device_only if "ram_bytes" in fields else [])]
    unknown = sorted(set(entry) - set(known))
    if unknown:
        raise PlatformError(f"{where} has unknown key {unknown[0]!r}; use {', '.join(known)}")
    return entry


def _where(name: str, kind: str, raw: Any, i: int) -> str:
    label = raw.get("name", i) if isinstance(raw, Mapping) else i
    return f"platform {name!r} {kind} {label!r}"


def _entries(cfg: Mapping[str, Any], key: str, name: str) -> Sequence[Any]:
    raw = cfg.get(key) or []
    if isinstance(raw, (str, Mapping)) or not isinstance(raw, Sequence):
        raise PlatformError(f"platform {name!r} {key}={raw!r} is not a list")
    return raw


def platform_from_config(cfg: Mapping[str, Any]) -> Platform:
    """Build a checked :class:`Platform` from the ``platform`` config group (once, at the entry
    point).

    Expected keys: ``name``, ``devices`` (list of mappings with ``name`` and the
    :class:`Device` figures) and ``links`` (list of mappings with the
    :class:`Link` figures), one link fewer than devices.
    """
    if not isinstance(cfg, Mapping):
        raise PlatformError(f"platform={cfg!r} is not a mapping with name, devices and links")
    unknown = sorted(set(cfg) - {"name", "devices", "links"})
    if unknown:
        raise PlatformError(f"unknown platform key {unknown[0]!r}; use name, devices, links")
    name = str(cfg.get("name", "platform"))
    devices = []
    for i, raw in enumerate(_entries(cfg, "devices", name)):
        where = _where(name, "device", raw, i)
        entry = _entry(raw, _DEVICE_FIELDS, where=where)
        bits = entry.get("activation_bits")  # absent: Device's default
        if bits is not None and (bits not in (8, 16, 32) or isinstance(bits, bool)):
            raise PlatformError(f"{where}.activation_bits={bits!r} must be 8, 16 or 32")
        figures: dict[str, Any] = (_profiled(entry, where=where)
                                   if entry.get("profile") is not None
                                   else _figures(entry, _DEVICE_FIELDS, where=where))
        if bits is not None:
            figures["activation_bits"] = int(bits)
        devices.append(Device(name=str(entry.get("name", f"device{i}")), **figures))
    links = []
    for i, raw in enumerate(_entries(cfg, "links", name)):
        where = _where(name, "link", raw, i)
        entry = _entry(raw, _LINK_FIELDS, where=where)
        links.append(
            Link(
                name=str(entry.get("name", f"link{i}")),
                **_figures(entry, _LINK_FIELDS, where=where),
            )
        )
    return Platform(name=name, devices=tuple(devices), links=tuple(links))


def _profile_ref(raw: Any, *, where: str) -> ProfileRef:
    """``profile: FILE`` or ``profile: {file, runtime, precision, batch}``."""
    if isinstance(raw, str):
        raw = {"file": raw}
    if not isinstance(raw, Mapping) or not raw.get("file"):
        raise PlatformError(f"{where}.profile={raw!r}; write profile: <file> (or host) or "
                            "profile: {file: <file>, runtime: torch, precision: fp32, batch: 1}")
    unknown = sorted(set(raw) - {"file", "runtime", "precision", "batch"})
    if unknown:
        raise PlatformError(f"{where}.profile has unknown key {unknown[0]!r}; use file, runtime, "
                            "precision, batch")
    ref = ProfileRef(file=str(raw["file"]), runtime=str(raw.get("runtime", "torch")),
                     precision=str(raw.get("precision", "fp32")), batch=raw.get("batch", 1))
    if ref.runtime not in RUNTIMES:
        raise PlatformError(f"{where}.profile.runtime={ref.runtime!r}; use one of "
                            f"{', '.join(RUNTIMES)}")
    if ref.precision not in PRECISIONS or (ref.runtime == "torch" and ref.precision != "fp32"):
        raise PlatformError(f"{where}.profile.precision={ref.precision!r}; use fp32 (torch) or "
                            "fp32/int8 (onnxruntime)")
    if isinstance(ref.batch, bool) or not isinstance(ref.batch, int) or ref.batch < 1:
        raise PlatformError(f"{where}.profile.batch={ref.batch!r} must be an integer >= 1")
    return ref


def _profiled(entry: Mapping[str, Any], *, where: str) -> dict[str, Any]:
    """The figures of a device priced from a profile: energy = active_power_w x time."""
    ref = _profile_ref(entry["profile"], where=where)
    for key in ("energy_per_mac_j", "static_power_w"):
        if entry.get(key) is not None:
            raise PlatformError(f"{where} names both a profile and {key}; a profiled device's "
                                f"energy is active_power_w x measured time, drop {key}")
    need = {k: v for k, v in _DEVICE_FIELDS.items() if k in ("ram_bytes", "flash_bytes")}
    power = {"active_power_w": float}
    figures = {**_figures(entry, need, where=where), **_figures(entry, power, where=where)}
    rate = (_figures(entry, {"macs_per_second": float}, where=where)["macs_per_second"]
            if entry.get("macs_per_second") is not None else math.nan)
    return {**figures, "macs_per_second": rate, "energy_per_mac_j": 0.0,  # priced by time
            "static_power_w": figures["active_power_w"], "profile": ref}
