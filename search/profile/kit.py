"""Write a profiling kit: every segment and head of a model as ONNX, plus the profiler.

``python -m search.profile +profile.kit=true``, ``python -m search.deploy.export RUN
--profile-kit`` or :func:`write_kit` write ``kit.json``, ``segment<s>.onnx`` (input ->
candidate 0, ..., last candidate -> logits), ``head<c>_<h>.onnx`` (head ``h`` at candidate
``c`` with its pooling as matrix products, as :mod:`search.deploy.export` exports heads),
``pair<c>.onnx`` (segments ``c`` and ``c+1`` as one graph: what a stage without an exit at
candidate ``c`` saves), with ``int8`` also their QDQ int8 graphs (calibrated on the kit's
inputs, as ``search.deploy.export --int8`` quantises stages),
``nop.onnx``, ``inputs.npy`` (real samples) and ``profile_kit.py``, the single-file profiler
that needs only numpy and onnxruntime (:mod:`search.deploy._profile_kit`).
"""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from evaluators.graph import trace
from evaluators.heads import ExitHead
from search.deploy import _profile_kit
from search.deploy._pooling import MatrixPool
from search.deploy.runtime import split_graph
from search.profile._subject import ProfileSubject

__all__ = ["KIT_FORMAT", "ProfileSubject", "write_kit"]

KIT_FORMAT = _profile_kit.KIT_FORMAT
_OPSET = 17


class _HeadPiece(nn.Module):
    """A head on the raw activation, pooling with matrices (exportable for any size)."""

    def __init__(self, head: nn.Module, act_shape: Sequence[int]) -> None:
        super().__init__()
        self.head = head
        self.pool = MatrixPool(act_shape, head.pool) if isinstance(head, ExitHead) else None

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.head(self.pool(x) if self.pool is not None else x)
        return out


class _Nop(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x * 1.0





def _export(module: nn.Module, x: Tensor, path: Path) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (x,), str(path), input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
                          opset_version=_OPSET, dynamo=False)


def _quantize(src: Path, dst: Path, x: Tensor) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from search.deploy._quantize import _Batches

    logging.disable(logging.WARNING)  # the quantiser's "consider pre-processing" advice, per call
    try:
        quantize_static(str(src), str(dst), _Batches("x", x.numpy()),
                        quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax,
                        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
    finally:
        logging.disable(logging.NOTSET)


def write_kit(subject: ProfileSubject, out: Path, *, int8: bool = False,
              samples: int = 64) -> Path:
    """Write the kit of ``subject`` into ``out``; return the folder."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    x = subject.x[:samples].float().cpu().contiguous()
    segments = split_graph(trace(subject.model.eval()), list(subject.candidates))
    acts = [x]
    with torch.no_grad():
        for seg in segments:
            acts.append(seg(acts[-1]))
    files: dict[str, Any] = {"fp32": {"segments": [], "heads": [], "pairs": []}}
    if int8:
        files["int8"] = {"segments": [], "heads": [], "pairs": []}
    for s, seg in enumerate(segments):
        _piece(seg, acts[s], out, f"segment{s}", files, "segments", int8)
    for s in range(len(segments) - 1):  # what merging two segments into one graph saves
        pair = nn.Sequential(segments[s], segments[s + 1])
        _piece(pair, acts[s], out, f"pair{s}", files, "pairs", int8)
    for c in range(len(subject.candidates)):
        for key in files:
            files[key]["heads"].append([])
        for h in range(len(subject.heads)):
            piece = _HeadPiece(subject.head_modules[(c, h)], acts[c + 1].shape[1:])
            _piece(piece, acts[c + 1], out, f"head{c}_{h}", files, "heads", int8, row=c)
    _export(_Nop(), torch.zeros(2, 1), out / "nop.onnx")
    np.save(out / "inputs.npy", x.numpy())
    meta = {"format": KIT_FORMAT, "weights_hash": subject.weights_hash,
            "candidates": list(subject.candidates), "heads": list(subject.heads),
            "head_family": subject.head_family, "num_classes": int(acts[-1].shape[1]),
            "inputs": "inputs.npy", "nop": "nop.onnx", "files": files}
    (out / "kit.json").write_text(json.dumps(meta, indent=1))
    shutil.copyfile(_profile_kit.__file__, out / "profile_kit.py")
    return out


def _piece(module: nn.Module, x: Tensor, out: Path, name: str,
           files: Mapping[str, dict[str, Any]], kind: str, int8: bool,
           row: int | None = None) -> None:
    """Export one piece (and its int8 graph) and list it under ``files[precision][kind]``."""
    path = out / f"{name}.onnx"
    _export(module, x, path)
    entries = [("fp32", path.name)]
    if int8:
        _quantize(path, out / f"{name}.int8.onnx", x)
        entries.append(("int8", f"{name}.int8.onnx"))
    for precision, file in entries:
        target = files[precision][kind]
        (target if row is None else target[row]).append(file)
