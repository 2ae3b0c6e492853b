"""The distributed runtime: tiers as processes on loopback and in namespaces, faults, bad frames."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import zmq

from evaluators.eenn import EENNConfig, ExitChoice
from search.deploy import _netns
from search.deploy import _wire as w
from search.deploy._onnx_runner import RunnerOutput, run_manifest
from search.deploy._report import deploy_report
from search.deploy.distributed import (
    TIMEOUT,
    DeployError,
    Deployment,
    DeployOptions,
    Fault,
    StreamResult,
    check_manifest,
)
from search.deploy.export import export_eenn
from search.deploy.runtime import build_eenn
from tests.search.deploy._eenn_fixture import gap_threshold, setup

NETNS = _netns.unavailable()


def _export(out: Path, exits: tuple[tuple[int, int, float], ...],
            boundaries: tuple[int, int]) -> Path:
    s = setup()
    config = EENNConfig(exits=tuple(
        ExitChoice(candidate=c, head=h, threshold=gap_threshold(s, "max_softmax", c, h, q))
        for c, h, q in exits), boundaries=boundaries)
    eenn = build_eenn(s.model, config, candidates=s.profile.candidates, heads=s.heads.heads)
    return export_eenn(eenn, out_dir=out, example=s.data["val"].tensors[0][:40],
                       platform=s.platform, costs=s.costs,
                       candidates=s.profile.candidates).manifest_path


@pytest.fixture(scope="module")
def three_tier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Exits on the MCU (int8 link out), twice on the edge, the tail in the cloud."""
    return _export(tmp_path_factory.mktemp("three"), ((0, 1, 0.8), (1, 2, 0.6), (2, 0, 0.5)),
                   (1, 3))


