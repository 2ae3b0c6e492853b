"""``.npy`` files written front to back in batches of rows, checksummed on the way, off-thread.

The feature pass produces every cache file in row order, one batch at a time.
Appending those rows with plain writes (no memory map, so no page fault per
4 KiB) and feeding the same bytes to SHA-256 (the manifest's checksum, see
:mod:`evaluators._cache`) lets disk and hash work on background threads while
the backbone computes the next batch, and the file is never read back to be
checksummed. ``hashlib`` and file writes release the GIL, so the threads run in
parallel with the forward pass.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
from numpy.typing import DTypeLike, NDArray

__all__ = ["NpyStream", "StreamSet"]


class NpyStream:
    """One ``.npy`` file of a known shape, written as the header and then rows in order."""

    def __init__(self, path: Path, *, shape: Sequence[int], dtype: DTypeLike) -> None:
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        self.shape = tuple(int(d) for d in shape)
        self._row_bytes = math.prod(self.shape[1:]) * self.dtype.itemsize
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            header,
            {
                "descr": np.lib.format.dtype_to_descr(self.dtype),
                "fortran_order": False,
                "shape": self.shape,
            },
        )
        self._digest = hashlib.sha256(header.getvalue())
        self._fh = self.path.open("wb")
        self._fh.write(header.getvalue())
        self._rows = 0

    def append(self, rows: NDArray[Any]) -> None:
        """Write the next ``len(rows)`` rows (C-contiguous, this stream's dtype and row shape)."""
        if rows.dtype != self.dtype or tuple(rows.shape[1:]) != self.shape[1:]:
            raise ValueError(
                f"{self.path.name}: rows {rows.dtype}{tuple(rows.shape)} do not fit "
                f"{self.dtype}{self.shape}"
            )
        if self._rows + len(rows) > self.shape[0]:
            raise ValueError(f"{self.path.name}: more than {self.shape[0]} rows")
        view = memoryview(np.ascontiguousarray(rows)).cast("B")  # type: ignore[arg-type]
        self._fh.write(view)
        self._digest.update(view)
        self._rows += len(rows)

    def close(self) -> str:
        """Close the file; the SHA-256 (hex) of all its bytes. Raises if rows are missing."""
        self._fh.close()
        if self._rows != self.shape[0]:
            raise ValueError(f"{self.path.name}: {self._rows} of {self.shape[0]} rows written")
        return self._digest.hexdigest()

    def abort(self) -> None:
        """Close the file as it is (an incomplete ``.part`` that no manifest will name)."""
        self._fh.close()


class StreamSet:
    """Several streams fed batch by batch; each stream is written in order on its own lane.

    A lane is one background thread that owns some of the streams, so the rows of one file
    arrive in order while different files are written and hashed in parallel. Use as a
    context manager: leaving it by an exception stops the lanes and leaves the files
    incomplete; :meth:`close` waits for every write and returns the checksums.
    """

    def __init__(self, streams: Mapping[str, NpyStream], *, lanes: int | None = None) -> None:
        self.streams = dict(streams)
        n = lanes or min(len(self.streams), max(1, min(8, (os.cpu_count() or 2) // 2)))
        self._lanes = [ThreadPoolExecutor(max_workers=1) for _ in range(max(1, n))]
        self._lane_of = {name: i % len(self._lanes) for i, name in enumerate(self.streams)}
        self._futures: list[Future[None]] = []
        self._closed = False

    def submit(
        self,
        rows: Mapping[str, NDArray[Any]],
        *,
        ready: Callable[[], object] | None = None,
    ) -> list[Future[None]]:
        """Queue ``rows[name]`` for each stream named; ``ready()`` runs first on each lane.

        ``ready`` waits until the rows' memory is filled (e.g. a CUDA event after an
        asynchronous copy to host). The caller keeps the arrays unchanged until every
        returned future is done.
        """
        by_lane: dict[int, list[str]] = {}
        for name in rows:
            by_lane.setdefault(self._lane_of[name], []).append(name)
        futures = [
            self._lanes[lane].submit(self._write, names, rows, ready)
            for lane, names in by_lane.items()
        ]
        self._futures = [f for f in self._futures if not f.done() or f.exception()] + futures
        return futures

    def _write(
        self,
        names: Sequence[str],
        rows: Mapping[str, NDArray[Any]],
        ready: Callable[[], object] | None,
    ) -> None:
        if ready is not None:
            ready()
        for name in names:
            self.streams[name].append(rows[name])

    def close(self) -> dict[str, str]:
        """Wait for every queued write; close the files; their SHA-256 checksums by name."""
        for lane in self._lanes:
            lane.shutdown(wait=True)
        for future in self._futures:
            future.result()  # the first failed write raises here
        self._closed = True
        return {name: stream.close() for name, stream in self.streams.items()}

    def __enter__(self) -> StreamSet:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        err: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._closed:
            return
        for lane in self._lanes:
            lane.shutdown(wait=True, cancel_futures=True)
        for stream in self.streams.values():
            stream.abort()
