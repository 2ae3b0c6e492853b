"""One tier of a distributed EENN: a process that runs its device's stages of the manifest.

``python -m search.deploy._worker SPEC_JSON`` (started by :mod:`search.deploy.distributed`).
The worker receives batches from the tier before it (or the client's feed), runs its stages
with onnxruntime and the manifest's exit rule (:func:`search.deploy._onnx_runner.numpy_scores`),
answers the samples that exit, and sends the others on in its device's precision. A tier
without stages (a relay) only re-encodes and forwards. Samples it cannot send on (the next tier
is down or silent) are answered from the last exit they passed, flagged degraded, or as
failures when they passed none.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zmq
from numpy.typing import NDArray

from search.deploy import _wire as w
from search.deploy._link import Lost, Receiver, Sender, log_line
from search.deploy._onnx_runner import numpy_scores

__all__ = ["WorkerSpec", "main"]


@dataclass(frozen=True, kw_only=True)
class WorkerSpec:
    """Everything a worker needs (written as JSON by the orchestrator)."""

    manifest: str
    tier: int
    session: str  # hex token of the deployment
    bind: str  # where the upstream link (or the client's feed) arrives; ":0" = any port
    down: str | None  # the next tier's endpoint, None for the last tier
    answers: str  # the client's answer socket
    peer: str | None = None  # the upstream tier's address, where it is known
    window: int = 64
    timeout_s: float = 5.0
    delay_s: float = 0.0  # propagation delay of the incoming link, added on receipt
    max_batch: int = 64


@dataclass(kw_only=True)
class _Batch:
    """Samples at this tier: wire metadata, traces with this tier's hop, float32 inputs."""

    meta: NDArray[Any]
    trace: NDArray[Any]
    x: NDArray[np.float32]
    idents: list[bytes]
    ready: float


