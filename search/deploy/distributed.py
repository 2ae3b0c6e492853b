"""A distributed EENN: one worker process per tier, real sockets, a streaming client.

:class:`Deployment` starts one :mod:`search.deploy._worker` process per device the manifest's
point uses (the first device up to the last one that runs a stage; a device in between without
stages relays), joins them with TCP links (loopback, or veth pairs between network namespaces
shaped with ``tbf``, see :mod:`search.deploy._netns`) and talks to them over Unix sockets:
the client's feed into tier 0 and every tier's answers back. :meth:`Deployment.stream` feeds
samples one message each, at a rate or as fast as the window of samples in flight allows,
collects exactly one answer per sample (the first; any later one is counted as a duplicate)
and can kill and restart tiers at given times. Workers are stopped, and namespaces removed,
when the deployment closes, also on errors and Ctrl-C.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zmq
from numpy.typing import NDArray

from search.deploy import _netns
from search.deploy import _wire as w
from search.deploy._link import Sender
from search.deploy._worker import WorkerSpec

__all__ = ["TIMEOUT", "DeployError", "DeployOptions", "Deployment", "Fault", "StreamResult",
           "check_manifest", "used_tiers"]

TIMEOUT = 3  # answer status the client gives a sample nobody answered in time
_ROOT = Path(__file__).resolve().parents[2]


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it when the process that started it dies (Linux), so
    a killed client never leaves workers behind (``ip netns exec`` execs, keeping this)."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class DeployError(RuntimeError):
    """A deployment that cannot start or run (the message names the cause and the fix)."""


@dataclass(frozen=True, kw_only=True)
class DeployOptions:
    """How to deploy: network, windows, timeouts, propagation delay, logs."""

    netns: bool = False
    link_window: int = 64  # samples in flight per link (credits)
    link_timeout_s: float = 5.0  # a credit overdue this long: answer from the last exit
    answer_timeout_s: float = 30.0  # the client gives up on a sample after this long
    propagation: bool | None = None  # add each link's latency at its receiver (default: netns)
    max_batch: int = 64
    log_dir: Path | None = None
    start_timeout_s: float = 60.0


@dataclass(frozen=True, kw_only=True)
class Fault:
    """Kill (SIGKILL) or restart one tier ``at_s`` seconds into a stream."""

    at_s: float
    tier: int
    action: str  # "kill" or "restart"


@dataclass(frozen=True, kw_only=True, eq=False)
class StreamResult:
    """One answer per sample and the client's clock around it."""

    answers: NDArray[Any]  # ANS rows, index = sample id; status TIMEOUT where none came
    trace: NDArray[Any]  # (n, tiers) TRACE rows of the answering message (zeros past it)
    t_send: NDArray[np.float64]
    t_answer: NDArray[np.float64]
    duplicates: int  # answers that came after a sample's first one (dropped)
    stale: int  # late answers to samples of an earlier stream (dropped)
    wall_s: float
    window: int
    rate: float | None
    events: list[str] = field(default_factory=list)


def used_tiers(manifest: dict[str, Any]) -> int:
    """How many devices the point uses: up to the last one running a stage."""
    return max((int(st["device"]) for st in manifest["stages"]), default=0) + 1


