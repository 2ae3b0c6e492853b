"""Per-device ONNX export of a real EENN, a deployment manifest, and its check.

``python -m search.deploy.export RUN [--point chosen|TRIAL] [--out DIR] [--int8] [--profile-kit]``

Every :class:`search.deploy.runtime.Stage` (one backbone segment and, if an exit sits
at its end, that exit's head) becomes one ONNX graph; the manifest lists them
per device in execution order. A device with two exits therefore holds two
graphs: one graph per device would have to compute all of its segments before
its first exit decision, which is not what the cost model prices. The decision
itself stays outside the graphs (a graph outputs its head's logits and the
activation to pass on); :mod:`search.deploy._onnx_runner` implements it in numpy.
Each graph is checked with onnxruntime against PyTorch on real inputs
(max abs diff <= 1e-4, fp32); the runner then replays the EENN on test and must
reproduce the PyTorch predictions and exits. ``--int8`` adds int8 graphs for the
stages on int8 devices and ``manifest_int8.json`` (see :mod:`search.deploy._quantize`).

Heads pool their input with ``adaptive_avg_pool``, which the TorchScript ONNX
exporter only supports for divisible sizes; the exported head pools with two
small averaging matrices instead (the same numbers up to float rounding).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor, nn

from evaluators.costs import BackboneCosts, device_memory, path_costs, sent_bytes
from evaluators.features import iter_batches
from evaluators.heads import ExitHead
from evaluators.platform import Platform
from search import rundir
from search._console import terminal_console
from search.deploy._onnx_runner import RunnerOutput, run_manifest
from search.deploy._pooling import MatrixPool
from search.deploy._quantize import MANIFEST_INT8, agreement, quantize_manifest
from search.deploy.runtime import EENN, Stage
from spaces.candidates import ExitCandidate

__all__ = ["ExportError", "ExportResult", "export_eenn", "export_point", "main", "run_manifest"]

MANIFEST = rundir.MANIFEST
_TOLERANCE = 1e-4


class ExportError(RuntimeError):
    """A stage could not be exported or its ONNX graph disagrees with PyTorch."""


@dataclass(frozen=True, kw_only=True)
class ExportResult:
    """Where the export went and how closely each graph matched PyTorch."""

    out_dir: Path
    manifest_path: Path
    manifest: dict[str, Any]
    max_abs_diff: tuple[float, ...]  # per stage


class _ExportStage(nn.Module):
    """A stage whose outputs are ``(logits?, activation?)`` as plain tensors."""

    def __init__(self, stage: Stage, *, act_shape: Sequence[int], emit_activation: bool) -> None:
        super().__init__()
        self.segment, self.head, self.final = stage.segment, stage.head, stage.final
        self.emit_activation = emit_activation
        head = stage.head
        self.pool = MatrixPool(act_shape, head.pool) if isinstance(head, ExitHead) else None

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        act: Tensor = self.segment(x)
        if self.final:
            return (act,)
        outs = []
        if self.head is not None:
            outs.append(self.head(self.pool(act) if self.pool is not None else act))
        if self.emit_activation:
            outs.append(act)
        return tuple(outs)


def _stage_names(eenn: EENN) -> list[dict[str, Any]]:
    """Input/output tensor names of every stage."""
    out = []
    prev = "input"
    stages = eenn.stage_list()
    for i, st in enumerate(stages):
        last = i == len(stages) - 1
        logits = ("logits" if st.final else
                  (f"exit{st.exit_index}_logits" if st.head is not None else None))
        act = None if last else st.end
        out.append({"input": prev, "logits": logits, "activation": act,
                    "outputs": [n for n in (logits, act) if n is not None]})
        prev = st.end
    return out


def _onnx_check(path: Path, x: Tensor, expected: Sequence[Tensor], names: Sequence[str],
                input_name: str) -> float:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    got = sess.run(list(names), {input_name: x.numpy()})
    diffs = [float(np.abs(g - e.numpy()).max()) if e.numel() else 0.0
             for g, e in zip(got, expected, strict=True)]
    return max(diffs, default=0.0)


def _export_stage(stage: Stage, wrapper: _ExportStage, x: Tensor, names: dict[str, Any],
                  path: Path, opset: int) -> float:
    """Export one stage, then compare onnxruntime with the PyTorch stage on ``x``."""
    dyn = {n: {0: "batch"} for n in (names["input"], *names["outputs"])}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript exporter deprecation and tracer notes
        try:
            torch.onnx.export(wrapper, (x,), str(path), input_names=[names["input"]],
                              output_names=list(names["outputs"]), dynamic_axes=dyn,
                              opset_version=opset, dynamo=False)
        except Exception as err:
            msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ExportError(f"ONNX export of the stage ending at {stage.end!r} failed: {msg}") \
                from err
    with torch.no_grad():
        act, logits = stage(x)
    expected = [t for t, n in ((logits, names["logits"]), (act, names["activation"]))
                if n is not None and t is not None]
    diff = _onnx_check(path, x, expected, names["outputs"], names["input"])
    if not diff <= _TOLERANCE:
        raise ExportError(f"{path.name}: onnxruntime differs from PyTorch by {diff:.3g} > "
                          f"{_TOLERANCE} (fp32); the exporter mistranslated an op of this stage")
    return diff


def _tensor_info(name: str, shape: Sequence[int]) -> dict[str, Any]:
    return {"name": name, "shape": [-1, *shape], "dtype": "float32",
            "bytes_fp32": 4 * int(np.prod(shape))}


def _links(eenn: EENN, platform: Platform, candidates: Sequence[ExitCandidate],
           input_shape: Sequence[int], costs: BackboneCosts) -> list[dict[str, Any]]:
    n_c = len(candidates)
    out = []
    for i, (link, b) in enumerate(zip(platform.links, eenn.config.boundaries, strict=True)):
        entry: dict[str, Any] = {"name": link.name, "from": platform.devices[i].name,
                                 "to": platform.devices[i + 1].name, "boundary": b,
                                 "used": b <= n_c,
                                 "bandwidth_bits_per_s": link.bandwidth_bits_per_s,
                                 "latency_s": link.latency_s}
        if b <= n_c:
            shape = input_shape if b == 0 else candidates[b - 1].shape
            tensor = _tensor_info("input" if b == 0 else candidates[b - 1].name, shape)
            bits = platform.devices[i].activation_bits
            sent = sent_bytes(costs, b, platform.devices[i])
            tensor.update({"sent_bits": bits, "bytes_sent": sent})
            entry["tensor"] = tensor
        out.append(entry)
    return out


def _costs(eenn: EENN, costs: BackboneCosts, platform: Platform,
           fractions: Mapping[str, Sequence[float]]) -> dict[str, Any]:
    paths = path_costs(eenn.config, costs, platform)
    where = [*(costs.candidate_names[e.candidate] for e in eenn.config.exits),
             "backbone classifier"]
    weights, peak = device_memory(eenn.config, costs, platform)
    expected = {}
    for split, frac in fractions.items():
        f = np.asarray(frac, dtype=np.float64)
        expected[split] = {"exit_fractions": list(map(float, f)),
                           "macs": float(f @ paths.macs), "energy_j": float(f @ paths.energy_j),
                           "latency_s": float(f @ paths.latency_s)}
    return {
        "assumes": {
            "precision": "each device at its activation_bits (weights and activations); "
                         "the ONNX graphs themselves are float32",
            "activation_bits": {d.name: d.activation_bits for d in platform.devices},
            "transfers": "a link carries the tensor at its sender's activation_bits",
            "per": "one sample",
        },
        "paths": [{"exit": k, "at": where[k], "device": platform.devices[int(paths.device[k])].name,
                   "macs": float(paths.macs[k]), "energy_j": float(paths.energy_j[k]),
                   "latency_s": float(paths.latency_s[k])} for k in range(len(where))],
        "expected": expected,
        "memory": {d.name: {"weight_bytes": int(weights[i]), "peak_activation_bytes": int(peak[i])}
                   for i, d in enumerate(platform.devices)},
    }


def export_eenn(
    eenn: EENN,
    *,
    out_dir: Path,
    example: Tensor,
    platform: Platform,
    costs: BackboneCosts,
    candidates: Sequence[ExitCandidate],
    fractions: Mapping[str, Sequence[float]] | None = None,
    opset: int = 17,
) -> ExportResult:
    """Export every stage of ``eenn`` to ONNX in ``out_dir`` and write ``manifest.json``.

    ``example`` (a batch of real inputs) drives the export and the check;
    ``fractions`` maps a split name to its exit fractions (K+1) for the
    manifest's expected costs.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    eenn = eenn.cpu().eval()
    stages = eenn.stage_list()
    names = _stage_names(eenn)
    shapes = {c.name: c.shape for c in candidates}
    x = example.float().cpu()
    entries, diffs = [], []
    for i, (st, nm) in enumerate(zip(stages, names, strict=True)):
        dev = platform.devices[st.device].name
        path = out_dir / f"stage{i}_{dev}.onnx"
        wrapper = _ExportStage(st, act_shape=shapes.get(st.end, ()),
                               emit_activation=nm["activation"] is not None).eval()
        diffs.append(_export_stage(st, wrapper, x, nm, path, opset))
        exit_info = None
        if st.head is not None and not st.final:
            e = eenn.config.exits[int(st.exit_index)]  # type: ignore[arg-type]
            exit_info = {"index": st.exit_index, "candidate": e.candidate, "at": st.end,
                         "head": e.head, "head_name": (costs.head_names[e.head]
                                                       if costs.head_names else str(e.head)),
                         "threshold": e.threshold}
        entries.append({
            "index": i, "file": path.name, "device": st.device, "device_name": dev,
            "input": _tensor_info(nm["input"], x.shape[1:]), "outputs": nm["outputs"],
            "logits": nm["logits"], "activation": nm["activation"], "final": st.final,
            "exit": exit_info, "max_abs_diff_vs_torch": diffs[-1],
        })
        with torch.no_grad():
            x, _ = st(x)
    manifest = _manifest(eenn, entries, platform, costs, candidates, example, fractions or {})
    path = out_dir / MANIFEST
    path.write_text(json.dumps(manifest, indent=2))
    return ExportResult(out_dir=out_dir, manifest_path=path, manifest=manifest,
                        max_abs_diff=tuple(diffs))


