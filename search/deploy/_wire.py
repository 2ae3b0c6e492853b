"""Messages between the tiers of a distributed EENN: ZeroMQ multipart frames, validated.

Transport: ZeroMQ (pyzmq). A tier boundary needs message framing (a sample batch is one
message, never a partial read), reconnection after a tier restarts, a bounded queue per peer
(high-water marks) and liveness of a silent peer (ZMTP heartbeats); ZeroMQ gives all four on
plain TCP (the shaped links) and on Unix sockets (the client's feed and answers), with no
broker and no code generation. gRPC would add HTTP/2 framing and protobuf schemas for what is
one header and one raw buffer; asyncio streams would leave framing and reconnection to us.

A message is a few frames: a fixed little-endian header (magic, version, kind, the
deployment's session token, the sending tier, the sample count, the trace depth and the
per-sample tensor shape), then per-sample records (numpy structured arrays: sample id, the
last exit seen upstream, the int8 scale), then per-hop timing records, then the raw tensor
buffer in the sender's declared precision. The buffer is exactly ``n * bytes_sent`` of the
manifest; everything else is framing and is counted apart. :func:`decode` rejects anything
malformed with :class:`FrameError` (one line), never with a crash of the worker.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["ANSWER", "CREDIT", "DATA", "HELLO", "READY", "FrameError", "Message",
           "decode", "decode_tensor", "encode", "encode_tensor", "sending_scale", "wire_dtype"]

MAGIC = b"EENN"
VERSION = 1
HELLO, DATA, CREDIT, ANSWER, READY = 1, 2, 3, 4, 5
_KINDS = {HELLO: "hello", DATA: "data", CREDIT: "credit", ANSWER: "answer", READY: "ready"}
CLIENT = 0xFFFF  # the sending "tier" of the client's feed
OK, DEGRADED, FAILED = 0, 1, 2

# magic, version, kind, dtype code, ndim, session (8 bytes), sender tier, n samples, hops
_HEAD = struct.Struct("<4sBBBB8sHII")
_DTYPES: dict[int, np.dtype[Any]] = {0: np.dtype("<f4"), 1: np.dtype("<f2"), 2: np.dtype("i1")}
_CODES = {v: k for k, v in _DTYPES.items()}
# one sample: id, last exit upstream (prediction, exit index, tier; -1 = none), its
# confidence, and the int8 scale / zero point of the sample's tensor (0 when not int8)
META = np.dtype([("id", "<u8"), ("fb_pred", "<i2"), ("fb_exit", "<i2"), ("fb_tier", "<i2"),
                 ("fb_conf", "<f4"), ("scale", "<f4"), ("zero", "i1")])
# one tier a sample passed: arrival and departure (CLOCK_MONOTONIC, shared by the processes
# of one host), its share of the tier's compute, and the payload and framing bytes it arrived
# with (framing: its share of the message's other frames and of ZMTP's frame headers)
TRACE = np.dtype([("t_in", "<f8"), ("t_out", "<f8"), ("compute_s", "<f4"), ("bytes_in", "<u4"),
                  ("framing_in", "<f4")])
# an answer: id, class, exit index (K = backbone classifier), tier, status, confidence
ANS = np.dtype([("id", "<u8"), ("pred", "<i2"), ("exit", "<i2"), ("tier", "<i2"),
                ("status", "u1"), ("conf", "<f4")])


class FrameError(ValueError):
    """A message that is not a valid frame of this protocol (the text says why)."""


@dataclass(frozen=True, kw_only=True, eq=False)
class Message:
    """A decoded message; arrays are views of the received frames."""

    kind: int
    sender: int
    meta: NDArray[Any]  # META (data), ANS (answer), uint64 ids (credit); empty otherwise
    trace: NDArray[Any]  # (n, hops) TRACE
    tensor: NDArray[Any] | None  # data: (n, *shape) in the wire dtype
    info: dict[str, Any]  # hello / ready: the JSON body
    payload_bytes: int
    framing_bytes: int


def wire_dtype(activation_bits: int) -> np.dtype[Any]:
    """The dtype a device at ``activation_bits`` sends: int8 (<= 8), float16, float32."""
    size = max(1, int(activation_bits) // 8)
    for dt in _DTYPES.values():
        if dt.itemsize == size:
            return dt
    raise ValueError(f"activation_bits {activation_bits} has no wire format; use 8, 16 or 32")


def encode_tensor(x: NDArray[Any], bits: int, *, fixed: tuple[float, int] | None = None
                  ) -> tuple[NDArray[Any], NDArray[np.float32], NDArray[np.int8]]:
    """``(wire array, scale, zero)`` of float32 ``x`` (n, ...) at ``bits``.

    int8 is affine: with the ``fixed`` (scale, zero point) of an int8 graph's output
    (:func:`sending_scale`; then exact, the values are already on that grid), else per
    sample (min-max over the sample, zero included), so that a sample's encoding does not
    depend on the batch it travels in.
    """
    n = len(x)
    dt = wire_dtype(bits)
    scale, zero = np.zeros(n, np.float32), np.zeros(n, np.int8)
    if dt != np.dtype("i1"):
        return np.ascontiguousarray(x, dtype=dt), scale, zero
    if fixed is not None:
        scale[:], zero[:] = np.float32(fixed[0]), fixed[1]
        q = np.rint(np.asarray(x, np.float32) / np.float32(fixed[0])) + np.float32(fixed[1])
        return np.clip(q, -128, 127).astype(np.int8), scale, zero
    flat = np.asarray(x, np.float32).reshape(n, -1)
    lo = np.minimum(flat.min(axis=1, initial=0.0), 0.0).astype(np.float32)
    hi = np.maximum(flat.max(axis=1, initial=0.0), 0.0).astype(np.float32)
    scale = ((hi - lo) / np.float32(255.0)).astype(np.float32)
    scale[scale == 0] = np.float32(1.0)
    z = np.clip(np.rint(np.float32(-128.0) - lo / scale), -128, 127).astype(np.float32)
    q = np.clip(np.rint(flat / scale[:, None]) + z[:, None], -128, 127).astype(np.int8)
    return q.reshape(x.shape), scale, z.astype(np.int8)


def sending_scale(manifest: dict[str, Any], folder: Path,
                  device: int) -> tuple[float, int] | None:
    """(scale, zero point) of the activation ``device`` sends when its last stage is an int8
    graph that makes it with DequantizeLinear from scalar initialisers, else None."""
    stages = [st for st in manifest["stages"] if st["device"] == device]
    if not stages or stages[-1].get("precision") != "int8" or not stages[-1]["activation"]:
        return None
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(folder / stages[-1]["file"])).graph
    inits = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and stages[-1]["activation"] in node.output:
            if len(node.input) < 3 or not {node.input[1], node.input[2]} <= set(inits):
                return None
            s, z = (numpy_helper.to_array(inits[n]) for n in node.input[1:3])
            if s.size == 1 and z.size == 1 and z.dtype == np.int8:
                return float(s.reshape(())), int(z.reshape(()))
    return None


def decode_tensor(q: NDArray[Any], scale: NDArray[np.float32],
                  zero: NDArray[np.int8]) -> NDArray[np.float32]:
    """float32 of a wire array (the inverse of :func:`encode_tensor` up to its rounding)."""
    if q.dtype != np.dtype("i1"):
        return np.ascontiguousarray(q, dtype=np.float32)
    shape = (len(q),) + (1,) * (q.ndim - 1)
    return ((q.astype(np.float32) - zero.astype(np.float32).reshape(shape))
            * scale.reshape(shape)).astype(np.float32)


def encode(kind: int, *, session: bytes, sender: int, meta: NDArray[Any] | None = None,
           trace: NDArray[Any] | None = None, tensor: NDArray[Any] | None = None,
           info: dict[str, Any] | None = None) -> list[bytes]:
    """The frames of one message (see the module docstring for the layout)."""
    n = 0 if meta is None else len(meta)
    hops = 0 if trace is None or trace.ndim < 2 else trace.shape[1]
    shape: tuple[int, ...] = () if tensor is None else tuple(tensor.shape[1:])
    code = 0 if tensor is None else _CODES[tensor.dtype]
    head = _HEAD.pack(MAGIC, VERSION, kind, code, len(shape), session, sender, n, hops)
    frames = [head + struct.pack(f"<{len(shape)}I", *shape)]
    if kind in (HELLO, READY):
        return [*frames, json.dumps(info or {}).encode()]
    frames.append(np.ascontiguousarray(meta).tobytes())
    if kind in (DATA, ANSWER):
        frames.append(np.ascontiguousarray(trace).tobytes())
    if kind == DATA:
        frames.append(np.ascontiguousarray(tensor).tobytes())
    return frames


def _array(buf: bytes, dtype: np.dtype[Any], count: int, what: str) -> NDArray[Any]:
    if len(buf) != count * dtype.itemsize:
        raise FrameError(f"{what} frame has {len(buf)} bytes, expected {count * dtype.itemsize}")
    return np.frombuffer(buf, dtype=dtype, count=count)


def _head(frames: list[bytes], session: bytes) -> tuple[int, int, int, int, int, tuple[int, ...]]:
    if not frames or len(frames[0]) < _HEAD.size:
        raise FrameError(f"header of {len(frames[0]) if frames else 0} bytes, "
                         f"expected at least {_HEAD.size}")
    magic, version, kind, code, ndim, sess, sender, n, hops = _HEAD.unpack_from(frames[0])
    if magic != MAGIC:
        raise FrameError(f"bad magic {magic!r} (not an EENN frame)")
    if version != VERSION:
        raise FrameError(f"protocol version {version}, this worker speaks {VERSION}")
    if kind not in _KINDS:
        raise FrameError(f"unknown message kind {kind}")
    if sess != session:
        raise FrameError(f"session {sess.hex()} is not this deployment's (unexpected peer)")
    if code not in _DTYPES:
        raise FrameError(f"unknown dtype code {code}")
    if len(frames[0]) != _HEAD.size + 4 * ndim:
        raise FrameError(f"header of {len(frames[0])} bytes does not hold {ndim} dims")
    shape = struct.unpack_from(f"<{ndim}I", frames[0], _HEAD.size)
    return kind, code, sender, n, hops, tuple(shape)


def decode(frames: list[bytes], *, session: bytes,
           shape: tuple[int, ...] | None = None) -> Message:
    """Validate and decode one multipart message; ``shape``: the tensor shape a data
    message must carry (the receiving stage's input). Raises :class:`FrameError`."""
    kind, code, sender, n, hops, got_shape = _head(frames, session)
    want = {HELLO: 2, READY: 2, CREDIT: 2, ANSWER: 3, DATA: 4}[kind]
    if len(frames) != want:
        raise FrameError(f"{_KINDS[kind]} message of {len(frames)} frames, expected {want}")
    framing = sum(len(f) for f in frames[:3]) + sum(2 if len(f) < 256 else 9 for f in frames)
    empty = np.zeros(0, META)
    if kind in (HELLO, READY):
        try:
            info = json.loads(frames[1])
        except ValueError as err:
            raise FrameError(f"{_KINDS[kind]} body is not JSON ({err})") from None
        if not isinstance(info, dict):
            raise FrameError(f"{_KINDS[kind]} body is not a JSON object")
        return Message(kind=kind, sender=sender, meta=empty, trace=np.zeros((0, 0), TRACE),
                       tensor=None, info=info, payload_bytes=0, framing_bytes=framing)
    if kind == CREDIT:
        ids = _array(frames[1], np.dtype("<u8"), n, "credit")
        return Message(kind=kind, sender=sender, meta=ids, trace=np.zeros((0, 0), TRACE),
                       tensor=None, info={}, payload_bytes=0, framing_bytes=framing)
    meta = _array(frames[1], ANS if kind == ANSWER else META, n, _KINDS[kind])
    trace = _array(frames[2], TRACE, n * hops, "trace").reshape(n, hops)
    tensor = None
    payload = 0
    if kind == DATA:
        if shape is not None and got_shape != tuple(shape):
            raise FrameError(f"tensor shape {list(got_shape)}, this tier takes {list(shape)}")
        dt = _DTYPES[code]
        tensor = _array(frames[3], dt, n * int(np.prod(got_shape)), "tensor").reshape(
            n, *got_shape)
        payload = len(frames[3])
    return Message(kind=kind, sender=sender, meta=meta, trace=trace, tensor=tensor, info={},
                   payload_bytes=payload, framing_bytes=framing)