def check_manifest(path: Path, *, devices: Sequence[str] | None = None) -> dict[str, Any]:
    """Read an export manifest and check it can be deployed (one-line errors)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} does not exist; export the point first with "
                                "python -m search.deploy.export RUN --point ...")
    try:
        m = json.loads(path.read_text())
    except ValueError as err:
        raise DeployError(f"manifest {path} is not JSON ({err}); export the point again") \
            from None
    if not isinstance(m, dict) or m.get("format") != "eenn-manifest/1":
        raise DeployError(f"{path} is not an eenn-manifest/1 file (format "
                          f"{m.get('format') if isinstance(m, dict) else None!r}); export again")
    try:
        _check_entries(m, path, devices)
    except (KeyError, TypeError, ValueError) as err:
        if isinstance(err, DeployError):
            raise
        raise DeployError(f"{path} lacks or garbles {err} ({type(err).__name__}); export the "
                          "point again with python -m search.deploy.export") from None
    return dict(m)


def _check_entries(m: dict[str, Any], path: Path, devices: Sequence[str] | None) -> None:
    names = [d["name"] for d in m["devices"]]
    for st in m["stages"]:
        if not 0 <= int(st["device"]) < len(names):
            raise DeployError(f"{path}: stage {st['file']} runs on device {st['device']}, but "
                              f"the manifest lists {len(names)} devices; export again")
        if not (path.parent / st["file"]).is_file():
            raise DeployError(f"{path}: ONNX file {st['file']} is missing; export the point "
                              "again with python -m search.deploy.export")
    if devices is not None:
        lacking = [n for n in names[: used_tiers(m)] if n not in devices]
        if lacking or names[: used_tiers(m)] != list(devices)[: used_tiers(m)]:
            raise DeployError(f"{path} uses device(s) {names[: used_tiers(m)]}, the platform has "
                              f"{list(devices)}; export the point again from this run")
    for t in range(1, used_tiers(m)):
        int(m["links"][t - 1]["tensor"]["bytes_sent"])
        float(m["links"][t - 1]["bandwidth_bits_per_s"])


class Deployment:
    """Workers, links and the client's sockets of one deployed manifest (a context manager)."""

    def __init__(self, manifest_path: Path, options: DeployOptions | None = None) -> None:
        self.path = Path(manifest_path).resolve()
        self.options = options or DeployOptions()
        self.manifest = check_manifest(self.path)
        self.n_tiers = used_tiers(self.manifest)
        self.session = secrets.token_bytes(8)
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.specs: dict[int, WorkerSpec] = {}
        self.endpoints: dict[int, str] = {}
        self.mode = "loopback"
        self.next_id = 0
        self.plan: _netns.NetPlan | None = None
        self._stack = ExitStack()

    # -- life cycle --------------------------------------------------------------------------
    def __enter__(self) -> Deployment:
        try:
            self._start()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _start(self) -> None:
        opts = self.options
        self.tmp = Path(tempfile.mkdtemp(prefix="eenn-deploy-"))
        self._stack.callback(shutil.rmtree, self.tmp, ignore_errors=True)
        self.log_dir = Path(opts.log_dir or self.tmp)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        links = self.manifest["links"][: self.n_tiers - 1]
        if opts.netns:
            why = _netns.unavailable()
            if why is None:
                try:
                    self.plan = self._stack.enter_context(_netns.network(
                        self.n_tiers, [lk.get("bandwidth_bits_per_s") for lk in links]))
                    self.mode = "netns"
                except _netns.NetnsError as err:  # network() has removed what it made
                    why = str(err)
            if why is not None:
                self.mode = f"loopback (namespaces unavailable: {why})"
                print(f"--netns: namespaces unavailable ({why}); running on loopback",
                      file=sys.stderr)
        self.ctx: zmq.Context[Any] = zmq.Context()
        self._stack.callback(self.ctx.term)
        self.answers = self.ctx.socket(zmq.PULL)
        self._stack.callback(self.answers.close, 0)
        self.answers.bind(f"ipc://{self.tmp}/answers")
        self._stack.callback(self._stop_all)
        for tier in reversed(range(self.n_tiers)):
            self.specs[tier] = self._spec(tier)
            self._launch(tier)
            self.endpoints[tier] = self._wait_ready(tier)
            if tier:
                self.specs[tier] = WorkerSpec(**{**asdict(self.specs[tier]),
                                                 "bind": self.endpoints[tier]})
        self.feed = Sender(self.ctx, self.endpoints[0], session=self.session, tier=w.CLIENT,
                           window=1 << 30, timeout_s=opts.answer_timeout_s)
        self._stack.callback(self.feed.close)
        if not self.feed.wait_up(10.0):
            raise DeployError("the client could not connect to tier 0")

    def _spec(self, tier: int) -> WorkerSpec:
        opts = self.options
        links = self.manifest["links"]
        delay = 0.0
        if tier and (opts.propagation if opts.propagation is not None else self.plan):
            delay = float(links[tier - 1].get("latency_s", 0.0))
        if tier == 0:
            bind = f"ipc://{self.tmp}/tier0"
        elif self.plan is not None:
            bind = f"tcp://{self.plan.receivers[tier - 1]}:0"
        else:
            bind = "tcp://127.0.0.1:0"
        peer = self.plan.senders[tier - 1] if self.plan is not None and tier else None
        timeout = opts.link_timeout_s
        if tier + 1 < self.n_tiers and self.plan is not None:  # a full window must fit
            out = links[tier]
            timeout = max(timeout, 3 * opts.link_window * out["tensor"]["bytes_sent"] * 8
                          / out["bandwidth_bits_per_s"])
        return WorkerSpec(manifest=str(self.path), tier=tier, session=self.session.hex(),
                          bind=bind, down=self.endpoints.get(tier + 1),
                          answers=f"ipc://{self.tmp}/answers", peer=peer,
                          window=opts.link_window, timeout_s=timeout,
                          delay_s=delay, max_batch=opts.max_batch)

    def log_path(self, tier: int) -> Path:
        return self.log_dir / f"tier{tier}_{self.manifest['devices'][tier]['name']}.log"

    def _launch(self, tier: int) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1",
               "PYTHONPATH": os.pathsep.join(p for p in (str(_ROOT), os.environ.get(
                   "PYTHONPATH", "")) if p)}
        cmd = [sys.executable, "-m", "search.deploy._worker", json.dumps(asdict(self.specs[tier]))]
        if self.plan is not None:
            cmd = ["ip", "netns", "exec", self.plan.namespaces[tier], *cmd]
        with open(self.log_path(tier), "ab") as log:
            self.procs[tier] = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log,
                                                env=env, cwd=_ROOT, preexec_fn=_die_with_parent)

    def _wait_ready(self, tier: int) -> str:
        end = time.monotonic() + self.options.start_timeout_s
        while time.monotonic() < end:
            if self.procs[tier].poll() is not None:
                lines = self.log_path(tier).read_text(errors="replace").strip().splitlines()
                raise DeployError(f"tier {tier} worker exited with status "
                                  f"{self.procs[tier].returncode}: "
                                  f"{lines[-1] if lines else 'no output'}")
            if self.answers.poll(100):
                msg = w.decode(self.answers.recv_multipart(), session=self.session)
                if msg.kind == w.READY and msg.sender == tier:
                    return str(msg.info["endpoint"])
        raise DeployError(f"tier {tier} did not start within {self.options.start_timeout_s} s "
                          f"(log: {self.log_path(tier)})")

    def _stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def kill(self, tier: int) -> None:
        """SIGKILL one tier's process (a crash: no goodbye on its sockets)."""
        self.procs[tier].kill()
        self.procs[tier].wait()

    def restart(self, tier: int) -> None:
        """Start a killed tier again on the same endpoint (it says READY to the client)."""
        if self.procs[tier].poll() is None:
            raise DeployError(f"tier {tier} is still running; kill it first")
        self._launch(tier)

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs.values()]

    # -- the client --------------------------------------------------------------------------
    def stream(self, x: NDArray[Any], *, window: int = 64, rate: float | None = None,
               faults: Sequence[Fault] = ()) -> StreamResult:
        """Feed ``x`` (n, *input shape) one sample per message and collect one answer each."""
        return _Client(self, np.ascontiguousarray(x, np.float32), window=window, rate=rate,
                       faults=faults).run()


