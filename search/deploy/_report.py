"""``deploy.json``: what a distributed run measured, against the manifest and a prediction.

Bytes per link are the payload frames as they arrived on the socket (framing apart: the
header, per-sample records, per-hop traces and ZMTP frame headers, reported beside), compared
with the manifest's ``bytes_sent``. Latency is the client's clock from sending a sample to
receiving its answer. The prediction prices each answered sample's own path: the stages it ran,
each timed alone on this host with onnxruntime at batch 1 (:func:`stage_times`), plus, for each
link it crossed, the link model ``bytes * 8 / bandwidth + latency`` where the link is shaped
(namespaces), nothing where it is loopback.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from search.deploy import _wire as w
from search.deploy._onnx_runner import RunnerOutput

__all__ = ["FORMAT", "deploy_report", "predicted_latency", "stage_times"]

FORMAT = "eenn-deploy/1"
_STATUS = {w.OK: "ok", w.DEGRADED: "degraded", w.FAILED: "failed", 3: "timeout"}


def stage_times(manifest_path: Path, x: NDArray[Any], *, repeats: int = 30) -> list[float]:
    """Median seconds of each stage's graph on one sample (batch 1, one thread)."""
    import onnxruntime as ort

    path = Path(manifest_path)
    m = json.loads(path.read_text())
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    h = np.ascontiguousarray(x[:1], np.float32)
    out = []
    for st in m["stages"]:
        sess = ort.InferenceSession(str(path.parent / st["file"]), opts,
                                    providers=["CPUExecutionProvider"])
        feed = {st["input"]["name"]: h}
        got = sess.run(st["outputs"], feed)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            sess.run(st["outputs"], feed)
            times.append(time.perf_counter() - t0)
        out.append(float(np.median(times)))
        if st["activation"]:
            h = got[st["outputs"].index(st["activation"])]
    return out


def predicted_latency(manifest: Mapping[str, Any], times: Sequence[float], exits: NDArray[Any],
                      *, shaped: bool, propagation: bool,
                      link_bytes: Sequence[float] | None = None) -> NDArray[np.float64]:
    """Per sample: the timed stages up to its exit plus the links to its exit's device
    (each link's bytes: the manifest's ``bytes_sent``, or ``link_bytes``)."""
    stages = manifest["stages"]
    n_exits = len(manifest["exits"])
    upto = {(n_exits if st["final"] else st["exit"]["index"]): j
            for j, st in enumerate(stages) if st["final"] or st["exit"] is not None}
    cum = np.cumsum(times)
    used = [lk for lk in manifest["links"] if lk.get("used")]
    sizes = link_bytes or [lk["tensor"]["bytes_sent"] for lk in used]
    link_s = [(b * 8 / lk["bandwidth_bits_per_s"] if shaped else 0.0)
              + (lk["latency_s"] if propagation else 0.0) for lk, b in zip(used, sizes,
                                                                           strict=False)]
    out = np.full(len(exits), np.nan)
    for k, j in upto.items():
        dev = int(stages[j]["device"])
        out[exits == k] = cum[j] + sum(link_s[:dev])
    return out


def _pct(v: NDArray[Any]) -> dict[str, float | None]:
    if not len(v):
        return {"mean": None, "p50": None, "p95": None, "p99": None}
    return {"mean": float(v.mean()), **{f"p{q}": float(np.percentile(v, q)) for q in (50, 95, 99)}}


def _per(total: int | None, n: int) -> float | None:
    return None if total is None or not n else total / n


