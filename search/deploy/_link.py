"""Both ends of one link of a distributed EENN: credits, liveness, greeting, rejection.

:class:`Sender` (a ZeroMQ DEALER) sends samples downstream and keeps every sample that is
in flight until the receiving tier returns its credit (the sample left that tier: answered or
sent on). At most ``window`` samples are in flight, so a slow tier slows its sender instead
of growing a queue. When the link drops (the peer's process died: TCP reset, or ZMTP
heartbeats stop) or a credit does not come within ``timeout_s``, the samples in flight are
handed back to the caller, who answers them from the last exit upstream (degraded) or as
failures; ZeroMQ reconnects by itself and service resumes when the peer is back.

:class:`Receiver` (a ROUTER) accepts data only from a peer that first said hello with this
deployment's session token (and, where given, from the expected address); anything else is
rejected with one logged line. A restarted tier therefore never acts on frames that were
queued for its previous incarnation: they arrive before the new hello and are rejected.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zmq
from numpy.typing import NDArray
from zmq.utils.monitor import recv_monitor_message

from search.deploy import _wire as w

__all__ = ["Lost", "Receiver", "Sender", "log_line"]

_HEARTBEAT_MS = 250
_HEARTBEAT_TIMEOUT_MS = 1500


def log_line(text: str) -> None:
    """One line on stderr (the worker's log file), flushed at once."""
    print(text, file=sys.stderr, flush=True)


@dataclass(kw_only=True)
class Lost:
    """Samples handed back by a link: their META rows and traces (one row per sample)."""

    meta: list[Any] = field(default_factory=list)
    trace: list[NDArray[Any]] = field(default_factory=list)
    reason: str = ""

    def __len__(self) -> int:
        return len(self.meta)


def _options(sock: zmq.Socket[Any]) -> None:
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.HEARTBEAT_IVL, _HEARTBEAT_MS)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, _HEARTBEAT_TIMEOUT_MS)
    sock.setsockopt(zmq.HEARTBEAT_TTL, _HEARTBEAT_TIMEOUT_MS)


class Sender:
    """The sending end of one link (see the module docstring)."""

    def __init__(self, ctx: zmq.Context[Any], endpoint: str, *, session: bytes, tier: int,
                 window: int, timeout_s: float) -> None:
        self.session, self.tier, self.window, self.timeout_s = session, tier, window, timeout_s
        self.endpoint = endpoint
        self.sock = ctx.socket(zmq.DEALER)
        _options(self.sock)
        self.sock.setsockopt(zmq.IMMEDIATE, 1)  # queue only on a live connection
        self.sock.setsockopt(zmq.RECONNECT_IVL, 100)
        self.sock.setsockopt(zmq.RECONNECT_IVL_MAX, 500)
        self.monitor = self.sock.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
        self.sock.connect(endpoint)
        self.up = False
        self.generation = 0
        self.inflight: dict[int, tuple[float, Any, NDArray[Any]]] = {}
        self.payload_bytes = self.framing_bytes = self.samples_sent = 0

    def free(self) -> int:
        """How many more samples may be sent now."""
        return max(0, self.window - len(self.inflight)) if self.up else 0

    def wait_up(self, timeout_s: float) -> bool:
        """Block until the link is connected (or ``timeout_s`` passes)."""
        end = time.monotonic() + timeout_s
        while not self.up and time.monotonic() < end:
            if self.monitor.poll(50):
                self.on_monitor()
        return self.up

    def on_monitor(self) -> Lost:
        """Handle link events; on a drop, hand back every sample in flight."""
        lost = Lost(reason=f"link to {self.endpoint} dropped")
        while self.monitor.poll(0):
            event = recv_monitor_message(self.monitor)["event"]
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.generation += 1
                self.sock.send_multipart(w.encode(
                    w.HELLO, session=self.session, sender=self.tier,
                    info={"generation": self.generation}), zmq.NOBLOCK)
                self.up = True
            elif event == zmq.EVENT_DISCONNECTED:
                self.up = False
                self._drain(lost)
        return lost

    def _drain(self, lost: Lost, keep: Callable[[float], bool] = lambda _t: False) -> None:
        for sid in [s for s, (t, _, _) in self.inflight.items() if not keep(t)]:
            _, meta, trace = self.inflight.pop(sid)
            lost.meta.append(meta)
            lost.trace.append(trace)

    def on_credit(self) -> None:
        """Read the credits that came back (ids that left the next tier)."""
        while self.sock.poll(0):
            frames = self.sock.recv_multipart()
            try:
                msg = w.decode(frames, session=self.session)
            except w.FrameError as err:
                log_line(f"tier {self.tier}: rejected a reply from {self.endpoint}: {err}")
                continue
            if msg.kind == w.CREDIT:
                for sid in msg.meta.tolist():
                    self.inflight.pop(int(sid), None)

    def send(self, *, meta: NDArray[Any], trace: NDArray[Any], tensor: NDArray[Any]) -> bool:
        """Send one batch (``len(meta) <= free()``); False if the link refused it."""
        frames = w.encode(w.DATA, session=self.session, sender=self.tier, meta=meta,
                          trace=trace, tensor=tensor)
        try:
            self.sock.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            self.up = False
            return False
        now = time.monotonic()
        for i, sid in enumerate(meta["id"].tolist()):
            self.inflight[int(sid)] = (now, meta[i], trace[i])
        self.payload_bytes += len(frames[3])
        self.framing_bytes += sum(len(f) for f in frames[:3])
        self.samples_sent += len(meta)
        return True

    def expired(self) -> Lost:
        """The samples whose credit is overdue (``timeout_s``), handed back."""
        lost = Lost(reason=f"no reply from {self.endpoint} within {self.timeout_s:g} s")
        limit = time.monotonic() - self.timeout_s
        if self.inflight:
            self._drain(lost, keep=lambda t: t >= limit)
        return lost

    def close(self) -> None:
        self.sock.disable_monitor()
        self.monitor.close(0)
        self.sock.close(0)


