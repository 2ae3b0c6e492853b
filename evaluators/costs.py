"""Analytic cost model: MACs, energy, latency and memory of an EENN on a platform.

Everything here is arithmetic over a :class:`BackboneCosts` table (built once
from the backbone graph and the head family) and a :class:`Platform`. The
proxy evaluator and the real EENN runtime both price a sample's path with
:func:`path_costs`, so predicted and measured costs agree by construction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from evaluators.eenn import EENNConfig
from evaluators.platform import Device, Link, Platform

__all__ = [
    "BackboneCosts",
    "PathCosts",
    "compute_cost",
    "device_memory",
    "link_cost",
    "measured_cost",
    "path_costs",
    "sent_bytes",
]


@dataclass(frozen=True, kw_only=True)
class BackboneCosts:
    """Per-segment and per-head figures of one backbone and one head family.

    ``C`` candidates, ``H`` heads. Element counts and parameter counts, not
    bytes: a device's bit-width turns them into bytes.
    """

    candidate_names: tuple[str, ...]
    segment_macs: NDArray[np.int64]  # (C+1,)
    segment_params: NDArray[np.int64]  # (C+1,)
    segment_peak_elems: NDArray[np.int64]  # (C+1,) largest live input+output of one op
    activation_elems: NDArray[np.int64]  # (C,) elements of each candidate's output
    input_elems: int
    head_macs: NDArray[np.int64]  # (C, H)
    head_params: NDArray[np.int64]  # (C, H)
    head_names: tuple[str, ...] = ()

    @property
    def n_candidates(self) -> int:
        return len(self.candidate_names)

    @property
    def total_macs(self) -> int:
        return int(self.segment_macs.sum())


@dataclass(frozen=True, kw_only=True)
class PathCosts:
    """Cost of every way a sample can leave the EENN.

    Index ``k < K`` is "exits at the k-th active exit"; index ``K`` is "runs to
    the backbone's classifier". Heads evaluated on the way are included.
    """

    macs: NDArray[np.float64]  # (K+1,)
    energy_j: NDArray[np.float64]  # (K+1,)
    latency_s: NDArray[np.float64]  # (K+1,)
    device: NDArray[np.int64]  # (K+1,) device on which the sample finishes


def compute_cost(device: Device, macs: float) -> tuple[float, float]:
    """(energy J, latency s) of ``macs`` MACs on ``device``; static power while busy."""
    latency = macs / device.macs_per_second
    return macs * device.energy_per_mac_j + device.static_power_w * latency, latency


def measured_cost(device: Device, seconds: float) -> tuple[float, float]:
    """(energy J, latency s) of ``seconds`` of measured time on a profiled ``device``: its
    ``active_power_w`` (``static_power_w`` holds it) times the time."""
    return device.static_power_w * seconds, seconds


def _segment_cost(device: Device, costs: BackboneCosts, seg: int, *, enters: bool,
                  merged: bool) -> tuple[float, float]:
    """(energy, latency) of segment ``seg``; a profiled device adds its per-call overhead when
    the path enters it and saves one call when the segment runs in the previous one's stage."""
    table = device.measured
    if table is None:
        if device.profile is not None:
            raise ValueError(f"device {device.name!r} names a profile but none was loaded; "
                             "price paths with the prepared platform")
        return compute_cost(device, float(costs.segment_macs[seg]))
    t = float(table.segment_s[seg]) + (table.call_s if enters else 0.0)
    t -= table.merge_saving_s(seg) if merged else 0.0
    return measured_cost(device, t / table.batch)


def _head_cost(device: Device, costs: BackboneCosts, seg: int, head: int) -> tuple[float, float]:
    table = device.measured
    if table is None:
        return compute_cost(device, float(costs.head_macs[seg, head]))
    return measured_cost(device, float(table.head_s[seg, head]) / table.batch)


def link_cost(link: Link, n_bytes: float) -> tuple[float, float]:
    """(energy J, latency s) of sending ``n_bytes`` over ``link``."""
    latency = link.latency_s + 8.0 * n_bytes / link.bandwidth_bits_per_s
    return n_bytes * link.energy_per_byte_j, latency


