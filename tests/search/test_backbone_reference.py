"""The backbone-alone reference of summary.json, priced by hand from the platform's figures."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pytest
from omegaconf import OmegaConf

from evaluators.costs import BackboneCosts
from evaluators.platform import platform_from_config
from evaluators.predictions import PredictionTable, SplitPredictions
from evaluators.settings import plain
from search.pipeline import Prepared
from search.run import backbone_reference

SEGMENT_MACS = [1_000_000, 2_000_000, 300_000]  # two candidates and the tail
INPUT_ELEMS = 784
PRESET = Path(str(resources.files("conf"))) / "platform" / "three_tier.yaml"


def _split(correct: int, n: int = 10) -> SplitPredictions:
    labels = np.arange(n) % 3
    final = np.where(np.arange(n) < correct, labels, (labels + 1) % 3).astype(np.int16)
    return SplitPredictions(
        labels=labels.astype(np.int64), head_pred=np.zeros((2, 1, n), np.int16),
        head_conf=np.zeros((3, 2, 1, n), np.float32), final_pred=final,
        final_conf=np.ones((3, n), np.float32))


def _prepared(figures: dict[str, Any]) -> Prepared:
    costs = BackboneCosts(
        candidate_names=("a", "b"), segment_macs=np.array(SEGMENT_MACS, np.int64),
        segment_params=np.zeros(3, np.int64), segment_peak_elems=np.zeros(3, np.int64),
        activation_elems=np.array([4096, 512], np.int64), input_elems=INPUT_ELEMS,
        head_macs=np.zeros((2, 1), np.int64), head_params=np.zeros((2, 1), np.int64))
    table = PredictionTable(candidate_names=("a", "b"), head_names=("h",), val=_split(7),
                            test=_split(9))
    fake = SimpleNamespace(platform=platform_from_config(figures), costs=costs,
                           predictions=table)
    return cast(Prepared, fake)


def test_backbone_alone_on_the_first_and_on_the_last_device() -> None:
    figures = plain(OmegaConf.load(PRESET))  # OmegaConf reads 3.2e7 as a float, YAML 1.1 not
    mcu, pi, gpu = figures["devices"]
    ble, wan = figures["links"]
    ref = backbone_reference(_prepared(figures))
    macs = sum(SEGMENT_MACS)
    assert ref["macs"] == macs
    assert (ref["accuracy_val"], ref["accuracy_test"]) == (0.7, 0.9)
    # all on the MCU: compute only, static power while busy
    t_mcu = macs / mcu["macs_per_second"]
    assert ref["latency_s_first"] == pytest.approx(t_mcu, rel=1e-12)
    assert ref["energy_j_first"] == pytest.approx(
        macs * mcu["energy_per_mac_j"] + mcu["static_power_w"] * t_mcu, rel=1e-12)
    # all on the GPU: the raw input crosses both links at each sender's precision first
    sent_ble = INPUT_ELEMS * mcu["activation_bits"] / 8
    sent_wan = INPUT_ELEMS * pi["activation_bits"] / 8
    t_gpu = macs / gpu["macs_per_second"]
    latency = (ble["latency_s"] + 8 * sent_ble / ble["bandwidth_bits_per_s"]
               + wan["latency_s"] + 8 * sent_wan / wan["bandwidth_bits_per_s"] + t_gpu)
    energy = (sent_ble * ble["energy_per_byte_j"] + sent_wan * wan["energy_per_byte_j"]
              + macs * gpu["energy_per_mac_j"] + gpu["static_power_w"] * t_gpu)
    assert ref["latency_s_last"] == pytest.approx(latency, rel=1e-12)
    assert ref["energy_j_last"] == pytest.approx(energy, rel=1e-12)