def _manifest(eenn: EENN, entries: list[dict[str, Any]], platform: Platform, costs: BackboneCosts,
              candidates: Sequence[ExitCandidate], example: Tensor,
              fractions: Mapping[str, Sequence[float]]) -> dict[str, Any]:
    cfg = eenn.config
    return {
        "format": "eenn-manifest/1",
        "input": {**_tensor_info("input", example.shape[1:]),
                  "note": "preprocessed exactly as the dataset the backbone was trained on"},
        "decision": {
            "metric": cfg.metric,
            "rule": "after each exit's graph: the sample leaves if confidence >= threshold "
                    "(float32); else its activation goes to the next graph",
            "confidence": {"max_softmax": "max softmax(logits)",
                           "entropy": "1 - H(softmax(logits)) / ln(K)",
                           "margin": "top-1 minus top-2 softmax probability"}[cfg.metric],
        },
        "exits": [e["exit"] for e in entries if e["exit"] is not None],
        "devices": [{"index": d, "name": dev.name, "activation_bits": dev.activation_bits,
                     "stages": [e["file"] for e in entries if e["device"] == d]}
                    for d, dev in enumerate(platform.devices)],
        "stages": entries,
        "links": _links(eenn, platform, candidates, example.shape[1:], costs),
        "config": {"exits": [vars(e) for e in cfg.exits], "boundaries": list(cfg.boundaries),
                   "metric": cfg.metric},
        "costs": _costs(eenn, costs, platform, fractions),
    }


