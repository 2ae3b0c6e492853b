"""The exit-head family: small classifiers on a candidate's pooled activation.

Every head takes the RAW candidate activation and starts with
:func:`evaluators.features.pool_features`, so the runtime needs nothing else;
training feeds it cached pooled features, on which that pooling is the
identity. Members (``C`` channels and ``S`` positions after pooling, ``K``
classes, ``w`` the width):

* ``linear``: global average pool + FC (``C*K`` MACs); ``flatten: true`` uses
  the whole pooled map instead (``C*S*K`` MACs);
* ``mlp``: flattened pooled map + FC(w) + ReLU + FC(K) (``C*S*w + w*K``);
* ``conv``: 1x1 conv(w) on the pooled map + ReLU + global average pool +
  FC(K) (``S*C*w + w*K``).

Costs are those of the head module on the raw activation; like the backbone
counts (:func:`evaluators.macs.count_macs`), pooling and averaging add no MACs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import Tensor, nn

from evaluators._config import Group
from evaluators.features import pool_features, pooled_shape

torch.fx.wrap("pool_features")  # a leaf in fx traces of a head (its shape test is not traceable)

__all__ = [
    "HEAD_KINDS",
    "ExitHead",
    "HeadFamily",
    "HeadSpec",
    "HeadTraining",
    "build_head",
    "head_cost",
    "head_costs",
    "head_family_from_config",
]

HEAD_KINDS: tuple[str, ...] = ("linear", "mlp", "conv")


@dataclass(frozen=True, kw_only=True)
class HeadSpec:
    """One member of the family: a name, a kind and its width (mlp, conv)."""

    name: str
    kind: str
    width: int = 0
    flatten: bool = False

    def __post_init__(self) -> None:
        if self.kind not in HEAD_KINDS:
            raise ValueError(f"head {self.name!r}: kind={self.kind!r} is not one of {HEAD_KINDS}")
        if self.kind != "linear" and self.width < 1:
            raise ValueError(
                f"head {self.name!r}: kind={self.kind} needs width >= 1, got width={self.width}"
            )


@dataclass(frozen=True, kw_only=True)
class HeadTraining:
    """How every head is trained (batched, early-stopped on a held-out part of train)."""

    epochs: int = 8
    lr: float = 1e-2
    batch_size: int = 256
    patience: int = 3
    holdout_fraction: float = 0.1
    weight_decay: float = 1e-4
    amp: bool = True  # bf16 autocast in training where the CPU/GPU has native bf16; heads stay fp32


@dataclass(frozen=True, kw_only=True)
class HeadFamily:
    """The head members and their training recipe (``conf/heads/*.yaml``)."""

    members: tuple[HeadSpec, ...]
    training: HeadTraining = HeadTraining()

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.members)

    def as_config(self) -> dict[str, Any]:
        """The flat ``conf/heads`` layout: ``members`` next to the training keys."""
        members = [{"name": m.name, "kind": m.kind, **({"width": m.width} if m.width else {}),
                    **({"flatten": True} if m.flatten else {})} for m in self.members]
        return {"members": members, **asdict(self.training)}


def _member(i: int, raw: Any) -> HeadSpec:
    if not isinstance(raw, Mapping):
        raise ValueError(f"heads.members[{i}]={raw!r} is not a mapping; write "
                         "{name: mlp64, kind: mlp, width: 64}")
    unknown = set(raw) - {"name", "kind", "width", "flatten"}
    if unknown:
        raise ValueError(
            f"heads.members[{i}] has unknown keys {sorted(unknown)}; use name, kind, width, flatten"
        )
    g = Group.of(f"heads.members[{i}]", raw)
    return HeadSpec(name=g.text("name", f"head{i}"), kind=g.text("kind", None, optional=True),
                    width=g.integer("width", 0, optional=True) or 0,
                    flatten=g.flag("flatten", False))


def head_family_from_config(cfg: Mapping[str, Any]) -> HeadFamily:
    """Build and check a :class:`HeadFamily` from the ``heads`` config group (read once, at the
    entry point; training keys absent from ``cfg`` take :class:`HeadTraining`'s defaults)."""
    g = Group.of("heads", cfg)
    g.check_keys(["members", *(f.name for f in fields(HeadTraining))])
    raw_members = g.values.get("members") or []
    if not isinstance(raw_members, (list, tuple)):
        raise ValueError(f"heads.members={raw_members!r} is not a list of heads")
    members = [_member(i, raw) for i, raw in enumerate(raw_members)]
    if not members:
        raise ValueError(
            "heads.members is empty; list at least one head, e.g. {name: linear, kind: linear}"
        )
    names = [m.name for m in members]
    if len(set(names)) != len(names):
        raise ValueError(f"heads.members names must be unique, got {names}")
    d = HeadTraining()
    training = HeadTraining(
        epochs=g.integer("epochs", d.epochs, low=1, high=10_000),
        lr=g.number("lr", d.lr, low=1e-8, high=10.0),
        batch_size=g.integer("batch_size", d.batch_size, low=1, high=1 << 20),
        patience=g.integer("patience", d.patience, low=1, high=10_000),
        holdout_fraction=g.number("holdout_fraction", d.holdout_fraction, low=0.01, high=0.5),
        weight_decay=g.number("weight_decay", d.weight_decay, low=0.0, high=1.0),
        amp=g.flag("amp", d.amp),
    )
    return HeadFamily(members=tuple(members), training=training)


def _geometry(feature_shape: Sequence[int], pool: int) -> tuple[int, int]:
    """(channels, positions) of the pooled activation of ``feature_shape`` (no batch)."""
    pooled = pooled_shape(feature_shape, pool)
    return pooled[0], math.prod(pooled[1:])


class ExitHead(nn.Module):
    """Base of the head modules: pools the raw activation to ``(B, C, S)``."""

    def __init__(self, spec: HeadSpec, *, feature_shape: Sequence[int], pool: int) -> None:
        super().__init__()
        self.spec = spec
        self.pool = pool
        self.channels, self.positions = _geometry(feature_shape, pool)

    def pooled(self, x: Tensor) -> Tensor:
        return pool_features(x, self.pool).reshape(x.shape[0], self.channels, self.positions)

    def absorb_normalization(self, mean: Tensor, std: Tensor) -> None:
        """Make a head trained on ``(x - mean) / std`` (per channel) take ``x`` itself.

        The affine map is folded into the first layer, so the deployed head has
        the same MACs and parameters as an unnormalised one.
        """
        raise NotImplementedError


def _fold(weight: Tensor, bias: Tensor, mean: Tensor, std: Tensor) -> None:
    """In place: ``W x^ + b`` with ``x^ = (x - mean) / std`` becomes ``W' x + b'``."""
    with torch.no_grad():
        weight.div_(std.to(weight.dtype))
        bias.sub_(weight @ mean.to(weight.dtype))


class _LinearHead(ExitHead):
    def __init__(
        self, spec: HeadSpec, *, feature_shape: Sequence[int], pool: int, num_classes: int
    ) -> None:
        super().__init__(spec, feature_shape=feature_shape, pool=pool)
        width = self.channels * self.positions if spec.flatten else self.channels
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        z = self.pooled(x)
        out: Tensor = self.fc(z.flatten(1) if self.spec.flatten else z.mean(dim=2))
        return out

    def absorb_normalization(self, mean: Tensor, std: Tensor) -> None:
        if self.spec.flatten:
            mean, std = (
                mean.repeat_interleave(self.positions),
                std.repeat_interleave(self.positions),
            )
        _fold(self.fc.weight, self.fc.bias, mean, std)


class _MLPHead(ExitHead):
    def __init__(
        self, spec: HeadSpec, *, feature_shape: Sequence[int], pool: int, num_classes: int
    ) -> None:
        super().__init__(spec, feature_shape=feature_shape, pool=pool)
        self.fc1 = nn.Linear(self.channels * self.positions, spec.width)
        self.fc2 = nn.Linear(spec.width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.fc2(F.relu(self.fc1(self.pooled(x).flatten(1))))
        return out

    def absorb_normalization(self, mean: Tensor, std: Tensor) -> None:
        p = self.positions
        _fold(self.fc1.weight, self.fc1.bias, mean.repeat_interleave(p), std.repeat_interleave(p))


class _ConvHead(ExitHead):
    def __init__(
        self, spec: HeadSpec, *, feature_shape: Sequence[int], pool: int, num_classes: int
    ) -> None:
        super().__init__(spec, feature_shape=feature_shape, pool=pool)
        # a 1x1 convolution is the same linear map at every position; nn.Linear on
        # (B, S, C) computes it with one matrix product (faster than Conv1d on CPU)
        self.conv = nn.Linear(self.channels, spec.width)
        self.fc = nn.Linear(spec.width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.fc(F.relu(self.conv(self.pooled(x).transpose(1, 2))).mean(dim=1))
        return out

    def absorb_normalization(self, mean: Tensor, std: Tensor) -> None:
        _fold(self.conv.weight, self.conv.bias, mean, std)


_CLASSES: dict[str, type[ExitHead]] = {"linear": _LinearHead, "mlp": _MLPHead, "conv": _ConvHead}


def build_head(
    spec: HeadSpec, *, feature_shape: Sequence[int], pool: int, num_classes: int
) -> ExitHead:
    """The head ``spec`` for a candidate whose raw activation has ``feature_shape`` (no batch)."""
    cls: Any = _CLASSES[spec.kind]
    head: ExitHead = cls(spec, feature_shape=feature_shape, pool=pool, num_classes=num_classes)
    return head


def head_cost(
    spec: HeadSpec, *, feature_shape: Sequence[int], pool: int, num_classes: int
) -> tuple[int, int]:
    """(MACs per sample, parameters) of :func:`build_head`'s module, analytically.

    Pooling and averaging are not counted, as in the backbone counts.
    """
    c, s, k, w = *_geometry(feature_shape, pool), num_classes, spec.width
    if spec.kind == "linear":
        fan_in = c * s if spec.flatten else c
        return fan_in * k, fan_in * k + k
    if spec.kind == "mlp":
        return c * s * w + w * k, c * s * w + w + w * k + k
    return s * c * w + w * k, c * w + w + w * k + k


def head_costs(
    family: HeadFamily | Sequence[HeadSpec],
    feature_shapes: Sequence[Sequence[int]],
    *,
    pool: int,
    num_classes: int,
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """``(macs[C, H], params[C, H])`` of every head at every candidate, for BackboneCosts."""
    members = family.members if isinstance(family, HeadFamily) else tuple(family)
    macs = np.zeros((len(feature_shapes), len(members)), dtype=np.int64)
    params = np.zeros_like(macs)
    for c, shape in enumerate(feature_shapes):
        for h, spec in enumerate(members):
            macs[c, h], params[c, h] = head_cost(
                spec, feature_shape=shape, pool=pool, num_classes=num_classes
            )
    return macs, params
