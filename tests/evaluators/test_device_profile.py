"""Device profile files: checks with one-line errors, and paths priced from a hand-made table."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from evaluators.costs import path_costs
from evaluators.device_profile import (
    DeviceProfile,
    ProfileError,
    ProfileTable,
    load_profile,
    path_seconds,
    stage_seconds,
    write_profile,
)
from evaluators.eenn import EENNConfig, ExitChoice
from evaluators.platform import Platform, PlatformError, platform_from_config
from evaluators.proxy import ProxyEvaluator
from tests._synthetic import synthetic_costs, synthetic_platform, synthetic_split

C, H = 4, 2
# seconds per call at batch 1: segments 10..50 ms, head (c, h) = 1 + c + 10 h ms
TABLE = ProfileTable(runtime="torch", precision="fp32", batch=1, threads=1,
                     segment_s=np.array([10.0, 20.0, 30.0, 40.0, 50.0]) * 1e-3,
                     head_s=(1.0 + np.arange(C)[:, None] + 10.0 * np.arange(H)[None, :]) * 1e-3,
                     call_s=5e-3, stage_call_s=1e-3)
PROFILE = DeviceProfile(weights_hash="w" * 64, candidates=tuple(f"cand{i}" for i in range(C)),
                        heads=("head0", "head1"), head_family="fam", tables=(TABLE,))


def _host(table: ProfileTable, *, power: float = 2.0) -> Platform:
    cfg = {"name": "host", "links": [], "devices": [{
        "name": "cpu", "profile": {"file": "p.json", "batch": table.batch},
        "active_power_w": power, "ram_bytes": 10**9, "flash_bytes": 10**9}]}
    return platform_from_config(cfg).with_tables([table])


def test_path_seconds_by_hand() -> None:
    # exits at candidates 1 (head 0) and 2 (head 1):
    # exit 0: call 5 + segments 0-1 as one stage (10 + 20 - 1 saved call) + head(1, 0) 2 = 36 ms
    # exit 1: + segment 2 (30) + head(2, 1) 13 = 79 ms
    # backbone: + segments 3-4 as one stage (40 + 50 - 1) = 168 ms
    got = path_seconds(TABLE, exits=[(1, 0), (2, 1)])
    np.testing.assert_allclose(got, [0.036, 0.079, 0.168])
    assert stage_seconds(replace(TABLE, batch=4), first=3, last=4) == pytest.approx(0.089 / 4)
    # a hand-over of candidate c's activation (onnxruntime copies it) is saved with the call
    handed = replace(TABLE, handoff_s=np.array([2.0, 3.0, 4.0, 5.0]) * 1e-3)
    np.testing.assert_allclose(path_seconds(handed, exits=[(1, 0), (2, 1)]),
                               [0.036 - 0.002, 0.079 - 0.002, 0.168 - 0.002 - 0.005])


def test_hand_made_profile_prices_the_proxy_and_path_costs() -> None:
    platform = _host(TABLE)
    cfg = EENNConfig(exits=(ExitChoice(candidate=1, head=0, threshold=0.5),
                            ExitChoice(candidate=2, head=1, threshold=0.7)))
    pc = path_costs(cfg, synthetic_costs(c=C, h=H, seed=0), platform)
    np.testing.assert_allclose(pc.latency_s, [0.036, 0.079, 0.168])
    np.testing.assert_allclose(pc.energy_j, 2.0 * pc.latency_s)  # active power x time
    split = synthetic_split(n=300, c=C, h=H, seed=1)
    scores = ProxyEvaluator(split=split, costs=synthetic_costs(c=C, h=H, seed=0),
                            platform=platform).evaluate([cfg])
    conf = split.conf(cfg.metric)
    exit_at = np.full(300, 2)
    exit_at[conf[2, 1] >= np.float32(0.7)] = 1
    exit_at[conf[1, 0] >= np.float32(0.5)] = 0
    assert scores.latency_s[0] == pytest.approx(pc.latency_s[exit_at].mean())


def test_proxy_equals_scalar_costs_on_random_configs_with_a_throughput_table() -> None:
    rng = np.random.default_rng(3)
    costs, split = synthetic_costs(c=C, h=H, seed=0), synthetic_split(n=200, c=C, h=H, seed=2)
    platform = _host(replace(TABLE, batch=8, handoff_s=rng.random(C) * 1e-3))
    configs = []
    for _ in range(30):
        on = np.flatnonzero(rng.random(C) < 0.5)
        configs.append(EENNConfig(exits=tuple(ExitChoice(candidate=int(c), head=int(
            rng.integers(H)), threshold=float(rng.random())) for c in on)))
    scores = ProxyEvaluator(split=split, costs=costs, platform=platform).evaluate(configs)
    for p, cfg in enumerate(configs):
        pc = path_costs(cfg, costs, platform)
        np.testing.assert_allclose(pc.latency_s, path_seconds(
            platform.devices[0].measured, exits=[(e.candidate, e.head) for e in cfg.exits]))
        counts = np.concatenate([scores.exit_count[p, [e.candidate for e in cfg.exits]],
                                 [scores.final_count[p]]])
        assert scores.latency_s[p] == pytest.approx((counts * pc.latency_s).sum() / 200)


def test_mixed_platform_prices_profiled_and_analytic_devices() -> None:
    base = synthetic_platform(2)
    profiled = replace(base.devices[1], profile=_host(TABLE).devices[0].profile,
                       static_power_w=3.0, energy_per_mac_j=0.0, measured=TABLE)
    platform = replace(base, devices=(base.devices[0], profiled))
    costs = synthetic_costs(c=C, h=H, seed=0)
    cfg = EENNConfig(exits=(ExitChoice(candidate=2, head=0, threshold=0.5),), boundaries=(2,))
    pc = path_costs(cfg, costs, platform)
    mcu = float(costs.segment_macs[:2].sum()) / base.devices[0].macs_per_second
    radio = base.links[0]
    link = radio.latency_s + 8 * costs.activation_elems[1] / radio.bandwidth_bits_per_s
    # the fog device is entered at segment 2: its call overhead, segment 2, head (2, 0)
    assert pc.latency_s[0] == pytest.approx(mcu + link + 0.005 + 0.030 + 0.003)


def test_round_trip_and_missing_entries(tmp_path: Path) -> None:
    path = write_profile(PROFILE, tmp_path / "p.json")
    loaded = load_profile(path)
    assert loaded.table("torch", "fp32", 1).segment_s.tolist() == TABLE.segment_s.tolist()
    with pytest.raises(ProfileError, match=r"no entry runtime=onnxruntime.*torch/fp32/batch 1"):
        loaded.table("onnxruntime", "fp32", 1)
    raw = json.loads(path.read_text())
    raw["tables"][0]["segment_s"] = raw["tables"][0]["segment_s"][:-1]
    path.write_text(json.dumps(raw))
    with pytest.raises(ProfileError) as err:
        load_profile(path)
    assert str(path) in str(err.value) and "segment_s" in str(err.value)
    assert "\n" not in str(err.value)
    with pytest.raises(ProfileError, match="does not exist"):
        load_profile(tmp_path / "nowhere.json")


def test_profile_of_another_model_or_head_family_is_refused() -> None:
    ok = {"weights_hash": "w" * 64, "candidates": PROFILE.candidates, "heads": PROFILE.heads,
          "head_family": "fam"}
    PROFILE.check(**ok)
    with pytest.raises(ProfileError, match=r"weights_hash.*another model"):
        PROFILE.check(**{**ok, "weights_hash": "x" * 64})
    with pytest.raises(ProfileError, match="head family"):
        PROFILE.check(**{**ok, "head_family": "other"})
    with pytest.raises(ProfileError, match="candidates"):
        PROFILE.check(**{**ok, "candidates": ("cand0",)})


@pytest.mark.parametrize(("device", "message"), [
    ({"profile": "p.json", "active_power_w": 1.0, "energy_per_mac_j": 1e-9},
     "names both a profile and energy_per_mac_j"),
    ({"profile": {"file": "p.json", "runtime": "tflite"}, "active_power_w": 1.0},
     r"profile\.runtime='tflite'"),
    ({"profile": {"file": "p.json", "runtime": "torch", "precision": "int8"},
      "active_power_w": 1.0}, r"profile\.precision='int8'"),
    ({"profile": "p.json"}, "missing 'active_power_w'"),
])
def test_bad_profiled_device_is_one_line_error(device: dict[str, object], message: str) -> None:
    cfg = {"name": "p", "links": [], "devices": [{"name": "cpu", "ram_bytes": 1, "flash_bytes": 1,
                                                  **device}]}
    with pytest.raises(PlatformError, match=message) as err:
        platform_from_config(cfg)
    assert "\n" not in str(err.value)


def test_unloaded_profile_cannot_price() -> None:
    cfg = {"name": "p", "links": [], "devices": [{"name": "cpu", "ram_bytes": 1, "flash_bytes": 1,
                                                  "profile": "p.json", "active_power_w": 1.0}]}
    platform = platform_from_config(cfg)
    with pytest.raises(PlatformError, match="no table was loaded"):
        ProxyEvaluator(split=synthetic_split(n=10, c=C, h=H, seed=0),
                       costs=synthetic_costs(c=C, h=H, seed=0), platform=platform)