class Worker:
    """The state and loop of one tier (see the module docstring)."""

    def __init__(self, spec: WorkerSpec) -> None:
        import onnxruntime as ort

        self.spec, self.tier = spec, spec.tier
        path = Path(spec.manifest)
        self.manifest = m = json.loads(path.read_text())
        self.metric = m["decision"]["metric"]
        self.n_exits = len(m["exits"])
        self.bits = int(m["devices"][self.tier]["activation_bits"])
        self.name = m["devices"][self.tier]["name"]
        self.fixed = w.sending_scale(m, path.parent, self.tier) if self.bits <= 8 else None
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1
        self.stages = [(st, ort.InferenceSession(str(path.parent / st["file"]), opts,
                                                 providers=["CPUExecutionProvider"]))
                       for st in m["stages"] if st["device"] == self.tier]
        shape = (m["input"] if self.tier == 0 else m["links"][self.tier - 1]["tensor"])["shape"]
        self.session = bytes.fromhex(spec.session)
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.inbound = Receiver(self.ctx, spec.bind, session=self.session, tier=self.tier,
                                expect_sender=w.CLIENT if self.tier == 0 else self.tier - 1,
                                shape=tuple(shape[1:]), peer=spec.peer)
        self.answers = self.ctx.socket(zmq.PUSH)
        self.answers.setsockopt(zmq.LINGER, 1000)
        self.answers.connect(spec.answers)
        self.down = (Sender(self.ctx, spec.down, session=self.session, tier=self.tier,
                            window=spec.window, timeout_s=spec.timeout_s)
                     if spec.down else None)
        self.pending: list[_Batch] = []
        self.outbox: list[_Batch] = []
        self.stop = False

    # -- receiving ---------------------------------------------------------------------------
    def _accept(self) -> None:
        for ident, msg in self.inbound.receive():
            n = len(msg.meta)
            now = time.monotonic()
            hop = np.zeros((n, 1), w.TRACE)
            hop["t_in"] = now
            hop["bytes_in"] = msg.payload_bytes // max(n, 1)
            hop["framing_in"] = msg.framing_bytes / max(n, 1)
            assert msg.tensor is not None
            x = w.decode_tensor(msg.tensor, msg.meta["scale"], msg.meta["zero"])
            self.pending.append(_Batch(meta=msg.meta.copy(), x=x, idents=[ident] * n,
                                       trace=np.concatenate([msg.trace, hop], axis=1),
                                       ready=now + self.spec.delay_s))

    def _take(self) -> _Batch | None:
        now = time.monotonic()
        ready = [b for b in self.pending if b.ready <= now]
        if not ready:
            return None
        take, size = [], 0
        for b in ready:
            if size and size + len(b.meta) > self.spec.max_batch:
                break
            take.append(b)
            size += len(b.meta)
        self.pending = [b for b in self.pending if all(b is not t for t in take)]
        return _Batch(meta=np.concatenate([b.meta for b in take]),
                      trace=np.concatenate([b.trace for b in take]),
                      x=np.concatenate([b.x for b in take]),
                      idents=[i for b in take for i in b.idents], ready=now)

    # -- computing ---------------------------------------------------------------------------
    def _run(self, batch: _Batch) -> _Batch:
        """Run this tier's stages, answer the samples that exit (after each stage, so an early
        exit does not wait for the later stages); return the samples that go on."""
        meta, h = batch.meta, batch.x
        alive = np.arange(len(meta))
        compute = np.zeros(len(meta), np.float64)
        for st, sess in self.stages:
            if not len(alive):
                break
            t0 = time.perf_counter()
            outs = dict(zip(st["outputs"], sess.run(st["outputs"], {st["input"]["name"]: h}),
                            strict=True))
            act = outs.get(st["activation"]) if st["activation"] else None
            leave = np.zeros(len(alive), bool)
            if st["logits"] is not None:
                p, c = numpy_scores(outs[st["logits"]], self.metric)
                leave = (np.ones(len(c), bool) if st["final"]
                         else c >= np.float32(st["exit"]["threshold"]))
                exit_k = self.n_exits if st["final"] else int(st["exit"]["index"])
                stay = alive[~leave]
                meta["fb_pred"][stay], meta["fb_exit"][stay] = p[~leave], exit_k
                meta["fb_tier"][stay], meta["fb_conf"][stay] = self.tier, c[~leave]
            compute[alive] += (time.perf_counter() - t0) / len(alive)
            if leave.any():
                ans = np.zeros(int(leave.sum()), w.ANS)
                ans["id"], ans["pred"], ans["exit"] = meta["id"][alive[leave]], p[leave], exit_k
                ans["tier"], ans["status"], ans["conf"] = self.tier, w.OK, c[leave]
                self._answer(batch, alive[leave], ans, compute[alive[leave]])
            alive = alive[~leave]
            h = np.ascontiguousarray(act[~leave]) if act is not None else h
        batch.trace["compute_s"][:, -1] = compute
        return _Batch(meta=meta[alive], trace=batch.trace[alive], x=h,
                      idents=[batch.idents[i] for i in alive], ready=batch.ready)

    # -- leaving -----------------------------------------------------------------------------
    def _answer(self, batch: _Batch, idx: NDArray[Any], ans: NDArray[Any],
                compute: NDArray[Any]) -> None:
        trace = batch.trace[idx].copy()
        trace["compute_s"][:, -1] = compute
        trace["t_out"][:, -1] = time.monotonic()
        self.answers.send_multipart(w.encode(w.ANSWER, session=self.session, sender=self.tier,
                                             meta=ans, trace=trace))
        self._credit(ans["id"], [batch.idents[i] for i in idx])

    def _credit(self, ids: NDArray[Any], idents: list[bytes]) -> None:
        for ident in set(idents):
            mine = np.asarray([i for i, d in zip(ids.tolist(), idents, strict=True)
                               if d == ident], dtype=np.uint64)
            self.inbound.credit(ident, mine)

    def _fallback(self, meta: NDArray[Any], trace: NDArray[Any], reason: str) -> None:
        """Answer samples that cannot go on: their last exit (degraded) or a failure."""
        if not len(meta):
            return
        ans = np.zeros(len(meta), w.ANS)
        ans["id"], ans["pred"], ans["exit"] = meta["id"], meta["fb_pred"], meta["fb_exit"]
        ans["tier"], ans["conf"] = meta["fb_tier"], meta["fb_conf"]
        ans["status"] = np.where(meta["fb_exit"] >= 0, w.DEGRADED, w.FAILED)
        trace = trace.copy()
        trace[:, -1]["t_out"] = time.monotonic()
        self.answers.send_multipart(w.encode(w.ANSWER, session=self.session, sender=self.tier,
                                             meta=ans, trace=trace))
        log_line(f"tier {self.tier} ({self.name}): {len(meta)} samples answered from their "
                 f"last exit or failed: {reason}")

    def _lost(self, lost: Lost) -> None:
        if len(lost):  # these already left this tier (credited) when they were sent
            self._fallback(np.stack(lost.meta), np.stack(lost.trace), lost.reason)

    def _forward(self) -> None:
        """Send what waits in the outbox as far as the credits allow."""
        while self.outbox:
            b = self.outbox[0]
            if self.down is None or not self.down.up:
                self.outbox.pop(0)
                why = "no next tier" if self.down is None else f"{self.spec.down} is down"
                self._fallback(b.meta, b.trace, why)
                self._credit(b.meta["id"], b.idents)
                continue
            k = min(self.down.free(), len(b.meta))
            if k == 0:
                return
            q, scale, zero = w.encode_tensor(b.x[:k], self.bits, fixed=self.fixed)
            meta = b.meta[:k].copy()
            meta["scale"], meta["zero"] = scale, zero
            trace = b.trace[:k].copy()
            trace[:, -1]["t_out"] = time.monotonic()
            if not self.down.send(meta=meta, trace=trace, tensor=q):
                continue  # the link went down: the next pass answers them
            self._credit(meta["id"], b.idents[:k])
            rest = _Batch(meta=b.meta[k:], trace=b.trace[k:], x=b.x[k:], idents=b.idents[k:],
                          ready=b.ready)
            self.outbox[0] = rest
            if not len(rest.meta):
                self.outbox.pop(0)

    # -- the loop ----------------------------------------------------------------------------
    def serve(self) -> None:
        if self.down is not None and not self.down.wait_up(10.0):
            log_line(f"tier {self.tier}: the next tier at {self.spec.down} did not answer")
        self.answers.send_multipart(w.encode(w.READY, session=self.session, sender=self.tier,
                                             info={"endpoint": self.inbound.endpoint,
                                                   "pid": os.getpid()}))
        poller = zmq.Poller()
        poller.register(self.inbound.sock, zmq.POLLIN)
        if self.down is not None:
            poller.register(self.down.sock, zmq.POLLIN)
            poller.register(self.down.monitor, zmq.POLLIN)
        while not self.stop:
            wait = min((b.ready for b in self.pending), default=time.monotonic() + 0.05)
            poller.poll(max(0, min(50, int((wait - time.monotonic()) * 1000) + 1))
                        if not self.outbox else 5)
            if self.down is not None:
                self._lost(self.down.on_monitor())
                self.down.on_credit()
                self._lost(self.down.expired())
            self._accept()
            while (batch := self._take()) is not None:
                rest = self._run(batch)
                if len(rest.meta):
                    self.outbox.append(rest)
                self._forward()
            self._forward()

    def close(self) -> None:
        self.inbound.close()
        if self.down is not None:
            self.down.close()
        self.answers.close()
        self.ctx.term()


def main(argv: list[str] | None = None) -> int:
    spec = WorkerSpec(**json.loads((argv or sys.argv[1:])[0]))
    worker = Worker(spec)

    def _stop(*_: Any) -> None:
        worker.stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        worker.serve()
    finally:
        worker.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