def _links(manifest: Mapping[str, Any], trace: NDArray[Any], reached: NDArray[Any],
           wire: Sequence[int | None]) -> list[dict[str, Any]]:
    out = []
    for i, lk in enumerate(manifest["links"][: trace.shape[1] - 1]):
        crossed = reached > i
        got = trace[crossed, i + 1]
        payload = sorted(set(got["bytes_in"].tolist()))
        # sent by one tier to received by the next (a receiver's added latency comes after)
        moved = trace[crossed, i + 1]["t_in"] - trace[crossed, i]["t_out"]
        out.append({
            "name": lk["name"], "from": lk["from"], "to": lk["to"],
            "samples": int(crossed.sum()),
            "payload_bytes_per_sample": payload[0] if len(payload) == 1 else (payload or None),
            "manifest_bytes_sent": lk["tensor"]["bytes_sent"],
            "payload_equals_manifest": (payload == [lk["tensor"]["bytes_sent"]]
                                        if payload else None),  # None: no sample crossed
            "framing_bytes_per_sample": float(got["framing_in"].mean()) if len(got) else None,
            "wire_bytes_per_sample": _per(wire[i], int(crossed.sum())),
            "transfer_s": _pct(moved),
            "model_serialisation_s": lk["tensor"]["bytes_sent"] * 8 / lk["bandwidth_bits_per_s"],
            "model_latency_s": lk["latency_s"],
        })
    return out


def _med(v: NDArray[Any]) -> float | None:
    return float(np.median(v)) if len(v) else None


def _breakdown(result: Any, reached: NDArray[Any], ok: NDArray[Any]) -> dict[str, Any]:
    """Medians of where an answered sample's time went (client clock and tier traces)."""
    tr = result.trace
    last = np.clip(reached, 0, None)
    rows = np.arange(len(tr))
    out: dict[str, Any] = {
        "client_to_tier0": _med(tr[ok, 0]["t_in"] - result.t_send[ok]),
        "last_tier_to_client": _med((result.t_answer - tr[rows, last]["t_out"])[ok]),
    }
    for t in range(tr.shape[1]):
        here = ok & (reached >= t)
        res = tr[here, t]["t_out"] - tr[here, t]["t_in"]
        out[f"tier{t}_compute"] = _med(tr[here, t]["compute_s"].astype(np.float64))
        out[f"tier{t}_other"] = _med(res - tr[here, t]["compute_s"])  # queue, decode, delay
        if t:
            out[f"link{t - 1}_transfer"] = _med(tr[here, t]["t_in"] - tr[here, t - 1]["t_out"])
    return out


def _tiers(manifest: Mapping[str, Any], trace: NDArray[Any],
           reached: NDArray[Any], times: Sequence[float] | None) -> list[dict[str, Any]]:
    out = []
    for t in range(trace.shape[1]):
        dev = manifest["devices"][t]
        here = trace[reached >= t, t]["compute_s"].astype(np.float64)
        alone = (None if times is None else
                 [float(times[j]) for j, st in enumerate(manifest["stages"])
                  if st["device"] == t])
        out.append({"tier": t, "device": dev["name"], "activation_bits": dev["activation_bits"],
                    "stages": dev["stages"], "samples": len(here),
                    "compute_s_per_sample": _pct(here), "stage_s_alone_batch1": alone})
    return out


def _prediction(manifest: Mapping[str, Any], times: Sequence[float], a: NDArray[Any],
                latency: NDArray[Any], ok: NDArray[Any], links: list[dict[str, Any]], *,
                shaped: bool, propagation: bool, source: str) -> dict[str, Any]:
    """Predicted against measured latency, overall and per answering tier; where the links
    are shaped, also priced with the bytes measured on the wire (headers included)."""
    pred = predicted_latency(manifest, times, a["exit"], shaped=shaped, propagation=propagation)
    out: dict[str, Any] = {
        "how": source + (" + link model bytes*8/bandwidth" if shaped else "")
               + (" + link latency" if propagation else ""),
        "predicted": _pct(pred[ok]), "measured": _pct(latency[ok]),
        "mean_ratio_measured_to_predicted":
            float(latency[ok].mean() / pred[ok].mean()) if ok.any() else None,
        "by_answering_tier": {
            str(t): {"samples": int((ok & (a["tier"] == t)).sum()),
                     "predicted_p50": float(np.median(pred[ok & (a["tier"] == t)])),
                     "measured_p50": float(np.median(latency[ok & (a["tier"] == t)]))}
            for t in sorted(set(a["tier"][ok].tolist()))},
    }
    wire = [lk["wire_bytes_per_sample"] for lk in links]
    if shaped and wire and all(b is not None for b in wire):
        on_wire = predicted_latency(manifest, times, a["exit"], shaped=True,
                                    propagation=propagation, link_bytes=wire)
        out["predicted_with_wire_bytes"] = _pct(on_wire[ok])
        out["mean_ratio_measured_to_predicted_with_wire_bytes"] = (
            float(latency[ok].mean() / on_wire[ok].mean()) if ok.any() else None)
    return out


