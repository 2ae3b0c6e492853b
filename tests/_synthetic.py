"""Seeded synthetic prediction tables, backbone costs and platforms for tests and benchmarks.

Realistic in the ways the search cares about: accuracy rises with depth and
head size, correctness is correlated across exits (a per-sample difficulty),
and confidence is correlated with correctness.
"""

from __future__ import annotations

import numpy as np

from evaluators.costs import BackboneCosts
from evaluators.platform import Device, Link, Platform
from evaluators.predictions import SplitPredictions

N_CLASSES = 10


def synthetic_split(*, n: int, c: int, h: int, seed: int,
                    final_acc: float = 0.97) -> SplitPredictions:
    """A (C, H, N) prediction table; head (c, h) has accuracy ~0.45 + 0.45 (c+1)/C + 0.03 h."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, N_CLASSES, n)
    difficulty = rng.random(n)
    skill = 0.45 + 0.45 * (np.arange(c)[:, None] + 1) / c + 0.03 * np.arange(h)[None, :]
    margin = skill[:, :, None] - difficulty[None, None, :] + 0.25 * rng.standard_normal((c, h, n))
    correct = margin > 0
    wrong = (labels + rng.integers(1, N_CLASSES, (c, h, n))) % N_CLASSES
    pred = np.where(correct, labels[None, None, :], wrong).astype(np.int16)
    logit = 3.0 * margin + 1.5 * rng.standard_normal((c, h, n))  # confidence: a noisy witness
    base = 1.0 / (1.0 + np.exp(-logit))
    soft = 0.1 + 0.9 * base
    conf = np.stack([soft, np.clip(soft ** 1.3 + 0.03 * rng.standard_normal(soft.shape), 0, 1),
                     np.clip(soft ** 2 + 0.03 * rng.standard_normal(soft.shape), 0, 1)])
    final_ok = difficulty < final_acc + 0.02 * rng.standard_normal(n)
    final_pred = np.where(final_ok, labels, (labels + 1) % N_CLASSES).astype(np.int16)
    fsoft = np.where(final_ok, 0.9, 0.6) + 0.05 * rng.standard_normal(n)
    return SplitPredictions(
        labels=labels.astype(np.int64), head_pred=pred, head_conf=conf.astype(np.float32),
        final_pred=final_pred, final_conf=np.stack([fsoft, fsoft, fsoft]).astype(np.float32),
    )


def synthetic_costs(*, c: int, h: int, seed: int) -> BackboneCosts:
    """A CNN-like backbone: growing MACs per segment, shrinking activations, heads cost ~1-10%."""
    rng = np.random.default_rng(seed)
    seg_macs = rng.integers(200_000, 2_000_000, c + 1).astype(np.int64)
    act = np.maximum(64, (20_000 * 0.8 ** np.arange(c))).astype(np.int64)
    head_macs = (act[:, None] * (1 + 4 * np.arange(h))[None, :]).astype(np.int64)
    return BackboneCosts(
        candidate_names=tuple(f"cand{i}" for i in range(c)),
        segment_macs=seg_macs,
        segment_params=(seg_macs // 50).astype(np.int64),
        segment_peak_elems=np.concatenate([2 * act, [2 * act[-1]]]).astype(np.int64),
        activation_elems=act,
        input_elems=3 * 32 * 32,
        head_macs=head_macs,
        head_params=head_macs.copy(),
        head_names=tuple(f"head{j}" for j in range(h)),
    )


_DEVICES = (
    Device(name="mcu", macs_per_second=5e7, energy_per_mac_j=5e-11, static_power_w=0.01,
           ram_bytes=64_000, flash_bytes=96_000, activation_bits=8),
    Device(name="edge", macs_per_second=2e9, energy_per_mac_j=2e-10, static_power_w=1.0,
           ram_bytes=4_000_000_000, flash_bytes=16_000_000_000, activation_bits=32),
    Device(name="cloud", macs_per_second=5e11, energy_per_mac_j=1e-10, static_power_w=50.0,
           ram_bytes=64_000_000_000, flash_bytes=1_000_000_000_000, activation_bits=32),
)
_LINKS = (
    Link(name="ble", bandwidth_bits_per_s=1e6, latency_s=0.01, energy_per_byte_j=2e-7),
    Link(name="wifi", bandwidth_bits_per_s=5e7, latency_s=0.02, energy_per_byte_j=5e-8),
)


def synthetic_platform(n_devices: int = 3) -> Platform:
    """The first ``n_devices`` tiers of an MCU -> edge -> cloud chain."""
    return Platform(name=f"synthetic{n_devices}", devices=_DEVICES[:n_devices],
                    links=_LINKS[: n_devices - 1])
