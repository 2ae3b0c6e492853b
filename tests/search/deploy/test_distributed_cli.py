"""``python -m search.deploy RUN`` end to end on a tiny real run, and its one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from search.deploy import _netns
from search.deploy.stream import DEPLOY, main
from tests.search.deploy.test_evaluate import _cli_error, tiny_run  # noqa: F401 (fixture)

NETNS = _netns.unavailable()


def test_the_command_runs_as_a_module() -> None:
    done = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-m", "search.deploy",
                           "--help"], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "python -m search.deploy" in done.stdout and "--netns" in done.stdout


def test_a_missing_run_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "does not exist" in _cli_error(capsys, [str(tmp_path / "nope")], main)
    assert "--window" in _cli_error(capsys, [str(tmp_path), "--window", "0"], main)


def _crossing_point(run: Path) -> str:
    """A trial whose every sample crosses the first link (no exit before its boundary)."""
    n_cand = len(json.loads((run / "summary.json").read_text())["candidates"])
    trials = pd.read_parquet(run / "trials.parquet")
    for t, c in zip(trials["trial"], trials["config"], strict=True):
        cfg = json.loads(c)
        b = cfg["boundaries"][0]
        if b <= n_cand and all(e["candidate"] >= b for e in cfg["exits"]):
            return str(int(t))
    raise AssertionError("no trial sends every sample over the first link")


def _two_trials(run: Path) -> tuple[int, int]:
    trials = pd.read_parquet(run / "trials.parquet").drop_duplicates("config")
    return int(trials["trial"].iloc[0]), int(trials["trial"].iloc[1])


@pytest.mark.slow
@pytest.mark.parametrize("netns", [False, True])
def test_a_point_deploys_and_writes_deploy_json(tiny_run: Path,  # noqa: F811
                                                capsys: pytest.CaptureFixture[str],
                                                netns: bool) -> None:
    if netns and NETNS is not None:
        pytest.skip(f"namespaces unavailable: {NETNS}")
    out = tiny_run / ("deploy_netns.json" if netns else DEPLOY)
    point = _crossing_point(tiny_run)
    args = [str(tiny_run), "--point", point, "--window", "4", "--out", str(out)]
    assert main([*args, *(["--netns"] if netns else ["--profile"])]) == 0
    doc = json.loads(out.read_text())
    assert doc["mode"] == ("netns" if netns else "loopback") and doc["samples"] == 200
    assert doc["answers"]["ok"] == doc["answers"]["answered_once"] == 200
    assert doc["reference_runner"]["prediction_mismatches"] == 0
    assert doc["reference_runner"]["exit_mismatches"] == 0
    assert doc["links"][0]["samples"] == 200
    for lk in doc["links"]:  # None: no sample went that far
        assert lk["payload_equals_manifest"] is (True if lk["samples"] else None)
    assert 0 <= doc["accuracy"] <= 1 and doc["latency_s"]["ok"]["p99"] > 0
    assert doc["predicted_latency_s"]["predicted"]["p50"] > 0
    if not netns:  # also priced from this host's device profile (issue 14)
        prof = doc["predicted_latency_from_profile_s"]
        assert prof["predicted"]["p50"] > 0 and "device profile" in prof["how"]
        assert set(prof["by_answering_tier"]) == set(doc["predicted_latency_s"][
            "by_answering_tier"])
    assert "written:" in capsys.readouterr().out


@pytest.mark.slow
def test_a_manifest_of_another_point_is_one_line(tiny_run: Path,  # noqa: F811
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from search.deploy.export import export_point

    a, b = _two_trials(tiny_run)
    result, _ = export_point(tiny_run, point=str(a))
    line = _cli_error(capsys, [str(tiny_run), "--point", str(b), "--manifest",
                               str(result.manifest_path)], main)
    assert "another run or point" in line and str(a) in line
    m = json.loads(result.manifest_path.read_text())
    m["devices"][0]["name"] = "esp32"
    other = result.out_dir / "manifest_other_platform.json"
    other.write_text(json.dumps(m))
    line = _cli_error(capsys, [str(tiny_run), "--point", str(a), "--manifest", str(other)], main)
    assert "esp32" in line and "export the point again" in line


@pytest.mark.slow
def test_an_npz_streams_without_labels(tiny_run: Path, tmp_path: Path,  # noqa: F811
                                       capsys: pytest.CaptureFixture[str]) -> None:
    from search.deploy.export import export_point

    a, _ = _two_trials(tiny_run)
    result, _ = export_point(tiny_run, point=str(a))
    shape = result.manifest["input"]["shape"][1:]
    x = np.random.default_rng(0).standard_normal((30, *shape)).astype(np.float32)
    np.savez(tmp_path / "in.npz", x=x)
    out = tmp_path / "d.json"
    assert main([str(tiny_run), "--point", str(a), "--npz", str(tmp_path / "in.npz"),
                 "--out", str(out), "--rate", "500"]) == 0
    doc = json.loads(out.read_text())
    assert doc["samples"] == 30 and "accuracy" not in doc and doc["rate_per_s"] == 500
    assert doc["reference_runner"]["prediction_mismatches"] == 0
    np.savez(tmp_path / "bad.npz", inputs=x)
    line = _cli_error(capsys, [str(tiny_run), "--point", str(a), "--npz",
                               str(tmp_path / "bad.npz")], main)
    assert "has no array 'x'" in line