@pytest.fixture(scope="module")
def two_tier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The MCU relays the raw input (int8) to the edge, which runs everything."""
    return _export(tmp_path_factory.mktemp("two"), ((1, 1, 0.6),), (0, 5))


@pytest.fixture
def deploy(tmp_path: Path) -> Iterator[Callable[..., Deployment]]:
    """Start deployments; afterwards no worker process and no namespace may be left."""
    made: list[Deployment] = []

    def start(manifest: Path, **kw: object) -> Deployment:
        dep = Deployment(manifest, DeployOptions(log_dir=tmp_path / "logs", **kw))  # type: ignore[arg-type]
        made.append(dep)
        return dep.__enter__()

    yield start
    pids = [pid for dep in made for pid in dep.pids()]
    for dep in made:
        dep.__exit__(None, None, None)
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    if NETNS is None:
        assert _netns.leftovers(own=True) == []


def _x() -> np.ndarray:
    return setup().data["test"].tensors[0].numpy()


def _same_as_reference(result: StreamResult, ref: RunnerOutput) -> None:
    a = result.answers
    assert (a["status"] == w.OK).all() and result.duplicates == 0
    np.testing.assert_array_equal(a["pred"], ref.prediction)
    np.testing.assert_array_equal(a["exit"], ref.exit)
    np.testing.assert_array_equal(a["tier"], ref.device)


def _report(manifest: Path, result: StreamResult, ref: RunnerOutput, mode: str) -> dict:
    return deploy_report(manifest=json.loads(manifest.read_text()), result=result,
                         labels=setup().data["test"].tensors[1].numpy(), reference=ref,
                         reference_float=None, times=None, mode=mode, shaped=False,
                         propagation=False)


# --- frames ------------------------------------------------------------------------------------


def test_int8_and_fp16_wire_precision() -> None:
    x = np.random.default_rng(0).standard_normal((5, 3, 4)).astype(np.float32) * [[[3.0]]]
    q, scale, zero = w.encode_tensor(x, 8)
    assert q.dtype == np.int8 and q.nbytes == x.size
    assert np.abs(w.decode_tensor(q, scale, zero) - x).max() <= scale.max() / 2 + 1e-6
    # per sample: a sample's encoding does not depend on its batch
    np.testing.assert_array_equal(w.encode_tensor(x[2:3], 8)[0], q[2:3])
    h, _, _ = w.encode_tensor(x, 16)
    assert h.dtype == np.float16 and h.nbytes == 2 * x.size
    assert w.encode_tensor(x, 32)[0].nbytes == 4 * x.size
    with pytest.raises(ValueError, match="activation_bits 64"):
        w.wire_dtype(64)


def test_frames_round_trip_and_bad_frames_are_one_line_errors() -> None:
    session = b"12345678"
    meta = np.zeros(2, w.META)
    meta["id"] = [7, 9]
    trace = np.zeros((2, 1), w.TRACE)
    tensor = np.ones((2, 3, 4), np.float16)
    frames = w.encode(w.DATA, session=session, sender=0, meta=meta, trace=trace, tensor=tensor)
    msg = w.decode(frames, session=session, shape=(3, 4))
    assert msg.meta["id"].tolist() == [7, 9] and msg.tensor is not None
    assert msg.payload_bytes == 2 * 12 * 2 and msg.tensor.dtype == np.float16
    bad_version = bytearray(frames[0])
    bad_version[4] = 2
    cases = {
        "bad magic": [b"garbage bytes that are long enough to be a header"],
        "header of 3 bytes": [b"abc"],
        "protocol version 2": [bytes(bad_version), *frames[1:]],
        "unexpected peer": w.encode(w.DATA, session=b"87654321", sender=0, meta=meta,
                                    trace=trace, tensor=tensor),
        "tensor shape": frames,  # checked against (4, 3) below
        "expected 4": frames[:3],
        "tensor frame has": [*frames[:3], frames[3][:-1]],
    }
    for why, fr in cases.items():
        with pytest.raises(w.FrameError, match=why) as err:
            w.decode(fr, session=session, shape=(4, 3) if why == "tensor shape" else (3, 4))
        assert "\n" not in str(err.value)


def test_credits_bound_the_samples_in_flight() -> None:
    """A sender holds at most ``window`` samples until the receiver returns credits."""
    from search.deploy._link import Receiver, Sender

    ctx: zmq.Context = zmq.Context()
    session = b"abcdefgh"
    recv = Receiver(ctx, "tcp://127.0.0.1:0", session=session, tier=1, expect_sender=0,
                    shape=(2,))
    send = Sender(ctx, recv.endpoint, session=session, tier=0, window=3, timeout_s=30)
    try:
        assert send.wait_up(5.0) and send.free() == 3
        for i in range(3):
            meta = np.zeros(1, w.META)
            meta["id"] = i
            assert send.send(meta=meta, trace=np.zeros((1, 1), w.TRACE),
                             tensor=np.zeros((1, 2), np.float32))
        assert send.free() == 0  # the window is full: the caller must hold further samples
        got: list = []
        for _ in range(100):
            got += recv.receive()
            if len(got) == 3:
                break
            recv.sock.poll(50)
        assert len(got) == 3
        recv.credit(got[0][0], np.asarray([0, 1], np.uint64))
        for _ in range(100):
            send.sock.poll(50)
            send.on_credit()
            if send.free() == 2:
                break
        assert send.free() == 2 and set(send.inflight) == {2}
    finally:
        send.close()
        recv.close()
        ctx.term()


# --- deployments -------------------------------------------------------------------------------


def test_two_tier_on_loopback_answers_like_the_reference_runner(
        two_tier: Path, deploy: Callable[..., Deployment]) -> None:
    x = _x()
    ref = run_manifest(two_tier, x, wire=True)
    dep = deploy(two_tier)
    assert dep.n_tiers == 2 and dep.mode == "loopback"
    for window in (1, 16):
        result = dep.stream(x, window=window)
        _same_as_reference(result, ref)
    doc = _report(two_tier, result, ref, dep.mode)
    (link,) = doc["links"]
    assert link["payload_bytes_per_sample"] == link["manifest_bytes_sent"] == 2 * 10 * 10
    assert link["payload_equals_manifest"] and link["framing_bytes_per_sample"] > 0
    assert doc["answers"]["answered_once"] == len(x) and doc["reference_runner"][
        "prediction_mismatches"] == 0
    assert doc["latency_s"]["ok"]["p50"] > 0 and sum(doc["exit_fractions"]) == pytest.approx(1)


def test_three_tier_on_loopback_answers_like_the_reference_runner(
        three_tier: Path, deploy: Callable[..., Deployment]) -> None:
    x = _x()
    ref = run_manifest(three_tier, x, wire=True)
    result = deploy(three_tier).stream(x, window=8)
    _same_as_reference(result, ref)
    assert len(set(result.answers["tier"].tolist())) == 3  # every tier answers some
    doc = _report(three_tier, result, ref, "loopback")
    m = json.loads(three_tier.read_text())
    assert [lk["payload_bytes_per_sample"] for lk in doc["links"]] == [
        lk["tensor"]["bytes_sent"] for lk in m["links"]]
    assert doc["tiers"][0]["samples"] == len(x)


@pytest.mark.skipif(NETNS is not None, reason=f"namespaces unavailable: {NETNS}")
def test_three_tier_in_namespaces_with_shaped_links(
        three_tier: Path, deploy: Callable[..., Deployment]) -> None:
    x = _x()[:40]
    ref = run_manifest(three_tier, x, wire=True)
    dep = deploy(three_tier, netns=True)
    assert dep.mode == "netns" and dep.plan is not None and len(_netns.leftovers(own=True)) >= 3
    assert dep.plan.shaping[0].rate_bits_per_s == 1e6 and dep.plan.shaping[0].mtu < 1500
    before = _netns.wire_bytes(dep.plan.namespaces[0], dep.plan.interfaces[0])
    result = dep.stream(x, window=4)
    sent = _netns.wire_bytes(dep.plan.namespaces[0], dep.plan.interfaces[0]) - before
    _same_as_reference(result, ref)
    crossed = int((result.trace["t_in"][:, 1] > 0).sum())
    assert sent > crossed * 600  # the int8 activation and more: headers on the wire
    # 600 B at 1 Mbit/s plus 10 ms of added latency: a crossing takes at least 10 ms
    far = result.answers["tier"] > 0
    assert (result.t_answer - result.t_send)[far].min() > 0.010


def _most_in_flight(trace: np.ndarray, link: int) -> int:
    """Most samples sent over ``link`` and not yet through the next tier, at any time."""
    crossed = trace["t_in"][:, link + 1] > 0
    ev = np.concatenate([np.stack([trace["t_out"][crossed, link], np.ones(crossed.sum())], 1),
                         np.stack([trace["t_out"][crossed, link + 1], -np.ones(crossed.sum())],
                                  1)])
    ev = ev[np.lexsort((ev[:, 1], ev[:, 0]))]  # a departure before an arrival at the same time
    return int(np.cumsum(ev[:, 1]).max())


@pytest.mark.skipif(NETNS is not None, reason=f"namespaces unavailable: {NETNS}")
def test_a_slow_link_holds_its_sender_to_the_window(
        three_tier: Path, deploy: Callable[..., Deployment]) -> None:
    """16 samples in flight from the client, 3 credits on the 1 Mbit/s link: never more."""
    x = _x()[:60]
    dep = deploy(three_tier, netns=True, link_window=3)
    result = dep.stream(x, window=16)
    assert (result.answers["status"] == w.OK).all()
    assert _most_in_flight(result.trace, 0) == 3  # the window fills and holds


def test_without_namespaces_it_says_so_and_stays_on_loopback(
        two_tier: Path, deploy: Callable[..., Deployment], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(_netns, "unavailable", lambda: "not running as root")
    dep = deploy(two_tier, netns=True)
    assert dep.plan is None
    assert dep.mode == "loopback (namespaces unavailable: not running as root)"
    assert "running on loopback" in capsys.readouterr().err
    x = _x()[:20]
    _same_as_reference(dep.stream(x, window=4), run_manifest(two_tier, x, wire=True))


@pytest.mark.skipif(NETNS is not None, reason=f"namespaces unavailable: {NETNS}")
def test_a_failing_tc_falls_back_to_loopback_and_leaves_nothing(
        two_tier: Path, deploy: Callable[..., Deployment], monkeypatch: pytest.MonkeyPatch) -> None:
    def no_tbf(ns: str, *args: str) -> None:
        raise _netns.NetnsError("tc qdisc add ... failed: Error: Specified qdisc kind is unknown.")

    monkeypatch.setattr(_netns, "_tc", no_tbf)
    dep = deploy(two_tier, netns=True)
    assert dep.plan is None and "qdisc kind is unknown" in dep.mode
    assert _netns.leftovers(own=True) == []


@pytest.mark.skipif(NETNS is not None, reason=f"namespaces unavailable: {NETNS}")
def test_namespaces_are_removed_when_a_start_fails(tmp_path: Path, three_tier: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(three_tier.parent, broken)
    (broken / "stage3_cloud.onnx").write_bytes(b"not onnx")
    with pytest.raises(DeployError, match="tier 2 worker exited"):
        Deployment(broken / "manifest.json",
                   DeployOptions(netns=True, log_dir=tmp_path)).__enter__()
    assert _netns.leftovers(own=True) == []


def test_bad_frames_are_rejected_and_the_worker_keeps_serving(
        three_tier: Path, deploy: Callable[..., Deployment]) -> None:
    dep = deploy(three_tier)
    m = json.loads(three_tier.read_text())
    shape = tuple(m["links"][0]["tensor"]["shape"][1:])
    meta = np.zeros(1, w.META)
    good = w.encode(w.DATA, session=dep.session, sender=0, meta=meta,
                    trace=np.zeros((1, 1), w.TRACE), tensor=np.zeros((1, *shape), np.int8))
    hello = w.encode(w.HELLO, session=dep.session, sender=0)
    wrong_shape = w.encode(w.DATA, session=dep.session, sender=0, meta=meta,
                           trace=np.zeros((1, 1), w.TRACE), tensor=np.zeros((1, 3), np.int8))
    v2 = bytearray(good[0])
    v2[4] = 2
    messages = [[b"\x00garbage, long enough to be read as a header"], [bytes(v2), *good[1:]],
                w.encode(w.HELLO, session=b"intruder", sender=0), good,  # data before hello
                hello, wrong_shape, w.encode(w.HELLO, session=dep.session, sender=5)]
    ctx: zmq.Context = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.connect(dep.endpoints[1])
    for frames in messages:
        sock.send_multipart(frames)
    x = _x()
    result = dep.stream(x, window=8)  # the tier still serves, and served nobody else
    sock.close(0)
    ctx.term()
    _same_as_reference(result, run_manifest(three_tier, x, wire=True))
    lines = [ln for ln in dep.log_path(1).read_text().splitlines() if "rejected" in ln]
    assert len(lines) == 6, lines  # one line per bad message (the valid hello is not one)
    for text in ("bad magic", "version 2", "not this deployment's", "data before hello",
                 "tensor shape [3]", "sender tier 5"):
        assert sum(text in ln for ln in lines) == 1, text


@pytest.mark.slow
@pytest.mark.parametrize("tier", [1, 2])
def test_killing_a_tier_mid_stream_answers_every_sample_once(
        three_tier: Path, deploy: Callable[..., Deployment], tier: int) -> None:
    """4000 samples at 1000/s; the tier dies at 0.5 s and is back from 1 s on."""
    x = np.concatenate([_x()] * 45)[:4000]
    dep = deploy(three_tier)
    result = dep.stream(x, window=64, rate=1000.0,
                        faults=[Fault(at_s=0.5, tier=tier, action="kill"),
                                Fault(at_s=1.0, tier=tier, action="restart")])
    a = result.answers
    assert len(a) == 4000 and (a["id"] == np.arange(4000)).all()
    assert np.isfinite(result.t_answer).all() and not (a["status"] == TIMEOUT).any()
    # one answer each reached the caller; a second one is possible only for a sample the
    # tier answered in the instant before it died (its credit lost): dropped and counted
    assert result.duplicates <= 5
    degraded = a["status"] == w.DEGRADED
    assert degraded.sum() > 0 and (a["tier"][degraded] < tier).all()
    # every sample that reached the dead tier had passed an exit upstream: none failed
    assert not (a["status"] == w.FAILED).any()
    assert any(f"tier {tier} ready" in e for e in result.events)
    ref = run_manifest(three_tier, x[-500:], wire=True)  # service resumed after the restart
    assert (a["status"][-500:] == w.OK).all()
    np.testing.assert_array_equal(a["pred"][-500:], ref.prediction)


@pytest.mark.slow
@pytest.mark.skipif(NETNS is not None, reason=f"namespaces unavailable: {NETNS}")
def test_killing_a_tier_in_namespaces_answers_every_sample_once(
        three_tier: Path, deploy: Callable[..., Deployment]) -> None:
    x = np.concatenate([_x()] * 7)[:600]
    dep = deploy(three_tier, netns=True)
    result = dep.stream(x, window=16, rate=200.0,
                        faults=[Fault(at_s=0.8, tier=1, action="kill"),
                                Fault(at_s=1.4, tier=1, action="restart")])
    a = result.answers
    assert np.isfinite(result.t_answer).all() and result.duplicates <= 5
    assert (a["status"] == w.DEGRADED).sum() > 0 and not (a["status"] >= w.FAILED).any()
    assert (a["status"][-100:] == w.OK).all()


@pytest.mark.slow
def test_killing_the_tier_after_a_relay_fails_explicitly(
        two_tier: Path, deploy: Callable[..., Deployment]) -> None:
    x = np.concatenate([_x()] * 23)[:2000]
    result = deploy(two_tier).stream(x, window=32, rate=1000.0,
                                     faults=[Fault(at_s=0.5, tier=1, action="kill")])
    a = result.answers
    assert np.isfinite(result.t_answer).all() and result.duplicates <= 5
    failed = a["status"] == w.FAILED
    assert failed.sum() > 1000 and (a["status"][~failed] == w.OK).all()  # no exit to fall to
    assert (a["pred"][failed] == -1).all()


# --- errors ------------------------------------------------------------------------------------


def test_manifest_errors_are_one_line(tmp_path: Path, three_tier: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        check_manifest(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DeployError, match="not JSON"):
        check_manifest(tmp_path / "bad.json")
    copy = tmp_path / "copy"
    shutil.copytree(three_tier.parent, copy)
    (copy / "stage1_edge.onnx").unlink()
    with pytest.raises(DeployError, match=r"stage1_edge\.onnx is missing"):
        check_manifest(copy / "manifest.json")
    with pytest.raises(DeployError, match=r"uses device\(s\) \['mcu', 'edge', 'cloud'\]"):
        check_manifest(three_tier, devices=["mcu", "edge"])
    whole = tmp_path / "whole"
    shutil.copytree(three_tier.parent, whole)
    m = json.loads(three_tier.read_text())
    del m["links"][1]["bandwidth_bits_per_s"]
    (whole / "key.json").write_text(json.dumps(m))
    with pytest.raises(DeployError, match="lacks or garbles 'bandwidth_bits_per_s'"):
        check_manifest(whole / "key.json")
    m = json.loads(three_tier.read_text())
    m["stages"][0]["device"] = 7
    (tmp_path / "dev.json").write_text(json.dumps(m))
    with pytest.raises(DeployError, match="runs on device 7"):
        check_manifest(tmp_path / "dev.json")


def test_an_int8_stage_sends_its_own_scale_exactly(
        tmp_path: Path, three_tier: Path, deploy: Callable[..., Deployment]) -> None:
    """The MCU's int8 graph ends in DequantizeLinear: its grid goes on the wire, losslessly."""
    from search.deploy._quantize import quantize_manifest

    folder = tmp_path / "int8"
    shutil.copytree(three_tier.parent, folder)
    q = quantize_manifest(folder / "manifest.json", setup().data["val"].tensors[0].numpy())
    manifest = json.loads(q.read_text())
    scale = w.sending_scale(manifest, folder, 0)
    assert scale is not None and scale[0] > 0
    assert w.sending_scale(manifest, folder, 1) is None  # a float32 device
    x = _x()
    plain = run_manifest(q, x)
    result = deploy(q).stream(x, window=8)
    _same_as_reference(result, plain)  # as if the activation had not left the graph
