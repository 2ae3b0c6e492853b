"""Vectorised proxy evaluator: scores a whole population of EENNs on cached predictions.

A val sample leaves at the first active exit whose confidence is ``>=`` its
threshold, else at the backbone classifier. Accuracy is counting: for every
(metric, candidate, head, threshold) the set of samples that pass is a packed
bitset (uint64 words over samples), as are "passes and correct" and "passes
and disagrees with the backbone". A population is then scored with AND /
AND-NOT / popcount over ``N/64`` words per exit, for all configurations at
once (configurations are sorted by exit count so each step only touches the
rows that still have an exit). Thresholds that are not on the precomputed
grid get their bitsets built for the batch. Costs come from
:mod:`evaluators._proxy_costs`, the array form of :func:`evaluators.costs.path_costs`.

Accuracy constraint: the drop versus the backbone on the same val samples is
bounded with a paired test. Only the ``n`` samples that leave early can
differ from the backbone; among them, ``n01`` are right for the backbone and
wrong for the EENN and ``n10`` the reverse. One-sided Wilson bounds on both
rates (Bonferroni-split at ``confidence``) give
``drop_ub = n * (U(n01/n) - L(n10/n)) / N``: never below the observed drop,
and the margin grows as val shrinks (thresholds tuned on val overfit).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray

from evaluators._config import Group
from evaluators._proxy_costs import CostTables, population_costs
from evaluators.costs import BackboneCosts
from evaluators.eenn import METRICS, EENNConfig
from evaluators.platform import Platform
from evaluators.predictions import SplitPredictions
from evaluators.risk import GuaranteeSpec

__all__ = ["OBJECTIVES", "ConfigBatch", "ConstraintSpec", "ProxyEvaluator", "ProxyScores"]

OBJECTIVES: tuple[str, ...] = ("error", "macs", "energy", "latency")

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]
U64 = NDArray[np.uint64]
_CHUNK = 512  # configurations scored together (keeps ~N/64 x 4 x 512 words in cache)


@dataclass(frozen=True, kw_only=True)
class ConstraintSpec:
    """Constraints of the search; each active one yields a ``cv_<name>`` column (<= 0 ok).

    All violations are relative: ``accuracy_drop`` in accuracy units above
    ``max_accuracy_drop``, ``memory`` as the worst bytes/capacity ratio minus 1,
    ``latency`` as worst-case (backbone path) latency / ``max_latency_s`` - 1.
    ``guarantee``: how the chosen point's drop is certified (:mod:`evaluators.risk`); with a
    method other than ``uncertified`` the search sees only val's search part and the
    accuracy constraint above only shapes the front that is then certified.
    """

    max_accuracy_drop: float | None = 0.01
    confidence: float = 0.95
    memory: bool = True
    max_latency_s: float | None = None
    guarantee: GuaranteeSpec = dataclasses.field(default_factory=GuaranteeSpec)

    def __post_init__(self) -> None:
        if not 0.5 <= self.confidence < 1.0:
            raise ValueError(f"constraints.confidence={self.confidence!r} must be in [0.5, 1)")
        if self.max_latency_s is not None and self.max_latency_s <= 0:
            raise ValueError(f"constraints.max_latency_s={self.max_latency_s!r} must be > 0 "
                             "or null")

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any] | None) -> ConstraintSpec:
        """Read the ``constraints`` config group; unknown keys and bad values are errors."""
        g = Group.of("constraints", cfg)
        g.check_keys(["max_accuracy_drop", "confidence", "memory", "max_latency_s",
                      "guarantee"])
        d = cls()
        drop = g.number("max_accuracy_drop", d.max_accuracy_drop, low=0.0, optional=True)
        return cls(
            max_accuracy_drop=drop,
            confidence=g.number("confidence", d.confidence),
            memory=g.flag("memory", d.memory),
            max_latency_s=g.number("max_latency_s", d.max_latency_s, optional=True),
            guarantee=GuaranteeSpec.from_mapping(g.values.get("guarantee")).resolve_epsilon(drop),
        )

    @property
    def z(self) -> float:
        """Normal quantile of each one-sided Wilson bound (Bonferroni split of ``confidence``)."""
        return NormalDist().inv_cdf(1.0 - (1.0 - self.confidence) / 2.0)

    def smallest_drop_bound(self, n_val: int) -> float:
        """The lowest ``accuracy_drop_ub`` any EENN with an exit can reach on ``n_val`` samples.

        One sample leaves early and agrees with the backbone: the bound is
        ``z^2 / ((1 + z^2) * n_val)`` (Wilson's upper bound for 0 of 1); more samples
        leaving early only raise it.
        """
        z2 = self.z ** 2
        return z2 / ((1.0 + z2) * n_val)

    def val_size_note(self, n_val: int) -> str:
        """Why no EENN with an exit can be feasible on ``n_val`` val samples, or ""."""
        if self.max_accuracy_drop is None or n_val <= 0:
            return ""
        floor = self.smallest_drop_bound(n_val)
        if floor <= self.max_accuracy_drop:
            return ""
        need = math.ceil(self.z ** 2 / ((1.0 + self.z ** 2) * self.max_accuracy_drop))
        return (f"val has {n_val} samples: no EENN with an exit can meet "
                f"constraints.max_accuracy_drop={self.max_accuracy_drop:g} at confidence "
                f"{self.confidence:g} (the smallest upper bound on the drop is {floor:.3f}); "
                f"use at least {need} val samples or constraints.max_accuracy_drop="
                f"{math.ceil(floor * 1000) / 1000:g}")

    @property
    def names(self) -> tuple[str, ...]:
        out = ["accuracy_drop"] if self.max_accuracy_drop is not None else []
        out += ["memory"] if self.memory else []
        out += ["latency"] if self.max_latency_s is not None else []
        return tuple(out)


@dataclass(frozen=True, kw_only=True, eq=False)
class ConfigBatch:
    """P configurations as padded arrays (K = most exits in the batch)."""

    candidate: I64  # (P, K), -1 = padding
    head: I64  # (P, K)
    threshold: F64  # (P, K)
    boundaries: I64  # (P, L)
    metric: I64  # (P,) index into METRICS

    @classmethod
    def from_configs(cls, configs: Sequence[EENNConfig]) -> ConfigBatch:
        """Pack ``configs`` into arrays (the only Python loop: over their exits)."""
        n_p = len(configs)
        k_max = max((len(c.exits) for c in configs), default=0)
        cand = np.full((n_p, k_max), -1, dtype=np.int64)
        head = np.zeros((n_p, k_max), dtype=np.int64)
        thr = np.zeros((n_p, k_max))
        for p, cfg in enumerate(configs):
            k = len(cfg.exits)
            if k:
                cand[p, :k], head[p, :k], thr[p, :k] = zip(
                    *((e.candidate, e.head, e.threshold) for e in cfg.exits), strict=True)
        n_links = len(configs[0].boundaries) if configs else 0
        bnd = np.array([c.boundaries for c in configs], dtype=np.int64).reshape(n_p, n_links)
        met = np.array([METRICS.index(c.metric) for c in configs], dtype=np.int64)
        return cls(candidate=cand, head=head, threshold=thr, boundaries=bnd, metric=met)

    def take(self, rows: NDArray[np.int64]) -> ConfigBatch:
        """The configurations at ``rows``."""
        return _take(self, rows)

    def without(self, drop: NDArray[np.bool_]) -> ConfigBatch:
        """The batch with the exits marked in ``drop`` (P, K) removed (rows stay in order)."""
        keep = (self.candidate >= 0) & ~drop
        order = np.argsort(~keep, axis=1, kind="stable")  # kept exits first, in their order
        k_max = int(keep.sum(axis=1).max()) if len(keep) else 0

        def pick(a: NDArray[Any], pad: Any) -> NDArray[Any]:
            return np.where(np.take_along_axis(keep, order, 1), np.take_along_axis(a, order, 1),
                            pad)[:, :k_max]

        return ConfigBatch(candidate=pick(self.candidate, -1), head=pick(self.head, 0),
                           threshold=pick(self.threshold, 0.0), boundaries=self.boundaries,
                           metric=self.metric)


@dataclass(frozen=True, kw_only=True, eq=False)
class ProxyScores:
    """Figures of P configurations on one split (expected values per sample)."""

    n_samples: int
    backbone_correct: int
    exit_count: I64  # (P, C) samples leaving at each candidate's exit (0 if no exit)
    exit_correct: I64  # (P, C)
    final_count: I64  # (P,) samples reaching the backbone classifier
    final_correct: I64  # (P,)
    discordant: I64  # (P,) samples where EENN and backbone differ in correctness
    macs: F64  # (P,)
    energy_j: F64  # (P,)
    latency_s: F64  # (P,)
    worst_latency_s: F64  # (P,) a sample that runs to the backbone classifier
    finish_fraction: F64  # (P, D) share of samples finishing on each device
    weight_bytes: I64  # (P, D)
    peak_bytes: I64  # (P, D)
    memory_ratio: F64  # (P,) worst of weights/flash and peak/RAM over devices

    def take(self, rows: NDArray[np.int64]) -> ProxyScores:
        """The figures of the configurations at ``rows``."""
        return _take(self, rows)

    def idle_exits(self, batch: ConfigBatch) -> NDArray[np.bool_]:
        """(P, K) active exits of ``batch`` by which no sample leaves (pure cost)."""
        at = np.maximum(batch.candidate, 0)
        idle: NDArray[np.bool_] = (batch.candidate >= 0) & (
            np.take_along_axis(self.exit_count, at, 1) == 0)
        return idle

    @property
    def accuracy(self) -> F64:
        correct = self.exit_correct.sum(axis=1) + self.final_correct
        return np.asarray(correct / self.n_samples, dtype=np.float64)

    @property
    def accuracy_drop(self) -> F64:
        return self.backbone_correct / self.n_samples - self.accuracy

    def accuracy_drop_upper(self, confidence: float) -> F64:
        """One-sided upper confidence bound on the paired accuracy drop (see module doc)."""
        z = NormalDist().inv_cdf(1.0 - (1.0 - confidence) / 2.0)  # Bonferroni over two bounds
        n = (self.n_samples - self.final_count).astype(np.float64)  # samples leaving early
        worse = (self.discordant + self.accuracy_drop * self.n_samples) / 2.0  # n01
        better = self.discordant - worse  # n10
        bound = n * (_wilson(worse, n, z, +1.0) - _wilson(better, n, z, -1.0))
        return np.where(n > 0, bound / self.n_samples, 0.0)

    def objectives(self, names: Sequence[str]) -> F64:
        """(P, len(names)) objective values, all minimised."""
        if not names or set(names) - set(OBJECTIVES):
            raise ValueError(f"objectives={list(names)!r}: each must be one of {OBJECTIVES}")
        cols: dict[str, F64] = {"macs": self.macs, "energy": self.energy_j,
                                "latency": self.latency_s}
        if "error" in names:
            cols["error"] = 1.0 - self.accuracy
        return np.stack([cols[n] for n in names], axis=1)

    def constraints(self, spec: ConstraintSpec) -> F64:
        """(P, len(spec.names)) violations, pymoo convention (<= 0 satisfied)."""
        cols = []
        if spec.max_accuracy_drop is not None:
            cols.append(self.accuracy_drop_upper(spec.confidence) - spec.max_accuracy_drop)
        if spec.memory:
            cols.append(self.memory_ratio - 1.0)
        if spec.max_latency_s is not None:
            cols.append(self.worst_latency_s / spec.max_latency_s - 1.0)
        return np.stack(cols, axis=1) if cols else np.zeros((len(self.macs), 0))


_T = TypeVar("_T", ConfigBatch, ProxyScores)


def _take(value: _T, rows: NDArray[np.int64]) -> _T:
    """``value`` with every per-configuration array (leading axis P) indexed by ``rows``."""
    return dataclasses.replace(value, **{
        f.name: getattr(value, f.name)[rows] for f in dataclasses.fields(value)
        if isinstance(getattr(value, f.name), np.ndarray)})


def _wilson(k: F64, n: F64, z: float, sign: float) -> F64:
    """Wilson score bound (upper for ``sign=+1``, lower for -1) on k successes in n trials."""
    safe = np.maximum(n, 1.0)
    p = np.clip(k / safe, 0.0, 1.0)
    centre = p + z * z / (2 * safe)
    spread = z * np.sqrt(p * (1 - p) / safe + z * z / (4 * safe * safe))
    return np.clip((centre + sign * spread) / (1 + z * z / safe), 0.0, 1.0)


def _pack(mask: NDArray[np.bool_]) -> U64:
    """Pack booleans over the last axis into uint64 words (zero padded)."""
    packed = np.packbits(mask, axis=-1)
    pad = (-packed.shape[-1]) % 8
    if pad:
        packed = np.concatenate([packed, np.zeros((*packed.shape[:-1], pad), np.uint8)], -1)
    return np.ascontiguousarray(packed).view(np.uint64)


class ProxyEvaluator:
    """Scores populations of :class:`EENNConfig` on one split's predictions.

    ``threshold_grid`` maps a metric to a (C, H, L) array of thresholds whose
    bitsets are precomputed (e.g. the search space's grid); any other
    threshold is still scored exactly, just more slowly.
    """

    def __init__(self, *, split: SplitPredictions, costs: BackboneCosts, platform: Platform,
                 threshold_grid: Mapping[str, NDArray[np.floating[Any]]] | None = None) -> None:
        n_c, n_h, n_s = split.head_pred.shape
        if costs.head_macs.shape != (n_c, n_h):
            raise ValueError(f"predictions have {n_c} candidates x {n_h} heads but costs have "
                             f"{costs.head_macs.shape}; rebuild them from the same model/heads")
        self.split, self.costs, self.platform = split, costs, platform
        self.n_samples = n_s
        self._tables = CostTables.build(costs, platform)
        self._correct = split.head_correct  # (C, H, N)
        self._final = split.final_correct
        self._disagree = self._correct != self._final[None, None, :]
        self._all = _pack(np.ones(n_s, dtype=bool))
        self._final_bits = _pack(self._final)
        grid = {m: np.asarray(v, dtype=np.float64) for m, v in (threshold_grid or {}).items()}
        for m, v in grid.items():
            if m not in METRICS or v.shape[:2] != (n_c, n_h):
                raise ValueError(f"threshold_grid[{m!r}] has shape {v.shape}; "
                                 f"expected a metric of {METRICS} and ({n_c}, {n_h}, L)")
        self._grid = {METRICS.index(m): np.sort(v, axis=-1) for m, v in grid.items()}
        self._base_rows: dict[int, int] = {}  # metric -> first table row of its grid
        blocks = [np.stack([~np.zeros_like(self._all), *(np.zeros_like(self._all),) * 3])[None]]
        n_rows = 1  # row 0: "nobody passes" (used for padding)
        for mi, g in self._grid.items():
            self._base_rows[mi] = n_rows
            idx = np.indices(g.shape)
            blocks.append(self._bitsets(mi, idx[0].ravel(), idx[1].ravel(), g.ravel()))
            n_rows += g.size
        # (rows, 4, W): ~pass, pass, pass & correct, pass & disagrees with the backbone
        self._table = np.concatenate(blocks, axis=0)

    @property
    def backbone_accuracy(self) -> float:
        return float(self._final.mean())

    def _bitsets(self, m: int, cand: I64, head: I64, thr: F64) -> U64:
        """(Q, 4, W) bitsets for Q (candidate, head, threshold) triples of metric ``m``."""
        conf = self.split.head_conf[m]
        out = []
        for lo in range(0, len(cand), 256):  # bounded memory: 256 x N booleans at a time
            c, h, t = cand[lo:lo + 256], head[lo:lo + 256], thr[lo:lo + 256]
            passing = conf[c, h] >= t[:, None].astype(np.float32)
            ok, dis = self._correct[c, h], self._disagree[c, h]
            out.append(np.stack([_pack(~passing), _pack(passing), _pack(passing & ok),
                                 _pack(passing & dis)], axis=1))
        return np.concatenate(out, axis=0) & self._all

    def _rows(self, batch: ConfigBatch) -> tuple[U64, I64]:
        """Table (with any off-grid rows appended) and the row of every padded exit."""
        rows = np.zeros(batch.candidate.shape, dtype=np.int64)
        active = batch.candidate >= 0
        met = np.broadcast_to(batch.metric[:, None], rows.shape)
        found = np.zeros(rows.shape, dtype=bool)
        for m, g in self._grid.items():
            sel = active & (met == m)
            c, h, t = batch.candidate[sel], batch.head[sel], batch.threshold[sel]
            levels = (g[c, h] < t[:, None]).sum(axis=1)
            hit = g[c, h, np.minimum(levels, g.shape[2] - 1)] == t
            rows[sel] = np.where(hit, self._base_rows[m] + (c * g.shape[1] + h) * g.shape[2]
                                 + levels, 0)
            found[sel] = hit
        missing = active & ~found
        if not missing.any():
            return self._table, rows
        extra = [self._table]
        n_rows = len(self._table)
        for m in np.unique(met[missing]):
            sel = missing & (met == m)
            keys = np.stack([batch.candidate[sel], batch.head[sel], batch.threshold[sel]], 1)
            uniq, inverse = np.unique(keys, axis=0, return_inverse=True)
            extra.append(self._bitsets(int(m), uniq[:, 0].astype(np.int64),
                                       uniq[:, 1].astype(np.int64), uniq[:, 2]))
            rows[sel] = n_rows + inverse.ravel()
            n_rows += len(uniq)
        return np.concatenate(extra, axis=0), rows

    def _count(self, table: U64, rows: I64) -> tuple[I64, I64, I64, I64, I64]:
        """Per-exit (exits, correct, discordant) counts and the final remainder's counts.

        Rows are processed in chunks of ``_CHUNK`` so the working set stays in cache.
        """
        n_p, k_max = rows.shape
        n_exits = (rows > 0).sum(axis=1)
        order = np.argsort(-n_exits, kind="stable")
        rows_s, ne_s = rows[order], n_exits[order]
        counts = np.zeros((n_p, k_max, 3), dtype=np.int64)
        final = np.zeros((n_p, 2), dtype=np.int64)
        for lo in range(0, n_p, _CHUNK):
            hi = min(lo + _CHUNK, n_p)
            rem = np.repeat(self._all[None, :], hi - lo, axis=0)
            for k in range(int(ne_s[lo]) if hi > lo else 0):
                n = int((ne_s[lo:hi] > k).sum())
                g = table[rows_s[lo:lo + n, k]]  # (n, 4, W)
                hits = g[:, 1:, :] & rem[:n, None, :]
                counts[lo:lo + n, k] = np.bitwise_count(hits).sum(axis=2)
                rem[:n] &= g[:, 0, :]
            final[lo:hi, 0] = np.bitwise_count(rem).sum(axis=1)
            final[lo:hi, 1] = np.bitwise_count(rem & self._final_bits[None, :]).sum(axis=1)
        inv = np.empty_like(order)
        inv[order] = np.arange(n_p)
        c, f = counts[inv], final[inv]
        return c[..., 0], c[..., 1], c[..., 2], f[:, 0], f[:, 1]

    def evaluate(self, configs: Sequence[EENNConfig] | ConfigBatch) -> ProxyScores:
        """Score every configuration of a population on this split."""
        batch = configs if isinstance(configs, ConfigBatch) else ConfigBatch.from_configs(configs)
        n_p, n_c = len(batch.metric), self.costs.n_candidates
        if batch.boundaries.shape[1] != len(self.platform.links):
            raise ValueError(f"configs have {batch.boundaries.shape[1]} boundaries but platform "
                             f"{self.platform.name!r} has {len(self.platform.links)} links")
        table, rows = self._rows(batch)
        ex_n, ex_ok, ex_dis, fin_n, fin_ok = self._count(table, rows)
        cand = np.where(batch.candidate >= 0, batch.candidate, n_c)  # padding -> dummy column
        pr = np.arange(n_p)[:, None]
        per_cand = np.zeros((3, n_p, n_c + 1), dtype=np.int64)
        for i, arr in enumerate((ex_n, ex_ok, ex_dis)):
            np.add.at(per_cand[i], (np.broadcast_to(pr, cand.shape), cand), arr)
        heads = np.full((n_p, n_c + 1), -1, dtype=np.int64)
        heads[np.broadcast_to(pr, cand.shape), cand] = batch.head
        pc = population_costs(self._tables, heads[:, :n_c], batch.boundaries)
        exit_n = per_cand[0, :, :n_c]
        n = self.n_samples

        def expected(cum: F64) -> F64:
            total = (exit_n * cum[:, :n_c]).sum(axis=1) + fin_n * cum[:, n_c]
            return np.asarray(total / n, dtype=np.float64)

        n_d = self.platform.n_devices
        onehot = pc.device[:, :, None] == np.arange(n_d)[None, None, :]
        finish = ((onehot[:, :n_c] * exit_n[:, :, None]).sum(axis=1)
                  + onehot[:, n_c] * fin_n[:, None])
        ratio = np.maximum(pc.weight_bytes / self._tables.flash, pc.peak_bytes / self._tables.ram)
        return ProxyScores(
            n_samples=n, backbone_correct=int(self._final.sum()),
            exit_count=exit_n, exit_correct=per_cand[1, :, :n_c], final_count=fin_n,
            final_correct=fin_ok, discordant=per_cand[2].sum(axis=1),
            macs=expected(pc.cum_macs), energy_j=expected(pc.cum_energy),
            latency_s=expected(pc.cum_latency), worst_latency_s=pc.cum_latency[:, n_c].copy(),
            finish_fraction=finish / n, weight_bytes=pc.weight_bytes, peak_bytes=pc.peak_bytes,
            memory_ratio=ratio.max(axis=1) if n_d else np.zeros(n_p),
        )

