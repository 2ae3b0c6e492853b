"""Content hashes that key every cache entry (features, heads, prediction tables).

A key is the SHA-256 of what the entry depends on, so a changed weight, data
split, candidate or pooling size gives a new entry instead of a stale one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["hash_file", "hash_json", "hash_state_dict", "hash_tensors"]

_CHUNK = 16 * 1024 * 1024


def hash_json(obj: Any) -> str:
    """SHA-256 (hex) of ``obj`` as canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def hash_tensors(named: Iterable[tuple[str, Any]], *, salt: str = "") -> str:
    """SHA-256 (hex) of named tensors or arrays: each name, dtype, shape and byte, in order.

    ``salt`` is hashed first (e.g. a dataset name and scalar settings next to the arrays).
    """
    digest = hashlib.sha256(salt.encode())
    for name, value in named:
        t = torch.as_tensor(value).detach().to("cpu").contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        if t.numel():
            digest.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return digest.hexdigest()


def hash_state_dict(model: nn.Module) -> str:
    """SHA-256 (hex) of a module's state dict: every name, dtype, shape and byte.

    Buffers (e.g. BatchNorm running statistics) count, since they change outputs. This is
    the backbone's ``weights_hash`` in ``summary.json``, which ``search.evaluate`` compares
    against the checkpoint it loads, so its byte layout stays fixed.
    """
    return hash_tensors(model.state_dict().items())


def hash_file(path: Path) -> str:
    """SHA-256 (hex) of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
