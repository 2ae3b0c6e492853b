"""Per-stage ONNX export, manifest and the onnxruntime reference runner."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from evaluators.costs import path_costs
from evaluators.eenn import METRICS, EENNConfig, ExitChoice
from evaluators.features import pool_features
from evaluators.tables import exit_scores
from search.deploy._onnx_runner import numpy_scores, run_manifest
from search.deploy._pooling import MatrixPool as _MatrixPool
from search.deploy.export import export_eenn, verify_runner
from search.deploy.runtime import build_eenn, run_dataset
from tests.search.deploy._eenn_fixture import gap_threshold, setup


def _config() -> EENNConfig:
    """Exits at three candidates on two devices (one exit per stage), tail on the last device."""
    s = setup()
    exits = tuple(ExitChoice(candidate=c, head=h,
                             threshold=gap_threshold(s, "max_softmax", c, h, q))
                  for c, h, q in ((0, 1, 0.8), (1, 2, 0.6), (2, 0, 0.5)))
    return EENNConfig(exits=exits, boundaries=(1, 3))


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, EENNConfig]:
    s = setup()
    config = _config()
    eenn = build_eenn(s.model, config, candidates=s.profile.candidates, heads=s.heads.heads)
    out = tmp_path_factory.mktemp("export")
    result = export_eenn(eenn, out_dir=out, example=s.data["val"].tensors[0][:40],
                         platform=s.platform, costs=s.costs, candidates=s.profile.candidates,
                         fractions={"val": [0.25, 0.25, 0.25, 0.25]})
    assert max(result.max_abs_diff) <= 1e-4
    return result.manifest_path, result.manifest, config


@pytest.mark.parametrize("shape", [(6, 10, 10), (12, 5, 5), (5, 7, 4), (4, 13), (12,), (3, 2, 2)])
def test_matrix_pool_equals_pool_features(shape: tuple[int, ...]) -> None:
    x = torch.randn(3, *shape)
    torch.testing.assert_close(_MatrixPool(shape, 3)(x), pool_features(x, 3), atol=1e-6, rtol=1e-6)


def test_numpy_scores_match_exit_scores() -> None:
    logits = torch.randn(200, 7) * torch.linspace(0.1, 30, 200)[:, None]
    pred, conf = exit_scores(logits)
    for i, metric in enumerate(METRICS):
        p, c = numpy_scores(logits.numpy(), metric)
        np.testing.assert_array_equal(p, pred.numpy())
        np.testing.assert_allclose(c, conf[i].numpy(), atol=2e-6)
    with pytest.raises(ValueError, match="metric"):
        numpy_scores(logits.numpy(), "variance")


def test_manifest_describes_devices_links_exits_and_costs(exported: tuple[Path, dict, EENNConfig]
                                                          ) -> None:
    path, manifest, config = exported
    s = setup()
    assert json.loads(path.read_text()) == manifest
    names = [d.name for d in s.platform.devices]
    assert [d["name"] for d in manifest["devices"]] == names
    # stage i runs on the device of its segment; every file listed once, and it exists
    files = [f for d in manifest["devices"] for f in d["stages"]]
    assert sorted(files) == sorted(st["file"] for st in manifest["stages"])
    assert all((path.parent / f).is_file() for f in files)
    assert [st["device"] for st in manifest["stages"]] == [0, 1, 1, 2]
    assert all(st["max_abs_diff_vs_torch"] <= 1e-4 for st in manifest["stages"])
    # exits with thresholds, in order
    assert [(e["candidate"], e["head"], e["threshold"]) for e in manifest["exits"]] == [
        (e.candidate, e.head, e.threshold) for e in config.exits]
    assert manifest["decision"]["metric"] == "max_softmax"
    # links carry the activation of the candidate before the boundary, at the sender's bits
    cands = s.profile.candidates
    for link, b in zip(manifest["links"], config.boundaries, strict=True):
        t = link["tensor"]
        assert t["name"] == cands[b - 1].name and t["shape"] == [-1, *cands[b - 1].shape]
        assert t["bytes_fp32"] == 4 * int(np.prod(cands[b - 1].shape))
        sender = s.platform.devices[names.index(link["from"])]
        assert t["bytes_sent"] == int(np.prod(cands[b - 1].shape)) * sender.activation_bits // 8
    paths = path_costs(config, s.costs, s.platform)
    assert [p["macs"] for p in manifest["costs"]["paths"]] == paths.macs.tolist()
    assert manifest["costs"]["expected"]["val"]["macs"] == pytest.approx(paths.macs.mean())
    assert manifest["costs"]["assumes"]["activation_bits"] == {
        d.name: d.activation_bits for d in s.platform.devices}


def test_graphs_take_any_batch_size(exported: tuple[Path, dict, EENNConfig]) -> None:
    path, manifest, _ = exported
    first = manifest["stages"][0]
    sess = ort.InferenceSession(str(path.parent / first["file"]),
                                providers=["CPUExecutionProvider"])
    for n in (1, 13):
        x = np.random.default_rng(n).standard_normal((n, 2, 10, 10)).astype(np.float32)
        outs = sess.run(first["outputs"], {first["input"]["name"]: x})
        assert all(o.shape[0] == n for o in outs)


def test_reference_runner_reproduces_pytorch_on_test(exported: tuple[Path, dict, EENNConfig]
                                                     ) -> None:
    path, _, config = exported
    s = setup()
    eenn = build_eenn(s.model, config, candidates=s.profile.candidates, heads=s.heads.heads)
    x = s.data["test"].tensors[0]
    check = verify_runner(path, eenn, x)
    assert check["samples"] == len(x)
    assert check["prediction_mismatches"] == check["exit_mismatches"] == 0
    assert check["device_mismatches"] == 0 and check["max_confidence_diff"] < 1e-5
    got = run_manifest(path, x.numpy(), batch_size=16)
    ref = run_dataset(eenn, s.data["test"])
    np.testing.assert_array_equal(got.exit, ref.exit)
    np.testing.assert_array_equal(got.prediction, ref.prediction)
    assert len(set(got.exit.tolist())) >= 3  # several exits really taken


def test_relay_and_boundary_only_stages(tmp_path: Path) -> None:
    """Raw input sent over the first link, a stage without a head, nothing on device 0."""
    s = setup()
    config = EENNConfig(exits=(ExitChoice(candidate=2, head=1, threshold=gap_threshold(
        s, "margin", 2, 1, 0.5)),), boundaries=(0, 2), metric="margin")
    eenn = build_eenn(s.model, config, candidates=s.profile.candidates, heads=s.heads.heads)
    result = export_eenn(eenn, out_dir=tmp_path, example=s.data["val"].tensors[0][:16],
                         platform=s.platform, costs=s.costs, candidates=s.profile.candidates)
    m = result.manifest
    assert m["devices"][0]["stages"] == []
    assert m["links"][0]["tensor"]["name"] == "input"
    assert m["links"][0]["tensor"]["bytes_sent"] == 2 * 10 * 10  # int8 sender
    first = m["stages"][0]
    assert first["logits"] is None and first["exit"] is None and first["device"] == 1
    check = verify_runner(result.manifest_path, eenn, s.data["test"].tensors[0])
    assert check["prediction_mismatches"] == check["exit_mismatches"] == 0


def test_int8_export_quantises_the_int8_devices_only(exported: tuple[Path, dict, EENNConfig]
                                                     ) -> None:
    import onnx

    from search.deploy._quantize import agreement, quantize_manifest

    path, manifest, _ = exported
    s = setup()
    q_path = quantize_manifest(path, s.data["val"].tensors[0].numpy())
    q = json.loads(q_path.read_text())
    bits = {d["index"]: d["activation_bits"] for d in manifest["devices"]}
    assert {bits[st["device"]] for st in q["stages"]} >= {8, 32}  # both kinds are present
    for st, fp in zip(q["stages"], manifest["stages"], strict=True):
        ops = {n.op_type for n in onnx.load(str(path.parent / st["file"])).graph.node}
        if bits[st["device"]] == 8:
            assert st["precision"] == "int8" and st["file"].endswith(".int8.onnx")
            assert {"QuantizeLinear", "DequantizeLinear"} <= ops
            assert st["calibration_samples"] == len(s.data["val"])
        else:
            assert st["precision"] == "float32" and st["file"] == fp["file"]
            assert "QuantizeLinear" not in ops
    assert "int8 graphs" in q["costs"]["assumes"]["precision"]
    assert q["devices"][0]["stages"] == [st["file"] for st in q["stages"] if st["device"] == 0]
    x, y = s.data["test"].tensors
    check = agreement(q_path, run_manifest(path, x.numpy()), x.numpy(), y.numpy())
    assert check["samples"] == len(x)
    # int8 is not exact, but on this tiny model it must stay close to float32
    assert check["prediction_agreement"] >= 0.9 and check["exit_agreement"] >= 0.8
    assert abs(check["accuracy_int8"] - check["accuracy_float32"]) <= 0.1
    assert sum(check["exit_fractions_int8"]) == pytest.approx(1.0)


def test_int8_failure_is_one_export_error_and_keeps_float32(
        exported: tuple[Path, dict, EENNConfig], monkeypatch: pytest.MonkeyPatch) -> None:
    import search.deploy.export as export

    path, _, _ = exported

    def broken(*args: object, **kwargs: object) -> Path:
        raise RuntimeError("Unsupported operator X\nmore detail")

    monkeypatch.setattr(export, "quantize_manifest", broken)
    x = setup().data["test"].tensors[0].numpy()
    with pytest.raises(export.ExportError, match=r"Unsupported operator X\); the float32 export"):
        export._int8(path, calibration=x, x=x, fp32=run_manifest(path, x),
                     labels=np.zeros(len(x), dtype=np.int64))
    assert path.is_file()  # the float32 manifest stays