def sent_bytes(costs: BackboneCosts, boundary: int, sender: Device) -> int:
    """Bytes one sample sends across ``boundary`` (0 = the input, b = candidate b-1's output).

    The tensor travels at the sending device's activation precision; the proxy, the export
    manifest and the runtime all price a link crossing with this one count.
    """
    elems = costs.input_elems if boundary == 0 else int(costs.activation_elems[boundary - 1])
    return elems * sender.activation_bytes_per_element


def path_costs(config: EENNConfig, costs: BackboneCosts, platform: Platform) -> PathCosts:
    """Price each exit path of ``config``: backbone segments, heads, link transfers.

    Walks segments ``0..C`` in order, adding each segment's compute on its
    device, each head of an active exit as it is evaluated (a head costs its
    MACs whether or not the sample exits there) and each boundary crossed.
    A profiled device prices from its measured table instead of its MACs
    (:mod:`evaluators.device_profile`).
    """
    if len(config.boundaries) != len(platform.links):
        raise ValueError(
            f"config has {len(config.boundaries)} boundaries but platform "
            f"{platform.name!r} has {len(platform.links)} links"
        )
    n_cand = costs.n_candidates
    heads_at = {e.candidate: e.head for e in config.exits}
    macs = energy = latency = 0.0
    out_m: list[float] = []
    out_e: list[float] = []
    out_l: list[float] = []
    out_d: list[int] = []
    for seg in range(n_cand + 1):
        dev_idx = config.device_of_segment(seg)
        for link_idx, b in enumerate(config.boundaries):
            if b == seg:  # this segment starts on the next device: send over link_idx
                sender = platform.devices[link_idx]
                e_j, l_s = link_cost(platform.links[link_idx], sent_bytes(costs, seg, sender))
                energy += e_j
                latency += l_s
        device = platform.devices[dev_idx]
        seg_macs = float(costs.segment_macs[seg])
        enters = seg == 0 or config.device_of_segment(seg - 1) != dev_idx
        e_j, l_s = _segment_cost(device, costs, seg, enters=enters,
                                 merged=not enters and (seg - 1) not in heads_at)
        macs, energy, latency = macs + seg_macs, energy + e_j, latency + l_s
        if seg < n_cand and seg in heads_at:
            h_macs = float(costs.head_macs[seg, heads_at[seg]])
            e_j, l_s = _head_cost(device, costs, seg, heads_at[seg])
            macs, energy, latency = macs + h_macs, energy + e_j, latency + l_s
            out_m.append(macs)
            out_e.append(energy)
            out_l.append(latency)
            out_d.append(dev_idx)
    out_m.append(macs)
    out_e.append(energy)
    out_l.append(latency)
    out_d.append(config.device_of_segment(n_cand))
    return PathCosts(
        macs=np.asarray(out_m),
        energy_j=np.asarray(out_e),
        latency_s=np.asarray(out_l),
        device=np.asarray(out_d, dtype=np.int64),
    )


def device_memory(
    config: EENNConfig, costs: BackboneCosts, platform: Platform
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """(weight bytes, peak activation bytes) per device for ``config``.

    Weights: segment and head parameters at the device's bit-width, against
    flash. Activations: the largest single-op working set on the device, a
    lower bound on RAM that a deployment tool must meet.
    """
    n_dev = platform.n_devices
    weights = np.zeros(n_dev, dtype=np.int64)
    peak = np.zeros(n_dev, dtype=np.int64)
    heads_at = {e.candidate: e.head for e in config.exits}
    for seg in range(costs.n_candidates + 1):
        d = config.device_of_segment(seg)
        width = platform.devices[d].activation_bytes_per_element
        params = int(costs.segment_params[seg])
        if seg in heads_at:
            params += int(costs.head_params[seg, heads_at[seg]])
        weights[d] += params * width
        if costs.segment_macs[seg] > 0 or params > 0:
            peak[d] = max(peak[d], int(costs.segment_peak_elems[seg]) * width)
    return weights, peak
