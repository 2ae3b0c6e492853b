"""A 1D CNN for single-lead ECG beats (input 1 x L, e.g. 187 samples at 360 Hz; 5 AAMI classes).

Six Conv1d-BN-ReLU blocks with channel width growing as the sequence is halved, global average
pooling and a linear classifier: small enough for an MCU, with cheap early blocks.
"""

from __future__ import annotations

from collections.abc import Sequence

from evaluators.models._plain_cnn import PlainCNN

__all__ = ["ECGCNN"]


class ECGCNN(PlainCNN):
    """Conv1d blocks (``widths``, ``strides``, ``kernel``), global average pool, linear head."""

    def __init__(
        self,
        num_classes: int = 5,
        *,
        in_channels: int = 1,
        widths: Sequence[int] = (16, 16, 32, 32, 64, 64),
        strides: Sequence[int] = (1, 2, 1, 2, 1, 2),
        kernel: int = 5,
    ) -> None:
        super().__init__(dims=1, num_classes=num_classes, in_channels=in_channels,
                         widths=widths, strides=strides, kernel=kernel)