def verify_runner(manifest_path: Path, eenn: EENN, x: Tensor) -> dict[str, Any]:
    """Replay ``x`` with the reference runner and count disagreements with PyTorch."""
    return _verify(manifest_path, eenn, x)[0]


def _verify(manifest_path: Path, eenn: EENN, x: Tensor) -> tuple[dict[str, Any], RunnerOutput]:
    """:func:`verify_runner`'s figures and the runner's own output (reused by ``--int8``)."""
    from search.deploy.runtime import run_dataset

    ref = run_dataset(eenn, torch.utils.data.TensorDataset(x, torch.zeros(len(x))))
    got: RunnerOutput = run_manifest(manifest_path, x.numpy())
    return {"samples": len(x),
            "prediction_mismatches": int((got.prediction != ref.prediction).sum()),
            "exit_mismatches": int((got.exit != ref.exit).sum()),
            "device_mismatches": int((got.device != ref.device).sum()),
            "max_confidence_diff": float(np.abs(got.confidence - ref.confidence).max())
            if len(x) else 0.0}, got


def _stack(dataset: Any) -> Tensor:
    return torch.cat([x.float() for x, _ in iter_batches(dataset, 1024)])


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; errors are one line on stderr and exit status 2."""

    from search.errors import one_line_errors

    parser = argparse.ArgumentParser(prog="python -m search.deploy.export",
                                     description="Export a run's point as per-device ONNX graphs.")
    parser.add_argument("run", type=Path, help="run folder (results/runs/<date_time>)")
    parser.add_argument("--point", "--points", dest="point", default="chosen",
                        help="chosen (default) or one trial id")
    parser.add_argument("--out", type=Path, default=None, help="default: RUN/export/trial_<id>")
    parser.add_argument("--int8", action="store_true",
                        help="also write int8 graphs for the int8 devices and manifest_int8.json")
    parser.add_argument("--profile-kit", action="store_true",
                        help="also write the portable profiling kit (every segment and head as "
                             "ONNX, fp32 and int8, and a numpy+onnxruntime profiler) to OUT/kit")
    args = parser.parse_args(argv)
    console = terminal_console()
    with one_line_errors(ExportError):
        if args.profile_kit:
            from search.deploy._loaded import load_run
            from search.profile._subject import subject_of
            from search.profile.kit import write_kit

            kit = write_kit(subject_of(load_run(args.run).prepared),
                            (args.out or Path(args.run) / "export") / "kit", int8=True)
            console.print(f"profiling kit: {kit} (on the device: python3 profile_kit.py "
                          f"{kit.name} --out profile.json)")
        result, check = export_point(args.run, point=args.point, out=args.out, int8=args.int8)
        for st in result.manifest["stages"]:
            console.print(f"{st['device_name']:>16}: {st['file']}  "
                          f"(onnxruntime vs torch max |diff| {st['max_abs_diff_vs_torch']:.2g})")
        console.print(f"reference runner on test: {check['samples']} samples, "
                      f"{check['prediction_mismatches']} prediction and "
                      f"{check['exit_mismatches']} exit mismatches vs PyTorch")
        console.print(f"manifest: {result.manifest_path}")
        if args.int8:
            int8 = json.loads((result.out_dir / MANIFEST_INT8).read_text())
            q = int8["verification_test"]
            n_q = sum(st["precision"] == "int8" for st in int8["stages"])
            console.print(f"int8 ({result.out_dir / MANIFEST_INT8}): {n_q} of "
                          f"{len(int8['stages'])} stages quantised (those on 8-bit devices); test "
                          f"accuracy {q['accuracy_int8']:.4f} vs {q['accuracy_float32']:.4f} "
                          f"float32; same prediction {q['prediction_agreement']:.1%}, same exit "
                          f"{q['exit_agreement']:.1%}")
        return 0 if check["prediction_mismatches"] == check["exit_mismatches"] == 0 else 1
    return 2


def export_point(run_dir: Path, *, point: str = "chosen", out: Path | None = None,
                 int8: bool = False) -> tuple[ExportResult, dict[str, Any]]:
    """Export one trial of a run folder and check the reference runner on its test split.

    ``int8`` also quantises the stages of int8 devices (calibrated on val) into
    ``manifest_int8.json`` and records its agreement with the float32 export on test.
    """
    from search.deploy._loaded import load_run, select_trials
    from search.deploy.runtime import build_eenn

    run = load_run(Path(run_dir))
    if point != "chosen" and not str(point).strip().lstrip("-").isdigit():
        raise ValueError(f"--point {point!r} is not 'chosen' or a trial id")
    (trial,) = select_trials(run.trials, run.chosen, str(point))
    row = run.trials.set_index("trial").loc[trial]
    config = rundir.config_from_json(str(row["config"]), where=f"{run_dir} trial {trial}")
    prep = run.prepared
    eenn = build_eenn(prep.model, config, candidates=prep.profile.candidates,
                      heads=prep.heads.heads, n_devices=prep.platform.n_devices)
    from evaluators.proxy import ProxyEvaluator

    test_scores = ProxyEvaluator(split=prep.predictions.test, costs=prep.costs,
                                 platform=prep.platform).evaluate([config])
    cands = [e.candidate for e in config.exits]
    n_test = test_scores.n_samples
    test_frac = [*(test_scores.exit_count[0, cands] / n_test), test_scores.final_count[0] / n_test]
    result = export_eenn(
        eenn, out_dir=out or rundir.export_dir(run_dir, trial),
        example=_stack(prep.data.val)[:256], platform=prep.platform, costs=prep.costs,
        candidates=prep.profile.candidates,
        fractions={"val": json.loads(str(row["exit_fractions"])), "test": test_frac},
    )
    x_test = _stack(prep.data.test)
    check, fp32 = _verify(result.manifest_path, eenn, x_test)
    manifest = {**result.manifest, "trial": trial, "verification_test": check,
                "run": {"weights_hash": run.summary.get("weights_hash"),
                        "platform": prep.platform.name}}
    result.manifest_path.write_text(json.dumps(manifest, indent=2))
    if int8:
        _int8(result.manifest_path, calibration=_stack(prep.data.val)[:512].numpy(),
              x=x_test.numpy(), fp32=fp32,
              labels=torch.cat([y for _, y in iter_batches(prep.data.test, 1024)]).numpy())
    return ExportResult(out_dir=result.out_dir, manifest_path=result.manifest_path,
                        manifest=manifest, max_abs_diff=result.max_abs_diff), check


def _int8(manifest_path: Path, *, calibration: NDArray[np.float32], x: NDArray[np.float32],
          fp32: RunnerOutput, labels: NDArray[Any]) -> None:
    """Write manifest_int8.json with its agreement with the float32 export on ``x``.

    The float32 export is complete before this runs; a failure keeps it and says so.
    """
    try:
        path = quantize_manifest(manifest_path, calibration)
    except Exception as err:  # onnxruntime's quantiser raises many types; one line for all
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ExportError(f"int8 quantisation failed ({msg}); the float32 export in "
                          f"{manifest_path.parent} is complete, use it or rerun without --int8"
                          ) from err
    manifest = json.loads(path.read_text())
    manifest["verification_test"] = agreement(path, fp32, x, labels)
    path.write_text(json.dumps(manifest, indent=2))


if __name__ == "__main__":
    sys.exit(main())
