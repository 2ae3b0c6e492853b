"""The one reduction applied to a candidate activation, by the cache and the runtime alike."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from evaluators._cache import CacheError

__all__ = ["FeatureCacheError", "pool_features", "pooled_shape"]


class FeatureCacheError(CacheError):
    """The feature cache cannot be built as configured; the message names the knob."""


def pool_features(x: Tensor, pool: int) -> Tensor:
    """Adaptive average pooling of an activation to at most ``pool`` x ``pool`` positions.

    ``(B,C,H,W)`` -> ``(B,C,min(H,pool),min(W,pool))``. ``(B,C,L)`` is read as a
    channels-first sequence (1D CNN) -> ``(B,C,min(L,pool*pool))``, as many
    positions as a pooled map; transformer tokens ``(B,T,D)`` are hence pooled
    over ``D``, so expose them as ``(B,D,T)`` to pool over tokens. ``(B,D)``
    stays as it is. An input that is already small enough is returned
    unchanged, so pooling a pooled feature is exactly the identity. Maps of
    16 or more channels are pooled in channels-last layout (much faster on
    CPU); the result is contiguous. The runtime applies this same function:
    heads start with it.
    """
    if x.dim() == 4:
        size = (min(x.shape[2], pool), min(x.shape[3], pool))
        if size == tuple(x.shape[2:]):
            return x
        if x.shape[1] >= 16:  # the CPU's channels-last kernel is the faster one from 16 channels on
            x = x.contiguous(memory_format=torch.channels_last)
        return F.adaptive_avg_pool2d(x, size).contiguous()
    if x.dim() == 3:
        length = min(x.shape[2], pool * pool)
        return x if length == x.shape[2] else F.adaptive_avg_pool1d(x, length)
    if x.dim() == 2:
        return x
    raise FeatureCacheError(
        f"cannot pool an activation of shape {tuple(x.shape)}; exit candidates must be "
        "(B,D), (B,C,L) or (B,C,H,W) tensors: choose other candidates"
    )


torch.fx.wrap("pool_features")  # a leaf in fx traces: its shape test is not traceable


def pooled_shape(shape: Sequence[int], pool: int) -> tuple[int, ...]:
    """Shape (without batch) that :func:`pool_features` gives for an activation of ``shape``."""
    if len(shape) == 3:
        return (shape[0], min(shape[1], pool), min(shape[2], pool))
    if len(shape) == 2:
        return (shape[0], min(shape[1], pool * pool))
    if len(shape) == 1:
        return (shape[0],)
    raise FeatureCacheError(
        f"cannot pool an activation of shape {tuple(shape)}; choose other candidates"
    )
