"""Streamed .npy files: same bytes as np.save, checksums of what is on disk, order, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from evaluators._cache import commit_entry, read_entry
from evaluators._npy_stream import NpyStream, StreamSet
from evaluators.hashing import hash_file


def test_stream_writes_what_np_save_writes_and_hashes_it(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    full = rng.standard_normal((10, 3, 2)).astype(np.float16)
    stream = NpyStream(tmp_path / "a.npy", shape=full.shape, dtype=np.float16)
    for part in np.array_split(full, 3):
        stream.append(part)
    digest = stream.close()
    np.save(tmp_path / "b.npy", full)
    assert (tmp_path / "a.npy").read_bytes() == (tmp_path / "b.npy").read_bytes()
    assert digest == hash_file(tmp_path / "a.npy")
    mapped = np.load(tmp_path / "a.npy", mmap_mode="r")
    np.testing.assert_array_equal(mapped, full)


def test_stream_refuses_rows_that_do_not_fit(tmp_path: Path) -> None:
    stream = NpyStream(tmp_path / "a.npy", shape=(4, 2), dtype=np.float32)
    with pytest.raises(ValueError, match="do not fit"):
        stream.append(np.zeros((1, 2), dtype=np.float64))
    with pytest.raises(ValueError, match="do not fit"):
        stream.append(np.zeros((1, 3), dtype=np.float32))
    stream.append(np.ones((3, 2), dtype=np.float32))
    with pytest.raises(ValueError, match="more than 4 rows"):
        stream.append(np.ones((2, 2), dtype=np.float32))
    with pytest.raises(ValueError, match="3 of 4 rows"):
        stream.close()


def test_stream_set_keeps_each_file_in_order_across_lanes(tmp_path: Path) -> None:
    names = [f"f{i}" for i in range(5)]
    n, batch = 97, 8
    streams = {k: NpyStream(tmp_path / f"{k}.npy", shape=(n, 3), dtype=np.int64) for k in names}
    with StreamSet(streams, lanes=2) as writer:
        for start in range(0, n, batch):
            rows = np.arange(start, min(n, start + batch))[:, None] * np.ones(3, dtype=np.int64)
            writer.submit({k: rows * (i + 1) for i, k in enumerate(names)})
        checksums = writer.close()
    for i, k in enumerate(names):
        got = np.load(tmp_path / f"{k}.npy")
        np.testing.assert_array_equal(got[:, 0], np.arange(n) * (i + 1))
        assert checksums[k] == hash_file(tmp_path / f"{k}.npy")


def test_ready_runs_before_the_rows_are_read(tmp_path: Path) -> None:
    """The caller may hand over rows that are still being filled (an async copy)."""
    rows = np.zeros((4, 2), dtype=np.float32)
    stream = NpyStream(tmp_path / "a.npy", shape=(4, 2), dtype=np.float32)
    with StreamSet({"a": stream}) as writer:
        futures = writer.submit({"a": rows}, ready=lambda: rows.fill(7.0))
        for future in futures:
            future.result()
        writer.close()
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), np.full((4, 2), 7.0))


def test_a_failed_write_surfaces_and_leaves_no_complete_file(tmp_path: Path) -> None:
    good = NpyStream(tmp_path / "good.npy.part", shape=(2, 2), dtype=np.float32)
    bad = NpyStream(tmp_path / "bad.npy.part", shape=(2, 2), dtype=np.float32)
    rows = {"good": np.ones((2, 2), np.float32), "bad": np.ones((2, 3), np.float32)}
    with (
        pytest.raises(ValueError, match="do not fit"),
        StreamSet({"good": good, "bad": bad}, lanes=2) as writer,
    ):
        writer.submit(rows)
        writer.close()
    assert not (tmp_path / "bad.npy").exists()


def test_commit_takes_streamed_checksums_and_the_entry_verifies(tmp_path: Path) -> None:
    data = np.arange(12, dtype=np.float32).reshape(4, 3)
    stream = NpyStream(tmp_path / "x.npy.part", shape=data.shape, dtype=np.float32)
    stream.append(data)
    digest = stream.close()
    commit_entry(tmp_path, ["x.npy"], {"v": 1}, checksums={"x.npy": digest})
    meta = read_entry(tmp_path)
    assert meta is not None and meta["files"]["x.npy"]["sha256"] == digest
    np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), data)
