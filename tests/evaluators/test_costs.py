"""path_costs and device_memory on a two-device example small enough to check by hand."""

from __future__ import annotations

import numpy as np
import pytest

from evaluators.costs import BackboneCosts, device_memory, path_costs
from evaluators.eenn import EENNConfig, ExitChoice
from evaluators.platform import Device, Link, Platform

COSTS = BackboneCosts(
    candidate_names=("a", "b"),
    segment_macs=np.array([100, 200, 300], dtype=np.int64),
    segment_params=np.array([10, 20, 30], dtype=np.int64),
    segment_peak_elems=np.array([50, 40, 30], dtype=np.int64),
    activation_elems=np.array([8, 4], dtype=np.int64),
    input_elems=16,
    head_macs=np.array([[5], [7]], dtype=np.int64),
    head_params=np.array([[2], [3]], dtype=np.int64),
)
# device 0: 100 MAC/s, 0.01 J/MAC, 1 W static, int8; device 1: 1000 MAC/s, 1 mJ/MAC, no static, fp32
PLATFORM = Platform(
    name="toy",
    devices=(
        Device(
            name="mcu",
            macs_per_second=100.0,
            energy_per_mac_j=0.01,
            static_power_w=1.0,
            ram_bytes=1000,
            flash_bytes=1000,
            activation_bits=8,
        ),
        Device(
            name="fog",
            macs_per_second=1000.0,
            energy_per_mac_j=0.001,
            static_power_w=0.0,
            ram_bytes=10**6,
            flash_bytes=10**6,
            activation_bits=32,
        ),
    ),
    # 80 bit/s = 10 B/s, 0.5 s per transfer, 0.1 J per byte
    links=(Link(name="radio", bandwidth_bits_per_s=80.0, latency_s=0.5, energy_per_byte_j=0.1),),
)
BOTH_EXITS = EENNConfig(
    exits=(
        ExitChoice(candidate=0, head=0, threshold=0.9),
        ExitChoice(candidate=1, head=0, threshold=0.8),
    ),
    boundaries=(1,),
)


def test_path_costs_by_hand() -> None:
    paths = path_costs(BOTH_EXITS, COSTS, PLATFORM)
    # exit 0: segment 0 (100 MACs: 1 J + 1 W x 1 s), head (5 MACs: 0.05 J + 0.05 J), on the MCU
    # exit 1: + 8 int8 bytes over the link (0.8 J, 0.5 s + 0.8 s), segment 1 (200 MACs) and head (7)
    # final:  + segment 2 (300 MACs) on the fog node
    np.testing.assert_allclose(paths.macs, [105, 312, 612])
    np.testing.assert_allclose(paths.energy_j, [2.1, 3.107, 3.407])
    np.testing.assert_allclose(paths.latency_s, [1.05, 2.557, 2.857])
    np.testing.assert_array_equal(paths.device, [0, 1, 1])


def test_path_costs_sends_raw_input_or_never_uses_the_link() -> None:
    offload = path_costs(EENNConfig(exits=(), boundaries=(0,)), COSTS, PLATFORM)
    # 16 input elements at the MCU's 1 byte each: 1.6 J, 0.5 s + 1.6 s; then 600 MACs on the fog
    np.testing.assert_allclose(offload.energy_j, [1.6 + 0.6])
    np.testing.assert_allclose(offload.latency_s, [2.1 + 0.6])
    local = path_costs(EENNConfig(exits=(), boundaries=(3,)), COSTS, PLATFORM)
    np.testing.assert_allclose(local.energy_j, [600 * 0.01 + 6.0])  # 6 s busy at 1 W
    np.testing.assert_array_equal(local.device, [0])


def test_path_costs_rejects_wrong_boundary_count() -> None:
    with pytest.raises(ValueError, match="0 boundaries but platform 'toy' has 1 links"):
        path_costs(EENNConfig(exits=()), COSTS, PLATFORM)


def test_device_memory_by_hand() -> None:
    weights, peak = device_memory(BOTH_EXITS, COSTS, PLATFORM)
    # MCU: segment 0 + head 0 = 12 params at 1 byte; peak 50 elements at 1 byte
    # fog: segments 1, 2 + head = 53 params at 4 bytes; peak max(40, 30) elements at 4 bytes
    np.testing.assert_array_equal(weights, [12, 212])
    np.testing.assert_array_equal(peak, [50, 160])
    no_exits = EENNConfig(exits=(), boundaries=(1,))
    np.testing.assert_array_equal(device_memory(no_exits, COSTS, PLATFORM)[0], [10, 200])
