"""Device profiles measured on this machine, cached, and attached to a platform.

:func:`measure_profile` times every piece of a :class:`ProfileSubject` for the runtimes,
precisions and batches asked (torch eager through :mod:`search.profile._torch`,
onnxruntime through the portable kit's own code, :mod:`search.deploy._profile_kit`).
:func:`host_profile` caches one on disk, keyed by the model's weights hash, candidates,
head family, the entries, repeats, threads and this machine. :func:`price_platform` gives
every profiled device of a platform its table: a file is loaded and checked against the
model (:meth:`DeviceProfile.check`), ``host`` is measured here (cached).
"""

from __future__ import annotations

import json
import os
import platform as _platform
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from evaluators._cache import atomic_write
from evaluators.device_profile import (
    CLOCKS,
    DeviceProfile,
    ProfileError,
    ProfileTable,
    load_profile,
    profile_from_json,
)
from evaluators.hashing import hash_json
from evaluators.platform import Platform
from search.deploy import _profile_kit
from search.profile._subject import ProfileSubject
from search.profile._torch import measure_torch

__all__ = ["ProfileSettings", "host_profile", "measure_profile", "price_platform"]


@dataclass(frozen=True, kw_only=True)
class ProfileSettings:
    """What to measure: ``entries`` of ``runtime/precision`` at each of ``batches``.

    ``repeats`` timed blocks per piece (the median counts, the interquartile range is kept
    as the spread); ``threads`` intra-op threads, pinned for torch and onnxruntime alike.
    """

    entries: tuple[str, ...] = ("torch/fp32",)
    batches: tuple[int, ...] = (1, 256)
    repeats: int = 15
    threads: int = 1
    clock: str = "wall"  # or "cpu": the timing thread's CPU time, not inflated by other load

    def __post_init__(self) -> None:
        if self.clock not in CLOCKS:
            raise ProfileError(f"profile clock={self.clock!r}; use {' or '.join(CLOCKS)}")
        known = ("torch/fp32", "onnxruntime/fp32", "onnxruntime/int8")
        bad = [e for e in self.entries if e not in known]
        if bad or not self.entries:
            raise ProfileError(f"profile entry {bad[0] if bad else '(none)'!r}; use "
                               f"{', '.join(known)}")
        if not self.batches or min(self.batches) < 1 or self.repeats < 1 or self.threads < 1:
            raise ProfileError(f"profile batches={list(self.batches)} repeats={self.repeats} "
                               f"threads={self.threads}: each must be >= 1")


def _onnx_ready() -> None:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise ProfileError("runtime onnxruntime is not installed; pip install onnxruntime or "
                           "profile only torch/fp32") from None


def measure_profile(subject: ProfileSubject, settings: ProfileSettings) -> DeviceProfile:
    """Time every segment, head and call of ``subject`` on this machine."""
    n_heads = len(subject.heads)
    tables = []
    if "torch/fp32" in settings.entries:
        tables += [measure_torch(subject.model, subject.candidates, subject.head_modules,
                                 n_heads, subject.x, batch=b, repeats=settings.repeats,
                                 threads=settings.threads, clock=settings.clock)
                   for b in settings.batches]
    onnx = [e.split("/")[1] for e in settings.entries if e.startswith("onnxruntime/")]
    if onnx:
        _onnx_ready()
        from search.profile.kit import write_kit

        with tempfile.TemporaryDirectory(prefix="eenn-kit-") as tmp:
            kit = write_kit(subject, Path(tmp), int8="int8" in onnx)
            raw = _profile_kit.profile_kit(kit, batches=list(settings.batches), precisions=onnx,
                                           repeats=settings.repeats, threads=settings.threads,
                                           clock=settings.clock)
        tables += list(profile_from_json(raw, source="kit").tables)
    return DeviceProfile(weights_hash=subject.weights_hash, candidates=subject.candidates,
                         heads=subject.heads, head_family=subject.head_family,
                         tables=tuple(tables), machine=_machine(settings.threads))


def _machine(threads: int) -> dict[str, object]:
    return {"host": _platform.node(), "processor": _platform.processor() or _platform.machine(),
            "system": _platform.platform(), "torch": torch.__version__, "threads": threads,
            "cpus": os.cpu_count()}


def host_profile(subject: ProfileSubject, settings: ProfileSettings, *,
                 cache_dir: Path) -> DeviceProfile:
    """:func:`measure_profile` on this machine, read from ``cache_dir`` when measured before."""
    key = hash_json({"weights": subject.weights_hash, "candidates": subject.candidates,
                     "heads": subject.heads, "family": subject.head_family,
                     "settings": vars(settings), "host": _platform.node(),
                     "cpu": _platform.processor(), "torch": torch.__version__})[:24]
    path = Path(cache_dir) / "device_profiles" / f"{key}.json"
    if path.is_file():
        try:
            return load_profile(path)
        except ProfileError:
            path.unlink(missing_ok=True)  # damaged: measure again
    profile = measure_profile(subject, settings)
    text = json.dumps(profile.as_json(), indent=1)
    atomic_write(path, lambda tmp: tmp.write_text(text))
    return load_profile(path)


def price_platform(platform: Platform, subject: ProfileSubject, *, cache_dir: Path,
                   settings: ProfileSettings | None = None) -> Platform:
    """``platform`` with every profiled device's table attached (others unchanged)."""
    if all(d.profile is None for d in platform.devices):
        return platform
    tables: list[ProfileTable | None] = []
    for device in platform.devices:
        ref = device.profile
        if ref is None:
            tables.append(None)
            continue
        if ref.is_host:
            want = settings or ProfileSettings()
            entry = f"{ref.runtime}/{ref.precision}"
            profile = host_profile(subject, ProfileSettings(
                entries=(entry,), batches=(ref.batch,), repeats=want.repeats,
                threads=want.threads, clock=want.clock), cache_dir=cache_dir)
        else:
            profile = load_profile(ref.file)
            profile.check(weights_hash=subject.weights_hash, candidates=subject.candidates,
                          heads=subject.heads, head_family=subject.head_family)
        tables.append(profile.table(ref.runtime, ref.precision, ref.batch))
    return platform.with_tables(tables)