def deploy_report(*, manifest: Mapping[str, Any], result: Any, labels: NDArray[Any] | None,
                  reference: RunnerOutput | None, reference_float: RunnerOutput | None,
                  times: Sequence[float] | None, mode: str, shaped: bool, propagation: bool,
                  wire: Sequence[int | None] = (),
                  profile_times: Sequence[float] | None = None) -> dict[str, Any]:
    """The ``deploy.json`` document of one stream (``result``: a StreamResult);
    ``times``/``profile_times``: each stage's seconds, timed alone / priced from a profile."""
    a = result.answers
    n = len(a)
    ok = a["status"] == w.OK
    reached = (result.trace["t_in"] > 0).sum(axis=1) - 1  # the last tier a sample got to
    latency = result.t_answer - result.t_send
    n_paths = len(manifest["exits"]) + 1
    exits = np.bincount(a["exit"][a["exit"] >= 0], minlength=n_paths)
    doc: dict[str, Any] = {
        "format": FORMAT, "trial": manifest.get("trial"), "mode": mode,
        "note": "every tier computes on this host's CPU, not on the platform's device; the "
                "links are real sockets (shaped veth pairs in netns mode, else unshaped "
                "loopback); bytes per link: the payload frame as received, framing apart",
        "shaped_links": shaped, "propagation_delay_added_by_receiver": propagation,
        "samples": n, "window": result.window, "rate_per_s": result.rate,
        "answers": {**{name: int((a["status"] == code).sum()) for code, name in _STATUS.items()},
                    "answered_once": int(np.isfinite(result.t_answer).sum()),
                    "duplicates_dropped": result.duplicates,
                    "stale_dropped": result.stale},
        "latency_s": {"ok": _pct(latency[ok]), "all": _pct(latency[np.isfinite(latency)])},
        "throughput_per_s": n / result.wall_s if result.wall_s > 0 else None,
        "wall_s": result.wall_s,
        "exit_fractions": (exits / max(exits.sum(), 1)).tolist(),
        "links": _links(manifest, result.trace, reached, list(wire) or [None] * 8),
        "tiers": _tiers(manifest, result.trace, reached, times),
        "events": result.events,
    }
    if labels is not None:
        y = np.asarray(labels)
        doc["accuracy"] = float((a["pred"] == y).mean())
        doc["accuracy_ok_answers"] = float((a["pred"][ok] == y[ok]).mean()) if ok.any() else None
    for key, ref in (("reference_runner", reference),
                     ("reference_runner_float_links", reference_float)):
        if ref is not None:
            doc[key] = {"compared": int(ok.sum()),
                        "prediction_mismatches": int((a["pred"][ok] != ref.prediction[ok]).sum()),
                        "exit_mismatches": int((a["exit"][ok] != ref.exit[ok]).sum()),
                        "tier_mismatches": int((a["tier"][ok] != ref.device[ok]).sum())}
    for key, stage_s, source in (
            ("predicted_latency_s", times,
             "stages timed alone (onnxruntime, batch 1) on this host"),
            ("predicted_latency_from_profile_s", profile_times,
             "stages priced from this host's onnxruntime device profile (segments and heads, "
             "batch 1; evaluators.device_profile.stage_seconds)")):
        if stage_s is not None:
            doc[key] = _prediction(manifest, stage_s, a, latency, ok, doc["links"],
                                   shaped=shaped, propagation=propagation, source=source)
    doc["latency_breakdown_median_s"] = {
        "note": "tierN_other: its queueing, decoding, encoding and (where added) the incoming "
                "link's latency; linkN_transfer: send to receipt (shaping, TCP, ZeroMQ)",
        **_breakdown(result, reached, ok)}
    return doc
