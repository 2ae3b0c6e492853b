"""Int8 post-training quantisation of an exported EENN's stages for int8 devices.

The cost model prices a device at its ``activation_bits``; an MCU at 8 bits is assumed to
run int8 kernels (CMSIS-NN, TFLite Micro). This module makes the exported graphs say the
same: every stage on a device with ``activation_bits <= 8`` is quantised statically with
onnxruntime (QDQ format, per-channel symmetric int8 weights, int8 activations calibrated on
samples of the run's calibration split), the other stages stay float32. A second manifest,
``manifest_int8.json``, lists the mixed set so that the reference runner executes it as it
is, and records each stage's precision. Int8 is not exact: the check reports agreement
with the float32 EENN and accuracy on labelled samples, not equality.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from evaluators.eenn import exit_shares
from search import rundir
from search.deploy._onnx_runner import RunnerOutput, run_manifest

__all__ = ["MANIFEST_INT8", "agreement", "quantize_manifest"]

MANIFEST_INT8 = rundir.MANIFEST_INT8
_CALIBRATION_BATCH = 64


class _Batches:
    """An onnxruntime CalibrationDataReader over one input tensor, in batches."""

    def __init__(self, name: str, x: NDArray[np.float32]) -> None:
        self._it: Iterator[dict[str, NDArray[np.float32]]] = (
            {name: np.ascontiguousarray(x[i : i + _CALIBRATION_BATCH])}
            for i in range(0, len(x), _CALIBRATION_BATCH)
        )

    def get_next(self) -> dict[str, NDArray[np.float32]] | None:
        return next(self._it, None)


def _stage_inputs(manifest: dict[str, Any], folder: Path,
                  x: NDArray[np.float32]) -> list[NDArray[np.float32]]:
    """The input of every stage for all of ``x`` (no sample exits: calibration sees them all)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    inputs, h = [], np.ascontiguousarray(x, dtype=np.float32)
    for stage in manifest["stages"]:
        inputs.append(h)
        if stage["activation"] is None:
            break
        sess = ort.InferenceSession(str(folder / stage["file"]), opts,
                                    providers=["CPUExecutionProvider"])
        (h,) = sess.run([stage["activation"]], {stage["input"]["name"]: h})
    return inputs


def quantize_manifest(manifest_path: Path, calibration: NDArray[Any], *,
                      max_bits: int = 8) -> Path:
    """Quantise the stages on devices of at most ``max_bits`` activation bits; return the
    path of ``manifest_int8.json`` beside ``manifest_path``."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    manifest_path = Path(manifest_path)
    folder = manifest_path.parent
    manifest = json.loads(manifest_path.read_text())
    bits = {d["index"]: int(d["activation_bits"]) for d in manifest["devices"]}
    inputs = _stage_inputs(manifest, folder, np.asarray(calibration, dtype=np.float32))
    stages = []
    for stage, x in zip(manifest["stages"], inputs, strict=True):
        entry = {**stage, "precision": "float32"}
        if bits[stage["device"]] <= max_bits:
            target = Path(stage["file"]).with_suffix(".int8.onnx").name
            quantize_static(str(folder / stage["file"]), str(folder / target),
                            _Batches(stage["input"]["name"], x), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QInt8,
                            weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax,
                            extra_options={"ActivationSymmetric": False,
                                           "WeightSymmetric": True})
            entry.update({"file": target, "precision": "int8", "float32_file": stage["file"],
                          "calibration_samples": len(x)})
        stages.append(entry)
    assumes = {**manifest["costs"]["assumes"],
               "precision": f"int8 graphs (QDQ: per-channel int8 weights, int8 activations, "
                            f"min-max calibrated) on devices with activation_bits <= {max_bits}, "
                            "float32 graphs elsewhere; the costs price each device at its "
                            "activation_bits as before"}
    out = {**manifest, "stages": stages, "costs": {**manifest["costs"], "assumes": assumes},
           "devices": [{**d, "stages": [s["file"] for s in stages if s["device"] == d["index"]]}
                       for d in manifest["devices"]]}
    out.pop("verification_test", None)
    path = folder / MANIFEST_INT8
    path.write_text(json.dumps(out, indent=2))
    return path


def agreement(int8_manifest: Path, fp32: RunnerOutput, x: NDArray[Any],
              labels: NDArray[Any] | None = None) -> dict[str, Any]:
    """How often the int8 EENN takes the float32 EENN's exit and prediction on ``x``
    (``fp32``: the reference runner's output of the float32 manifest on the same ``x``)."""
    q, f = run_manifest(int8_manifest, np.asarray(x)), fp32
    n_paths = len(json.loads(Path(int8_manifest).read_text())["exits"]) + 1
    out: dict[str, Any] = {
        "samples": len(x),
        "prediction_agreement": float((q.prediction == f.prediction).mean()),
        "exit_agreement": float((q.exit == f.exit).mean()),
        "exit_fractions_float32": exit_shares(np.bincount(f.exit, minlength=n_paths))[0][0],
        "exit_fractions_int8": exit_shares(np.bincount(q.exit, minlength=n_paths))[0][0],
    }
    if labels is not None:
        y = np.asarray(labels)
        out.update({"accuracy_float32": float((f.prediction == y).mean()),
                    "accuracy_int8": float((q.prediction == y).mean())})
    return out
