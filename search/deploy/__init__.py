"""Deployment: a run folder's points as real EENNs, measured and exported.

``python -m search.deploy.evaluate RUN`` runs points with true early exit on val
and test (:mod:`search.deploy.evaluate`); ``python -m search.deploy.export RUN``
writes per-device ONNX graphs and a manifest (:mod:`search.deploy.export`);
``python -m search.deploy RUN`` deploys one as one process per tier and streams samples
through it (:mod:`search.deploy.stream`, :mod:`search.deploy.distributed`).
Each reads a run folder; the search side (``search`` outside this package,
``spaces``, ``evaluators``) never imports this package.

The names below load on first use (PEP 562): an eager import here would import
``search.deploy.evaluate`` before ``python -m`` runs it as ``__main__``, which
``runpy`` warns about, and would make ``import search.deploy`` pay for torch
and onnxruntime.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from search.deploy._onnx_runner import RunnerOutput, run_manifest
    from search.deploy._quantize import MANIFEST_INT8, agreement, quantize_manifest
    from search.deploy.distributed import DeployError, Deployment, DeployOptions, Fault
    from search.deploy.evaluate import compare_exits, evaluate_run, predicted_exits
    from search.deploy.export import ExportError, ExportResult, export_eenn, export_point
    from search.deploy.runtime import (
        EENN,
        EENNOutput,
        RunRecord,
        RuntimeBuildError,
        Stage,
        build_eenn,
        run_dataset,
        split_graph,
    )

__all__ = [
    "EENN",
    "MANIFEST_INT8",
    "DeployError",
    "DeployOptions",
    "Deployment",
    "EENNOutput",
    "ExportError",
    "ExportResult",
    "Fault",
    "RunRecord",
    "RunnerOutput",
    "RuntimeBuildError",
    "Stage",
    "agreement",
    "build_eenn",
    "compare_exits",
    "evaluate_run",
    "export_eenn",
    "export_point",
    "predicted_exits",
    "quantize_manifest",
    "run_dataset",
    "run_manifest",
    "split_graph",
]

_HOME = {
    **dict.fromkeys(("EENN", "EENNOutput", "RunRecord", "RuntimeBuildError", "Stage",
                     "build_eenn", "run_dataset", "split_graph"), "runtime"),
    **dict.fromkeys(("compare_exits", "evaluate_run", "predicted_exits"), "evaluate"),
    **dict.fromkeys(("ExportError", "ExportResult", "export_eenn", "export_point"), "export"),
    **dict.fromkeys(("MANIFEST_INT8", "agreement", "quantize_manifest"), "_quantize"),
    **dict.fromkeys(("RunnerOutput", "run_manifest"), "_onnx_runner"),
    **dict.fromkeys(("DeployError", "DeployOptions", "Deployment", "Fault"), "distributed"),
}


def __getattr__(name: str) -> Any:
    """Import the submodule that defines ``name`` and hand out its object."""
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value