class Receiver:
    """The receiving end of one link (see the module docstring)."""

    def __init__(self, ctx: zmq.Context[Any], bind: str, *, session: bytes, tier: int,
                 expect_sender: int, shape: tuple[int, ...], peer: str | None = None) -> None:
        self.session, self.tier, self.shape = session, tier, tuple(shape)
        self.expect_sender, self.peer = expect_sender, peer
        self.sock = ctx.socket(zmq.ROUTER)
        _options(self.sock)
        if bind.endswith(":0"):
            port = self.sock.bind_to_random_port(bind.rsplit(":", 1)[0])
            bind = f"{bind.rsplit(':', 1)[0]}:{port}"
        else:
            self.sock.bind(bind)
        self.endpoint = bind
        self.greeted: set[bytes] = set()
        self.rejected = 0

    def _reject(self, who: str, why: str) -> None:
        self.rejected += 1
        log_line(f"tier {self.tier}: rejected a message from {who}: {why}")

    def receive(self) -> list[tuple[bytes, w.Message]]:
        """Every data message waiting now, as ``(peer identity, message)``; greetings are
        recorded and everything invalid is rejected (one log line each)."""
        out = []
        while self.sock.poll(0):
            frames = self.sock.recv_multipart(copy=False)
            ident, body = frames[0].bytes, [f.bytes for f in frames[1:]]
            who = self._peer(frames[-1])
            try:
                if self.peer is not None and who != self.peer:
                    raise w.FrameError(f"address {who} is not the upstream tier's {self.peer}")
                msg = w.decode(body, session=self.session, shape=self.shape)
                if msg.sender != self.expect_sender:
                    raise w.FrameError(f"sender tier {msg.sender}, expected "
                                       f"{self.expect_sender} (unexpected peer)")
                if msg.kind == w.HELLO:
                    self.greeted.add(ident)
                    continue
                if msg.kind != w.DATA:
                    raise w.FrameError(f"a {msg.kind} message on a data link")
                if ident not in self.greeted:
                    raise w.FrameError("data before hello (a stale or unexpected peer)")
            except w.FrameError as err:
                self._reject(who, str(err))
                continue
            out.append((ident, msg))
        return out

    @staticmethod
    def _peer(frame: zmq.Frame) -> str:
        try:
            return str(frame.get("Peer-Address"))
        except zmq.ZMQError:
            return "a local socket"

    def credit(self, ident: bytes, ids: NDArray[np.uint64]) -> None:
        """Tell the sender ``ids`` left this tier."""
        meta = np.ascontiguousarray(ids, dtype="<u8")
        frames = w.encode(w.CREDIT, session=self.session, sender=self.tier, meta=meta)
        with contextlib.suppress(zmq.ZMQError):  # the sender is gone: nothing to tell
            self.sock.send_multipart([ident, *frames], zmq.NOBLOCK)

    def close(self) -> None:
        self.sock.close(0)
