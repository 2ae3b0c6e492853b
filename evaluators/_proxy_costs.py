"""Vectorised path costs and device memory for a whole population of EENNs.

The same arithmetic as :func:`evaluators.costs.path_costs` and
:func:`evaluators.costs.device_memory`, but over arrays: a per-segment cost
table is gathered by each configuration's segment-to-device map and summed
cumulatively, so the cost of leaving at candidate ``c`` is the cumulative sum
up to ``c``. Tests check it against the scalar functions on random configs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from evaluators.costs import BackboneCosts, compute_cost, link_cost, sent_bytes
from evaluators.platform import Device, Platform

__all__: list[str] = []

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]


@dataclass(frozen=True, kw_only=True, eq=False)
class CostTables:
    """Per-device prices of every segment, head and link crossing, computed once."""

    seg_macs: F64  # (S,)  S = C + 1 segments
    seg_energy: F64  # (D, S)
    seg_latency: F64  # (D, S)
    head_macs: F64  # (C, H)
    head_energy: F64  # (D, C, H)
    head_latency: F64  # (D, C, H)
    link_energy: F64  # (L, C + 2); last column (link unused) is zero
    link_latency: F64  # (L, C + 2)
    seg_params: I64  # (S,)
    head_params: I64  # (C, H)
    seg_peak: I64  # (S,)
    seg_has_macs: NDArray[np.bool_]  # (S,)
    width: I64  # (D,) bytes per element
    flash: F64  # (D,)
    ram: F64  # (D,)
    # profiled devices only (zero elsewhere): per-call overhead when a path enters the device,
    # (D, 2) = energy, latency; and what is saved when segment s runs in the previous
    # segment's call, (D, S, 2)
    enter: F64
    merge: F64

    @classmethod
    def build(cls, costs: BackboneCosts, platform: Platform) -> CostTables:
        """Price every segment, head and boundary on every device of ``platform``."""
        platform.check_priced()
        n_c = costs.n_candidates
        devices = platform.devices
        seg_macs = costs.segment_macs.astype(np.float64)
        head_macs = costs.head_macs.astype(np.float64)
        seg = np.stack([_prices(d, seg_macs, None if d.measured is None else d.measured.segment_s)
                        for d in devices]).reshape(len(devices), n_c + 1, 2)
        head = np.stack([_prices(d, head_macs.ravel(),
                                 None if d.measured is None else d.measured.head_s.ravel())
                         for d in devices]).reshape(len(devices), *head_macs.shape, 2)
        enter = np.zeros((len(devices), 2))
        merge = np.zeros((len(devices), n_c + 1, 2))
        for i, d in enumerate(devices):
            if d.measured is not None:
                per = np.array([d.measured.call_s] + [d.measured.merge_saving_s(s)
                                                      for s in range(1, n_c + 1)])
                per /= d.measured.batch
                enter[i] = (d.static_power_w * per[0], per[0])
                merge[i, 1:, 0], merge[i, 1:, 1] = d.static_power_w * per[1:], per[1:]
        link = np.zeros((len(platform.links), n_c + 2, 2))
        for i, lk in enumerate(platform.links):
            for b in range(n_c + 1):
                link[i, b] = link_cost(lk, sent_bytes(costs, b, devices[i]))
        return cls(
            seg_macs=seg_macs, seg_energy=seg[..., 0], seg_latency=seg[..., 1],
            head_macs=head_macs, head_energy=head[..., 0], head_latency=head[..., 1],
            link_energy=link[..., 0], link_latency=link[..., 1],
            seg_params=costs.segment_params.astype(np.int64),
            head_params=costs.head_params.astype(np.int64),
            seg_peak=costs.segment_peak_elems.astype(np.int64),
            seg_has_macs=costs.segment_macs > 0,
            width=np.array([d.activation_bytes_per_element for d in devices], dtype=np.int64),
            flash=np.array([d.flash_bytes for d in devices], dtype=np.float64),
            ram=np.array([d.ram_bytes for d in devices], dtype=np.float64),
            enter=enter, merge=merge,
        )


def _prices(device: Device, macs: F64, seconds: F64 | None) -> F64:
    """(N, 2) energy and latency of N pieces: from MACs, or from measured seconds per call."""
    if seconds is None:
        return np.array([compute_cost(device, m) for m in macs]).reshape(len(macs), 2)
    assert device.measured is not None
    lat = np.asarray(seconds, dtype=np.float64) / device.measured.batch
    return np.stack([device.static_power_w * lat, lat], axis=1)


@dataclass(frozen=True, kw_only=True, eq=False)
class PopulationCosts:
    """Cumulative path prices and memory of P configurations."""

    cum_macs: F64  # (P, S): cost of a sample that leaves after segment s (and its head)
    cum_energy: F64  # (P, S)
    cum_latency: F64  # (P, S)
    device: I64  # (P, S) device that runs each segment
    weight_bytes: I64  # (P, D)
    peak_bytes: I64  # (P, D)


def _step(seg_t: F64, head_t: F64, link_t: F64, dev: I64, heads: I64, bnd: I64) -> F64:
    """Per-segment increments of one cost kind (compute, head, link) -> (P, S)."""
    n_p, n_s = dev.shape
    step = seg_t[dev, np.arange(n_s)[None, :]]
    active = heads >= 0
    cand = np.broadcast_to(np.arange(n_s - 1), heads.shape)
    h_val = head_t[dev[:, :-1], cand, np.where(active, heads, 0)]
    step[:, :-1] += np.where(active, h_val, 0.0)
    padded = np.concatenate([step, np.zeros((n_p, 1))], axis=1)  # column S: unused links
    rows = np.arange(n_p)
    for i in range(bnd.shape[1]):
        padded[rows, bnd[:, i]] += link_t[i, bnd[:, i]]
    return padded[:, :n_s]


def _calls(tab: CostTables, dev: I64, heads: I64, kind: int) -> F64:
    """(P, S) per-call terms of profiled devices: + overhead where a path enters a device,
    - one stage call where a segment runs in its predecessor's stage (no exit between)."""
    enters = np.ones(dev.shape, dtype=bool)
    enters[:, 1:] = dev[:, 1:] != dev[:, :-1]
    merged = np.zeros(dev.shape, dtype=bool)
    merged[:, 1:] = ~enters[:, 1:] & (heads < 0)
    seg = np.broadcast_to(np.arange(dev.shape[1]), dev.shape)
    return np.asarray(np.where(enters, tab.enter[dev, kind], 0.0)
                      - np.where(merged, tab.merge[dev, seg, kind], 0.0), dtype=np.float64)


