"""Reference runner: execute an exported EENN manifest with onnxruntime, stage after stage.

It is what a deployment does, written plainly: every stage's ONNX graph is run
on the samples still in flight, the exit decision is taken in numpy from the
head's logits (the same confidence formulas as :func:`evaluators.tables.exit_scores`,
in float32), the samples that exit leave, the rest carry the stage's
activation to the next stage (on the same device or across a link).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["ManifestRunner", "RunnerOutput", "numpy_scores", "run_manifest"]


@dataclass(frozen=True, kw_only=True, eq=False)
class RunnerOutput:
    """Per-sample prediction, exit index (K = backbone classifier) and finishing device."""

    prediction: NDArray[np.int64]
    exit: NDArray[np.int64]
    device: NDArray[np.int64]
    confidence: NDArray[np.float32]


def numpy_scores(
    logits: NDArray[Any], metric: str
) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
    """``(prediction, confidence)`` of float32 logits ``(N, K)``, "higher is surer".

    max_softmax: top-1 probability; entropy: ``1 - H(p) / log K``; margin:
    top-1 minus top-2 probability.
    """
    z = np.asarray(logits, dtype=np.float32)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    p = e / e.sum(axis=1, keepdims=True)
    pred = z.argmax(axis=1).astype(np.int64)
    if metric == "max_softmax":
        conf = p.max(axis=1)
    elif metric == "margin":
        top = -np.sort(-p, axis=1)
        conf = top[:, 0] - (top[:, 1] if p.shape[1] > 1 else np.float32(0.0))
    elif metric == "entropy":
        with np.errstate(divide="ignore", invalid="ignore"):
            h = -np.where(p > 0, p * np.log(p), np.float32(0.0)).sum(axis=1)
        conf = np.float32(1.0) - h / np.float32(np.log(max(p.shape[1], 2)))
    else:
        raise ValueError(f"manifest metric {metric!r} is not max_softmax, entropy or margin")
    return pred, conf.astype(np.float32)


def _sessions(manifest: dict[str, Any], folder: Path, threads: int | None = None) -> list[Any]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads is not None:  # pinned (profiling, timing); None: onnxruntime's default
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    return [ort.InferenceSession(str(folder / s["file"]), opts, providers=["CPUExecutionProvider"])
            for s in manifest["stages"]]


class ManifestRunner:
    """A manifest's sessions, loaded once, and the stage loop (:func:`run_manifest`)."""

    def __init__(self, manifest_path: Path, *, threads: int | None = None) -> None:
        manifest_path = Path(manifest_path)
        self.manifest: dict[str, Any] = json.loads(manifest_path.read_text())
        self.sessions = _sessions(self.manifest, manifest_path.parent, threads)

    def run(self, x: NDArray[Any], *, batch_size: int = 256) -> RunnerOutput:
        """Run the exported EENN on inputs ``x`` (N, *input shape)."""
        manifest, sessions = self.manifest, self.sessions
        metric = manifest["decision"]["metric"]
        n_exits = len(manifest["exits"])
        n = len(x)
        pred = np.zeros(n, dtype=np.int64)
        taken = np.full(n, n_exits, dtype=np.int64)
        device = np.zeros(n, dtype=np.int64)
        conf = np.zeros(n, dtype=np.float32)
        for lo in range(0, n, batch_size):
            alive = np.arange(lo, min(lo + batch_size, n))
            h = np.ascontiguousarray(x[lo : lo + batch_size], dtype=np.float32)
            for stage, sess in zip(manifest["stages"], sessions, strict=True):
                if not len(alive):
                    break
                got = sess.run(stage["outputs"], {stage["input"]["name"]: h})
                outs = dict(zip(stage["outputs"], got, strict=True))
                act = outs.get(stage["activation"]) if stage["activation"] else None
                if stage["logits"] is None:
                    h = act  # type: ignore[assignment]
                    continue
                p, c = numpy_scores(outs[stage["logits"]], metric)
                leave = (np.ones(len(c), dtype=bool) if stage["final"]
                         else c >= np.float32(stage["exit"]["threshold"]))
                idx = alive[leave]
                pred[idx], conf[idx], device[idx] = p[leave], c[leave], stage["device"]
                taken[idx] = n_exits if stage["final"] else stage["exit"]["index"]
                alive = alive[~leave]
                if act is not None:
                    h = np.ascontiguousarray(act[~leave])
        return RunnerOutput(prediction=pred, exit=taken, device=device, confidence=conf)


def run_manifest(manifest_path: Path, x: NDArray[Any], *, batch_size: int = 256) -> RunnerOutput:
    """Run the exported EENN of ``manifest_path`` on inputs ``x`` (N, *input shape)."""
    return ManifestRunner(manifest_path).run(x, batch_size=batch_size)
