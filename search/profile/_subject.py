"""What a device profile measures: one backbone with its exit candidates and trained heads."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["ProfileSubject", "make_subject", "subject_of"]


@dataclass(frozen=True, kw_only=True, eq=False)
class ProfileSubject:
    """The model, its candidates, the head family's trained heads, its identity and inputs.

    ``x``: real input samples (the val split's first ones) that drive every piece, so that
    data-dependent kernels see real activations.
    """

    model: nn.Module
    candidates: tuple[str, ...]
    heads: tuple[str, ...]
    head_modules: Mapping[tuple[int, int], nn.Module]
    head_family: str
    weights_hash: str
    x: Tensor


def make_subject(*, model: nn.Module, candidates: tuple[str, ...], family_names: tuple[str, ...],
                 family_members: list[dict[str, object]], pool: int,
                 head_modules: Mapping[tuple[int, int], nn.Module], weights_hash: str,
                 x: Tensor) -> ProfileSubject:
    """A subject on the CPU (copies: the caller's model and heads stay where they are)."""
    import copy

    from evaluators.device_profile import head_family_key

    return ProfileSubject(
        model=copy.deepcopy(model).cpu().eval(), candidates=candidates, heads=family_names,
        head_modules={k: copy.deepcopy(v).cpu().eval() for k, v in head_modules.items()},
        head_family=head_family_key(family_members, pool), weights_hash=weights_hash,
        x=x.float().cpu())


def subject_of(prepared: Any, *, samples: int = 256) -> ProfileSubject:
    """The subject of a prepared run (:class:`search.pipeline.Prepared`)."""
    from evaluators.features import iter_batches

    x = torch.cat([b.float() for b, _ in iter_batches(prepared.data.val, samples)])[:samples]
    return make_subject(
        model=prepared.model, candidates=prepared.costs.candidate_names,
        family_names=prepared.family.names,
        family_members=prepared.family.as_config()["members"], pool=prepared.store.pool,
        head_modules=prepared.heads.heads, weights_hash=prepared.backbone.weights_hash, x=x)