def population_costs(tab: CostTables, heads: I64, boundaries: I64) -> PopulationCosts:
    """Price P configurations given per-candidate head (-1 = no exit) and boundaries.

    ``heads`` is (P, C), ``boundaries`` (P, L) with values in ``0..C+1``.
    """
    n_p, n_c = heads.shape
    seg_idx = np.arange(n_c + 1)
    dev = (boundaries[:, :, None] <= seg_idx[None, None, :]).sum(axis=1).astype(np.int64)
    active = heads >= 0
    step_m = np.broadcast_to(tab.seg_macs, (n_p, n_c + 1)).copy()
    step_m[:, :-1] += np.where(active, tab.head_macs[seg_idx[:-1], np.where(active, heads, 0)], 0)
    step_e = _step(tab.seg_energy, tab.head_energy, tab.link_energy, dev, heads, boundaries)
    step_l = _step(tab.seg_latency, tab.head_latency, tab.link_latency, dev, heads, boundaries)
    if tab.enter.any() or tab.merge.any():
        step_e += _calls(tab, dev, heads, 0)
        step_l += _calls(tab, dev, heads, 1)
    params = np.broadcast_to(tab.seg_params, (n_p, n_c + 1)).copy()
    params[:, :-1] += np.where(active, tab.head_params[seg_idx[:-1], np.where(active, heads, 0)], 0)
    n_d = len(tab.width)
    onehot = dev[:, :, None] == np.arange(n_d)[None, None, :]  # (P, S, D)
    weights = (onehot * params[:, :, None]).sum(axis=1) * tab.width[None, :]
    relevant = tab.seg_has_macs[None, :] | (params > 0)
    peak = (onehot * (relevant * tab.seg_peak[None, :])[:, :, None]).max(axis=1)
    return PopulationCosts(
        cum_macs=np.cumsum(step_m, axis=1),
        cum_energy=np.cumsum(step_e, axis=1),
        cum_latency=np.cumsum(step_l, axis=1),
        device=dev,
        weight_bytes=weights.astype(np.int64),
        peak_bytes=(peak * tab.width[None, :]).astype(np.int64),
    )