class _Client:
    """The streaming loop of :meth:`Deployment.stream` (one thread, one poller)."""

    def __init__(self, dep: Deployment, x: NDArray[np.float32], *, window: int,
                 rate: float | None, faults: Sequence[Fault]) -> None:
        self.dep, self.x, self.window, self.rate = dep, x, window, rate
        self.faults = sorted(faults, key=lambda f: f.at_s)
        n = len(x)
        self.ans = np.zeros(n, w.ANS)
        self.ans["id"], self.ans["tier"], self.ans["status"] = np.arange(n), -1, TIMEOUT
        self.ans["pred"] = self.ans["exit"] = -1
        self.trace = np.zeros((n, dep.n_tiers), w.TRACE)
        self.t_send = np.full(n, np.nan)
        self.t_answer = np.full(n, np.nan)
        self.done = np.zeros(n, bool)
        self.duplicates = self.stale = self.n_done = self.next = 0
        self.base = dep.next_id  # ids on the wire: unique across the streams of a deployment
        dep.next_id += n
        self.events: list[str] = []

    def _finish(self, ids: NDArray[Any], rows: NDArray[Any], trace: NDArray[Any] | None) -> None:
        now = time.monotonic()
        for k, wire_id in enumerate(ids.tolist()):
            sid = wire_id - self.base
            if not 0 <= sid < len(self.done):  # a late answer of an earlier stream
                self.stale += 1
                continue
            if self.done[sid]:
                self.duplicates += 1
                continue
            self.done[sid] = True
            self.n_done += 1
            self.ans[sid], self.t_answer[sid] = rows[k], now
            if trace is not None:
                self.trace[sid, : trace.shape[1]] = trace[k]

    def _failed(self, ids: Sequence[int], status: int, why: str) -> None:
        if not len(ids):
            return
        rows = np.zeros(len(ids), w.ANS)
        wire_ids = np.asarray(ids, np.int64) + self.base
        rows["id"], rows["pred"], rows["exit"], rows["tier"] = wire_ids, -1, -1, -1
        rows["status"] = status
        self._finish(wire_ids, rows, None)
        self.events.append(f"{len(ids)} samples failed: {why}")

    def _send_due(self, now: float, t0: float) -> None:
        dep = self.dep
        while self.next < len(self.x) and self.next - self.n_done < self.window:
            if self.rate is not None and now < t0 + self.next / self.rate:
                return
            i = self.next
            self.next += 1
            self.t_send[i] = time.monotonic()
            if not dep.feed.up:
                self._failed([i], w.FAILED, "tier 0 is down")
                continue
            meta = np.zeros(1, w.META)
            meta["id"], meta["fb_pred"], meta["fb_exit"] = self.base + i, -1, -1
            meta["fb_tier"] = -1
            if not dep.feed.send(meta=meta, trace=np.zeros((1, 0), w.TRACE),
                                 tensor=self.x[i : i + 1]):
                self._failed([i], w.FAILED, "tier 0 is down")

    def _receive(self) -> None:
        while self.dep.answers.poll(0):
            frames = self.dep.answers.recv_multipart()
            try:
                msg = w.decode(frames, session=self.dep.session)
            except w.FrameError as err:
                self.events.append(f"rejected an answer: {err}")
                continue
            if msg.kind == w.READY:
                self.dep.endpoints[msg.sender] = str(msg.info["endpoint"])
                self.events.append(f"{time.monotonic() - self.t0:.2f} s: tier {msg.sender} ready")
            elif msg.kind == w.ANSWER:
                self._finish(msg.meta["id"].astype(np.int64), msg.meta, msg.trace)

    def _faults(self, now: float) -> None:
        while self.faults and now >= self.t0 + self.faults[0].at_s:
            f = self.faults.pop(0)
            (self.dep.kill if f.action == "kill" else self.dep.restart)(f.tier)
            self.events.append(f"{now - self.t0:.2f} s: {f.action} tier {f.tier}")

    def _timeouts(self, now: float) -> None:
        feed = self.dep.feed
        lost = feed.on_monitor()
        feed.on_credit()
        ids = [int(m["id"]) - self.base for m in lost.meta]
        self._failed([i for i in ids if 0 <= i < len(self.done) and not self.done[i]],
                     w.FAILED, "tier 0 dropped")
        limit = now - self.dep.options.answer_timeout_s
        late = np.flatnonzero(~self.done[: self.next] & (self.t_send[: self.next] < limit))
        self._failed(late.tolist(), TIMEOUT, "no answer in time")
        for i in late.tolist():
            feed.inflight.pop(self.base + i, None)

    def run(self) -> StreamResult:
        dep, n = self.dep, len(self.x)
        poller = zmq.Poller()
        for sock in (dep.answers, dep.feed.sock, dep.feed.monitor):
            poller.register(sock, zmq.POLLIN)
        self.t0 = t0 = time.monotonic()
        while self.n_done < n:
            now = time.monotonic()
            self._faults(now)
            self._send_due(now, t0)
            due = (t0 + self.next / self.rate - now) if self.rate and self.next < n else 0.05
            poller.poll(max(0, min(50, int(due * 1000) + 1)))
            self._receive()
            self._timeouts(time.monotonic())
        for f in self.faults:  # a fault scheduled after the stream ended still happens
            (dep.kill if f.action == "kill" else dep.restart)(f.tier)
        self.ans["id"] = np.arange(n)  # sample indices again (the wire ids are offset)
        return StreamResult(answers=self.ans, trace=self.trace, t_send=self.t_send,
                            t_answer=self.t_answer, duplicates=self.duplicates, stale=self.stale,
                            wall_s=time.monotonic() - t0, window=self.window, rate=self.rate,
                            events=self.events)
