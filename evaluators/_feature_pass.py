"""The feature pass itself: one backbone pass over a split, written to cache entries.

Inputs are normalised on the device; the forward pass runs in the split's precision
(channels-last on a GPU); pooled features leave the device in their storage dtype
(fp16 for train, float32 otherwise) through rotating pinned host buffers without
waiting, and background threads write and checksum them (:mod:`evaluators._npy_stream`)
while the next batch runs. :mod:`evaluators.features` decides what to compute and
where it goes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor, nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from evaluators._cache import commit_entry
from evaluators._extract import iter_batches, precision_mode
from evaluators._npy_stream import NpyStream, StreamSet

__all__ = ["OUTPUT"]

OUTPUT = "__output__"  # pseudo-candidate of the entry holding labels and logits
_FP16_MAX = 65504.0
_NUMPY: dict[torch.dtype, np.dtype[Any]] = {
    torch.float16: np.dtype(np.float16),
    torch.float32: np.dtype(np.float32),
}


def _stored(feat: Tensor, dtype: torch.dtype) -> Tensor:
    """A pooled activation in its storage dtype; fp16 saturates instead of overflowing to inf."""
    if dtype == torch.float16:
        return feat.float().clamp_(-_FP16_MAX, _FP16_MAX).half()
    return feat.to(dtype)


class _HostRing:
    """Rotating host buffers for the outputs of the last few batches (pinned on a GPU).

    A batch's outputs are copied to its slot without waiting (on a GPU) and written from
    there by the :class:`StreamSet`; a slot is reused only once its writes are done, which
    also bounds how far the forward pass runs ahead of the disk.
    """

    def __init__(self, depth: int, device: torch.device) -> None:
        self.device = device
        self._slots: list[dict[str, Tensor]] = [{} for _ in range(depth)]
        self._pending: list[list[Future[None]]] = [[] for _ in range(depth)]
        self._next = 0

    def take(self) -> int:
        """The next slot, once the writes that still read it are done (their errors raise)."""
        slot = self._next
        self._next = (slot + 1) % len(self._slots)
        for future in self._pending[slot]:
            future.result()
        return slot

    def put(self, slot: int, name: str, value: Tensor) -> NDArray[Any]:
        """``value`` as host rows in ``slot`` (a copy queued on the GPU; as it is on a CPU)."""
        if self.device.type != "cuda":
            return value.numpy()  # a fresh tensor of this batch: nothing else writes it
        buf = self._slots[slot].get(name)
        if buf is None or buf.shape[0] < value.shape[0]:
            buf = torch.empty(value.shape, dtype=value.dtype, pin_memory=True)
            self._slots[slot][name] = buf
        rows = buf[: value.shape[0]]
        rows.copy_(value, non_blocking=True)
        return rows.numpy()

    def hand_over(self, slot: int, futures: list[Future[None]]) -> None:
        self._pending[slot] = futures

    def ready(self) -> Any:
        """What a writer waits on before reading this batch's slot (None on a CPU)."""
        if self.device.type != "cuda":
            return None
        event = torch.cuda.Event()  # type: ignore[no-untyped-call]
        event.record()
        return event.synchronize


def _streams(
    todo: Mapping[str, Path],
    *,
    n: int,
    shapes: Mapping[str, tuple[int, ...]],
    num_classes: int,
    dtype: np.dtype[Any],
) -> dict[str, NpyStream]:
    """One stream per file of the missing entries: features per candidate, labels, logits."""
    streams = {
        p: NpyStream(d / "features.npy.part", shape=(n, *shapes[p]), dtype=dtype)
        for p, d in todo.items()
        if p != OUTPUT
    }
    if OUTPUT in todo:
        streams["labels"] = NpyStream(todo[OUTPUT] / "labels.npy.part", shape=(n,), dtype=np.int64)
        streams["logits"] = NpyStream(
            todo[OUTPUT] / "logits.npy.part", shape=(n, num_classes), dtype=np.float32
        )
    return streams


def _write_split(
    extractor: nn.Module,
    dataset: Dataset[Any],
    *,
    split: str,
    todo: Mapping[str, Path],
    points: Sequence[str],
    shapes: Mapping[str, tuple[int, ...]],
    num_classes: int,
    meta: Mapping[str, Any],
    batch_size: int,
    device: torch.device,
    precision: str,
    progress: bool,
) -> None:
    """One pass over ``dataset`` writing the missing entries ``todo`` (candidate -> folder).

    Inputs are normalised on ``device``; the forward pass runs in ``precision`` (channels-last
    on a GPU); pooled features leave the device in their storage dtype, and background
    threads write and checksum them while the next batch runs.
    """
    n = len(dataset)  # type: ignore[arg-type]
    dtype = torch.float16 if split == "train" else torch.float32
    streams = _streams(todo, n=n, shapes=shapes, num_classes=num_classes, dtype=_NUMPY[dtype])
    ring = _HostRing(4, device)
    channels_last = device.type == "cuda"
    bar = tqdm(total=n, desc=f"features {split}", unit="sample", disable=not progress, leave=False)
    with StreamSet(streams) as writer, torch.inference_mode(), bar:
        for x, y in iter_batches(dataset, batch_size, device=device):
            x = x.float()
            if channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            with precision_mode(precision, device):
                outs = extractor(x)
            slot = ring.take()
            rows = {
                point: ring.put(slot, point, _stored(feat, dtype))
                for point, feat in zip(points, outs[1:], strict=True)
                if point in streams
            }
            if OUTPUT in todo:
                rows["labels"] = y.to(torch.int64).numpy()
                rows["logits"] = ring.put(slot, "logits", outs[0].float())
            ring.hand_over(slot, writer.submit(rows, ready=ring.ready()))
            bar.update(x.shape[0])
        checksums = writer.close()
    for point, folder in todo.items():
        files = ("labels.npy", "logits.npy") if point == OUTPUT else ("features.npy",)
        names = ("labels", "logits") if point == OUTPUT else (point,)  # their streams
        commit_entry(
            folder,
            files,
            {
                **meta,
                "split": split,
                "point": point,
                "n": n,
                "shape": list(shapes.get(point, ())),
                "dtype": _NUMPY[dtype].name,
                "precision": precision,
            },
            checksums={f: checksums[name] for f, name in zip(files, names, strict=True)},
        )
