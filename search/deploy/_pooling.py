"""Adaptive average pooling as matrix products, exportable to ONNX for any size.

Heads pool their input with ``adaptive_avg_pool``, which the TorchScript ONNX exporter
only supports for divisible sizes; :class:`MatrixPool` pools with two small averaging
matrices instead (the same numbers up to float rounding). Used by the stage export
(:mod:`search.deploy.export`) and the profiling kit (:mod:`search.profile.kit`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from evaluators.features import pooled_shape

__all__ = ["MatrixPool"]


def _avg_matrix(size_in: int, size_out: int) -> Tensor:
    """(out, in) matrix of adaptive average pooling along one axis (PyTorch's bin edges)."""
    mat = torch.zeros(size_out, size_in)
    for i in range(size_out):
        lo, hi = (i * size_in) // size_out, -((-(i + 1) * size_in) // size_out)
        mat[i, lo:hi] = 1.0 / (hi - lo)
    return mat


class MatrixPool(nn.Module):
    """:func:`evaluators.features.pool_features` as matrix products (ONNX MatMul)."""

    rows: Tensor
    cols: Tensor

    def __init__(self, shape: Sequence[int], pool: int) -> None:
        super().__init__()
        out = pooled_shape(shape, pool)
        self.rank = len(shape)
        empty = torch.zeros(0)
        self.register_buffer("rows", _avg_matrix(shape[1], out[1]) if self.rank >= 2 else empty)
        self.register_buffer("cols", _avg_matrix(shape[2], out[2]).T.contiguous()
                             if self.rank == 3 else empty)

    def forward(self, x: Tensor) -> Tensor:
        if self.rank == 3:  # (N, C, H, W): rows @ x @ cols
            return torch.matmul(torch.matmul(self.rows, x), self.cols)
        if self.rank == 2:  # (N, C, L) -> (N, C, L')
            return torch.matmul(x, self.rows.T)
        return x
