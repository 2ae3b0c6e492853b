"""Backbone profiles cached on disk, so a run on a warm cache does not trace the model again.

Tracing and counting operations (:func:`spaces.profile.profile_backbone`) costs seconds
and imports much of torch's compiler stack; a warm run needs none of it. A profile
depends on the architecture, the sample's shape and the candidate options: the key holds
the weights hash (it covers every parameter's name and shape, so it stands for the
architecture; a changed weight only costs a new entry), the shape, the options and a
version of the profiling rules. Entries are checksummed like every cache entry
(:mod:`evaluators._cache`); a damaged one is rebuilt.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from evaluators._cache import commit_entry, ensure_writable, read_entry, reset_entry
from evaluators.hashing import hash_json
from spaces.candidates import ExitCandidate
from spaces.profile import BackboneProfile, profile_backbone

__all__ = ["cached_profile"]

_RULES_VERSION = 1  # raise when profile_backbone's rules change what it returns
_FILE = "profile.json"


def cached_profile(model: nn.Module, example_input: torch.Tensor, *, cache_dir: Path,
                   weights_hash: str, options: Mapping[str, Any]) -> BackboneProfile:
    """:func:`profile_backbone` of ``model``, read from ``cache_dir`` when it was made before."""
    key = hash_json({"rules": _RULES_VERSION, "weights": weights_hash,
                     "input": list(example_input.shape[1:]), "options": dict(options)})
    path = Path(cache_dir) / "profiles" / key[:20]
    if read_entry(path) is not None:
        return _from_json(json.loads((path / _FILE).read_text()))
    profile = profile_backbone(model, example_input, **options)
    ensure_writable(path.parent)
    reset_entry(path)
    (path / f"{_FILE}.part").write_text(json.dumps(dataclasses.asdict(profile)))
    commit_entry(path, [_FILE], {"key": key})
    return profile


def _from_json(d: Mapping[str, Any]) -> BackboneProfile:
    candidates = tuple(ExitCandidate(**{**c, "shape": tuple(c["shape"])})
                       for c in d["candidates"])
    return BackboneProfile(**{**d, "candidates": candidates,
                              "input_shape": tuple(d["input_shape"])})
