"""Certified accuracy drop: Learn-then-Test on a calibration split the search never saw.

What is guaranteed. Let ``L(x) = 1`` when the backbone classifies ``x`` correctly and the
EENN does not ("a loss"), else 0. For the chosen EENN ``f``, with probability at least
``1 - delta`` over the draw of the calibration samples (the search part fixed),
``E[L] <= epsilon`` on the data distribution the calibration samples are drawn from. Since
the accuracy drop against the backbone is ``P(backbone right, EENN wrong) - P(backbone
wrong, EENN right) <= E[L]``, the same statement holds for the drop: **the chosen point
loses at most ``epsilon`` accuracy against the backbone, with probability >= 1 - delta**.
The bound is one-sided and conservative (EENN wins where the backbone is wrong are not
credited), and it needs the calibration and deployment samples to be exchangeable.

How. Learn-then-Test (Angelopoulos, Bates, Candes, Jordan, Lei, "Learn then Test:
Calibrating Predictive Algorithms to Achieve Risk Control", arXiv:2110.01052, 2021), as
applied to early exits in "Fast yet Safe: Early-Exiting with Risk Control" (Jazbec,
Timans, Hadzi Veljkovic, Sakmann, Zhang, Naesseth, Nalisnick, NeurIPS 2024), here on a
searched front. Each front candidate ``j`` is a null hypothesis ``H_j: E[L_j] > epsilon``
with the exact binomial p-value ``P(Binom(n, epsilon) <= k_j)`` (``k_j`` losses among ``n``
calibration samples; :func:`scipy.special.bdtr`), valid because ``k_j`` is
stochastically at least ``Binom(n, epsilon)`` under ``H_j``. Family-wise error control at
``delta`` makes every certified candidate at once, so the cheapest of them too, hold:

- ``fixed_sequence``: candidates are tested in an order fixed before the calibration data
  is looked at (fewest losses on the *search* part first, ties: most expensive first, the
  likeliest to hold), each at level ``delta``, stopping at the first that fails;
- ``bonferroni``: every candidate at level ``delta / m`` (``m`` the front's size); no
  order, so better only when the front is short.

``uncertified`` is the rule without this protocol: a per-candidate Wilson bound on the same
val samples the search selected on (:meth:`evaluators.proxy.ProxyScores.accuracy_drop_upper`),
whose confidence does not survive the selection.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from evaluators._config import ConfigError, Group
from evaluators.eenn import EENNConfig, ExitChoice
from evaluators.predictions import SplitPredictions

__all__ = [
    "METHODS",
    "Certificate",
    "GuaranteeSpec",
    "calibration_split",
    "certifiable_epsilon",
    "certification_path",
    "certify",
    "loss_counts",
    "needed_calibration",
    "path_raises",
    "val_parts",
]

METHODS: tuple[str, ...] = ("uncertified", "fixed_sequence", "bonferroni", "auto")
_CERTIFYING = ("fixed_sequence", "bonferroni")
_KEY = "constraints.guarantee"


@dataclass(frozen=True, kw_only=True)
class GuaranteeSpec:
    """``constraints.guarantee``: certify the chosen point on a held-out calibration split.

    ``method``: ``auto`` (the default: ``fixed_sequence`` where val is large enough to
    certify, else ``uncertified`` with a note; :meth:`for_val`), ``uncertified`` (off:
    today's per-candidate Wilson rule on all of val), ``fixed_sequence`` or ``bonferroni``
    (module doc); ``epsilon``: the certified accuracy
    drop (``None``: ``constraints.max_accuracy_drop``); ``delta``: the allowed probability
    that the guarantee fails; ``calibration_share``: share of val held out for certification
    (stratified by label; the search and its threshold grid see only the rest).
    """

    method: str = "auto"
    epsilon: float | None = None
    delta: float = 0.1
    calibration_share: float = 0.5

    @property
    def active(self) -> bool:
        """Certifies (``auto`` is not yet resolved: :meth:`for_val` decides)."""
        return self.method in _CERTIFYING

    def for_val(self, n_val: int, *,
                max_accuracy_drop: float | None) -> tuple[GuaranteeSpec, str | None]:
        """``auto`` resolved for ``n_val`` val samples, and a note when it does not certify.

        ``auto`` is ``fixed_sequence`` where the calibration share of val can certify anything
        (:meth:`check_sizes`) and there is a drop to certify, else ``uncertified`` with a note
        that says why and what would certify. Other methods come back unchanged (too small a
        calibration part is then :meth:`check_sizes`' error).
        """
        if self.method != "auto":
            return self, None
        off = replace(self, method="uncertified")
        epsilon = self.epsilon if self.epsilon is not None else max_accuracy_drop
        if epsilon is None or not 0.0 < epsilon < 1.0:
            return off, None  # no accuracy drop to certify
        spec = replace(self, method="fixed_sequence", epsilon=epsilon)
        try:
            spec.check_sizes(n_val)
        except ConfigError:
            n_cal = round(self.calibration_share * n_val)
            return off, (f"the chosen point is not certified: {n_cal} of {n_val} val samples for "
                         f"calibration ({_KEY}.calibration_share={self.calibration_share:g}) "
                         f"cannot certify epsilon={spec.epsilon:g} at delta={self.delta:g}, "
                         f"which needs at least {spec.min_calibration}; give more val samples "
                         f"or set {_KEY}.method=uncertified to silence this")
        return spec, None

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any] | None) -> GuaranteeSpec:
        """Read ``constraints.guarantee``; epsilon/delta/share outside (0, 1) are errors."""
        g = Group.of(_KEY, cfg)
        g.check_keys(["method", "epsilon", "delta", "calibration_share"])
        d = cls()
        return cls(method=g.text("method", d.method, choices=METHODS),
                   epsilon=g.number("epsilon", d.epsilon, above=0.0, below=1.0, optional=True),
                   delta=g.number("delta", d.delta, above=0.0, below=1.0),
                   calibration_share=g.number("calibration_share", d.calibration_share,
                                              above=0.0, below=1.0))

    def resolve_epsilon(self, max_accuracy_drop: float | None) -> GuaranteeSpec:
        """This spec with ``epsilon`` filled in; a guarantee with no drop to certify is an error."""
        if not self.active or self.epsilon is not None:
            return self
        if max_accuracy_drop is None or not 0.0 < max_accuracy_drop < 1.0:
            raise ConfigError(
                f"{_KEY}.method={self.method} certifies an accuracy drop but "
                f"constraints.max_accuracy_drop={max_accuracy_drop!r} pins none in (0, 1); set "
                f"{_KEY}.epsilon=<drop in (0, 1)> or {_KEY}.method=uncertified")
        return GuaranteeSpec(method=self.method, epsilon=max_accuracy_drop, delta=self.delta,
                             calibration_share=self.calibration_share)

    @property
    def level(self) -> float:
        """The level each candidate is tested at (``delta``, split over the path by Bonferroni)."""
        steps = len(path_raises(self.method)) if self.active else 1
        return self.delta / steps if self.method == "bonferroni" else self.delta

    @property
    def min_calibration(self) -> int:
        """Fewest calibration samples with which any candidate can be certified.

        A candidate with no loss has p-value ``(1 - epsilon)^n``; it must reach :attr:`level`.
        """
        eps = self.epsilon if self.epsilon is not None else 0.01
        return math.ceil(math.log(self.level) / math.log1p(-eps))

    def check_sizes(self, n_val: int) -> tuple[int, int]:
        """(search, calibration) sizes of ``n_val`` val samples; too few to certify: an error."""
        n_cal = round(self.calibration_share * n_val)
        n_search = n_val - n_cal
        need = self.min_calibration
        if n_cal < need or n_search < 1:
            share = min(math.ceil(100 * need / max(n_val, 1)) / 100, 1.0)
            fix = (f"use {_KEY}.calibration_share>={share:.2f}" if share < 1.0 and n_search
                   else f"use at least {need + 1} val samples")
            raise ConfigError(
                f"{_KEY}.calibration_share={self.calibration_share:g} leaves {n_cal} of {n_val} "
                f"val samples for calibration and {n_search} for the search; certifying "
                f"epsilon={self.epsilon:g} at delta={self.delta:g} ({self.method}) needs at least "
                f"{need} calibration samples; {fix}, or {_KEY}.method=uncertified")
        return n_search, n_cal


def calibration_split(split: SplitPredictions, *, share: float,
                      seed: int) -> tuple[SplitPredictions, SplitPredictions]:
    """``split`` cut into (search, calibration) parts, stratified by label, seeded.

    Each class gives ``round(share * its count)`` samples to calibration (largest
    remainders adjusted so the total is ``round(share * N)``); sample order is kept.
    """
    rng = np.random.default_rng(seed)
    labels = split.labels
    n_cal = round(share * len(labels))
    classes, counts = np.unique(labels, return_counts=True)
    quota = share * counts
    take = np.floor(quota).astype(np.int64)
    order = np.argsort(-(quota - take), kind="stable")
    take[order[: n_cal - int(take.sum())]] += 1
    cal = np.zeros(len(labels), dtype=bool)
    for cls, k in zip(classes, take, strict=True):
        idx = np.flatnonzero(labels == cls)
        cal[rng.choice(idx, size=int(k), replace=False)] = True
    return _subset(split, ~cal), _subset(split, cal)


def val_parts(spec: GuaranteeSpec, val: SplitPredictions, *,
              seed: int) -> tuple[SplitPredictions, SplitPredictions | None]:
    """(search part, calibration part) of ``val`` for ``spec``; all of val and None when off.

    Too small a calibration part is a one-line :class:`ConfigError` (:meth:`check_sizes`).
    """
    if not spec.active:
        return val, None
    spec.check_sizes(len(val.labels))
    return calibration_split(val, share=spec.calibration_share, seed=seed)


def _subset(split: SplitPredictions, mask: NDArray[np.bool_]) -> SplitPredictions:
    return SplitPredictions(labels=split.labels[mask], head_pred=split.head_pred[..., mask],
                            head_conf=split.head_conf[..., mask],
                            final_pred=split.final_pred[mask],
                            final_conf=split.final_conf[..., mask])


def loss_counts(*, discordant: NDArray[np.int64], correct: NDArray[np.int64],
                backbone_correct: int) -> NDArray[np.int64]:
    """Samples the backbone gets right and the EENN wrong, per configuration.

    ``discordant = n01 + n10`` and ``backbone_correct - correct = n01 - n10``.
    """
    return np.asarray((discordant + backbone_correct - correct) // 2, dtype=np.int64)


@dataclass(frozen=True, kw_only=True)
class Certificate:
    """Outcome of certifying candidates (index order of the inputs)."""

    method: str
    epsilon: float
    delta: float
    n_calibration: int
    losses: NDArray[np.int64]  # calibration losses per candidate
    p_values: NDArray[np.float64]
    tested: NDArray[np.bool_]  # fixed sequence: reached before the first failure
    certified: NDArray[np.bool_]

    @property
    def level(self) -> float:
        """The level each p-value is compared with."""
        m = max(len(self.losses), 1)
        return self.delta / m if self.method == "bonferroni" else self.delta


def certify(*, losses: NDArray[np.int64], n: int, order: NDArray[np.int64],
            epsilon: float, delta: float, method: str) -> Certificate:
    """Test ``H_j: E[L_j] > epsilon`` for every candidate; family-wise error <= ``delta``.

    ``order``: the fixed sequence (candidate indices, first tested first), chosen without
    the calibration data; ignored by ``bonferroni``.
    """
    if method not in _CERTIFYING:
        raise ValueError(f"{_KEY}.method={method!r} is not one of {_CERTIFYING}")
    losses = np.asarray(losses, dtype=np.int64)
    from scipy.special import bdtr  # the binomial CDF; imported here: scipy costs ~0.3 s

    p = np.asarray(bdtr(losses, n, epsilon), dtype=np.float64)
    m = len(losses)
    if method == "bonferroni":
        tested = np.ones(m, dtype=bool)
        certified = p <= delta / max(m, 1)
    else:
        passed = p[order] <= delta
        reached = np.concatenate([[True], np.cumprod(passed)[:-1].astype(bool)])[:m]
        tested, certified = np.zeros(m, dtype=bool), np.zeros(m, dtype=bool)
        tested[order] = reached
        certified[order] = reached & passed
    return Certificate(method=method, epsilon=epsilon, delta=delta, n_calibration=n,
                       losses=losses, p_values=p, tested=tested, certified=certified)


def needed_calibration(*, rate: float, epsilon: float, level: float,
                       limit: int = 1_000_000) -> int | None:
    """About how many calibration samples certify a candidate with loss rate ``rate``.

    The smallest ``n`` whose p-value at ``k = floor(rate * n)`` losses reaches ``level``;
    ``None`` when ``rate >= epsilon`` or more than ``limit`` would be needed.
    """
    from scipy.special import bdtr

    if rate >= epsilon:
        return None
    lo = 1
    while lo <= limit:  # doubling, then a vectorised scan of the last octave
        hi = min(lo * 2, limit)
        ns = np.arange(lo, hi + 1)
        ok = bdtr(np.floor(rate * ns), ns, epsilon) <= level
        if ok.any():
            return int(ns[np.argmax(ok)])
        if hi == limit:
            return None
        lo = hi + 1
    return None


def certifiable_epsilon(*, losses: int, n: int, level: float) -> float:
    """The smallest epsilon whose binomial test passes at ``level`` for ``losses`` of ``n``.

    The one-sided Clopper-Pearson upper bound, ``Beta(1 - level; k + 1, n - k)``.
    """
    if losses >= n:
        return 1.0
    from scipy.special import betaincinv  # the beta quantile

    return float(betaincinv(losses + 1, n - losses, 1.0 - level))


def path_raises(method: str) -> tuple[float, ...]:
    """How far each step of the certification path raises the thresholds, first tested first.

    ``fixed_sequence``: ``(l / 32)^2`` for ``l = 32 .. 0`` (33 steps from thresholds at 1 down
    to the searched point, finest near it; each test at ``delta``). ``bonferroni``: 1, then
    ``2^-l`` for ``l = 1 .. 6``, then 0 (8 steps: each test costs ``delta / 8``, so few,
    spread geometrically).
    """
    if method == "bonferroni":
        return (1.0, *(2.0 ** -level for level in range(1, 7)), 0.0)
    return tuple((level / 32) ** 2 for level in range(32, -1, -1))


def certification_path(cfg: EENNConfig, *, raises: Sequence[float]) -> list[EENNConfig]:
    """``cfg`` with every threshold ``t`` moved to ``t + a (1 - t)``, one EENN per ``a``.

    Raising every threshold lets fewer samples leave early, so the losses along the path
    shrink roughly nested as ``a`` grows: the family Learn-then-Test walks from the
    conservative end (large ``a``, :func:`path_raises`) down to ``cfg`` (``a = 0``).
    """
    return [EENNConfig(exits=tuple(ExitChoice(candidate=e.candidate, head=e.head,
                                              threshold=float(e.threshold + a * (1 - e.threshold)))
                                   for e in cfg.exits),
                       boundaries=cfg.boundaries, metric=cfg.metric) for a in raises]
