"""Split-conformal RUL intervals from signed residuals on held-out validation engines.

Calibration set
    The validation units of the run (never trained on), each truncated at
    :data:`CAL_CUTS` (20) seeded random points and scored on the window ending there,
    as a test engine is scored on its last window
    (:func:`grace_rul.data.windows.truncated_windows` on ``load_dataset(...).val`` with
    seed ``run seed + 1``, so not the cuts that selected the checkpoint).
Residuals
    ``r = true RUL - predicted RUL`` (capped RUL, in cycles), rounded to 1e-6 and stored
    sorted in the model file, so any coverage in (0, 1) can be served.
Interval at coverage ``1 - a``
    Asymmetric: ``[pred + r_(lo), pred + r_(hi)]`` with the finite-sample corrected ranks
    ``lo = floor((n + 1) a / 2)`` and ``hi = ceil((n + 1) (1 - a / 2))`` (1-based, sorted
    ascending), so each tail misses at most ``a / 2`` for exchangeable data. When a rank
    falls outside 1..n (``n < 2 / a - 1``) the extreme residual is used and the guarantee
    no longer holds. The lower bound is clipped at 0 cycles (a true RUL is never negative).
Caveat
    Windows cut from one engine are correlated and a test fleet is not an exchangeable
    draw from the validation engines, so the coverage is approximate; the empirical test
    coverage is reported beside every model (``metrics.json``, ``grace evaluate``).
Ensembles
    The ensemble's validation cuts are the union of its members'. Each cut is predicted by
    the mean of the members that held that engine out (an out-of-bag mean: a member that
    trained on an engine would make its residual look too small).
Fold ensembles: CV+ (cross-conformal)
    The K models of a K-fold cross-validation (:mod:`grace_rul.folds`) hold out every
    training engine exactly once, so each calibration residual ``r_i = y_i - m_k(i)(x_i)``
    comes from the one fold model ``k(i)`` that never saw engine ``i``. The interval of a
    new engine ``x`` is CV+ (Barber, Candès, Ramdas & Tibshirani 2021, "Predictive
    inference with the jackknife+", Ann. Statist. 49(1)) with signed residuals: the
    ``lo``-th and ``hi``-th smallest of the ``n`` values ``m_k(i)(x) + r_i`` (ranks as
    above), each residual added to the prediction of the model it came from rather than
    to the ensemble mean. Guarantee: for exchangeable engines, K-fold CV+ at level
    ``1 - a`` covers with probability at least ``1 - 2a - min(2(1 - 1/K) / (n/K + 1),
    (1 - K/n) / (K + 1))`` (their Theorem 4; applied here to each tail at ``a / 2``, so the
    two-sided bound is ``1 - 2a`` minus twice that term); in practice it covers close to
    ``1 - a``. The same caveat as above applies: the ``n`` residuals are cuts of fewer
    engines, and cuts of one engine are not exchangeable.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import nn

from grace_rul.data.windows import CMAPSSData, Split, truncated_windows
from grace_rul.errors import GraceError
from grace_rul.model import predict

LEVELS: tuple[float, ...] = (0.8, 0.9)
CAL_CUTS = 20
CAL_SEED_OFFSET = 1  # calibration cuts use seed + 1; checkpoint selection uses seed
METHOD = "split-conformal, asymmetric signed-residual quantiles (true - predicted)"
CV_PLUS = "CV+ (cross-conformal): signed out-of-fold residuals added to each fold model"


def check_coverage(coverage: float) -> float:
    """``coverage`` as a float in (0, 1); anything else is a one-line ``GraceError``."""
    try:
        value = float(coverage)
    except (TypeError, ValueError):
        raise GraceError(f"coverage must be a number in (0, 1) (got {coverage!r})") from None
    if not 0.0 < value < 1.0:  # also refuses NaN
        raise GraceError(f"coverage must be in (0, 1), exclusive (got {coverage})")
    return value


@dataclass
class Calibration:
    """Sorted signed calibration residuals (true - predicted RUL) and where they came from.

    ``member`` (fold ensembles only) is, for each residual, the index of the member
    network that predicted it out of fold; it makes the intervals CV+.
    """

    residuals: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)
    member: np.ndarray | None = None

    @classmethod
    def from_residuals(
        cls, residuals: np.ndarray, member: np.ndarray | None = None, **info: Any
    ) -> Calibration:
        values = np.round(np.asarray(residuals, dtype=np.float64).ravel(), 6)
        if len(values) == 0 or not np.all(np.isfinite(values)):
            raise GraceError("calibration needs at least one finite residual")
        order = np.argsort(values, kind="stable")
        if member is not None:
            member = np.asarray(member, dtype=np.int64).ravel()
            if member.shape != values.shape or (member < 0).any():
                raise GraceError("calibration: one member index (>= 0) per residual is needed")
            member = member[order]
        return cls(values[order], dict(info), member)

    @property
    def n(self) -> int:
        return len(self.residuals)

    @property
    def method(self) -> str:
        return METHOD if self.member is None else CV_PLUS

    def ranks(self, coverage: float) -> tuple[int, int]:
        """0-based ranks of the lower and upper bound among ``n`` sorted values."""
        alpha = 1.0 - check_coverage(coverage)
        n = self.n
        # 1e-9 absorbs float error: 1 - 0.8 is 0.19999999999999996, not 0.2.
        lo = math.floor((n + 1) * alpha / 2 + 1e-9)
        hi = math.ceil((n + 1) * (1 - alpha / 2) - 1e-9)
        return min(max(lo, 1), n) - 1, min(max(hi, 1), n) - 1

    def offsets(self, coverage: float) -> tuple[float, float]:
        """``(lower, upper)`` offsets added to a prediction for ``coverage``."""
        lo, hi = self.ranks(coverage)
        return float(self.residuals[lo]), float(self.residuals[hi])

    def interval(
        self, pred: np.ndarray, coverage: float, member_pred: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper RUL bounds around predictions ``pred`` (lower clipped at 0).

        With CV+ residuals, ``member_pred`` (members x units) must be given: each residual
        is added to the prediction of the member it came from.
        """
        pred = np.asarray(pred, dtype=np.float64)
        if self.member is None:
            low, high = self.offsets(coverage)
            return np.maximum(pred + low, 0.0), pred + high
        if member_pred is None:
            raise GraceError("CV+ intervals need every member's prediction")
        member_pred = np.asarray(member_pred, dtype=np.float64)
        if member_pred.ndim != 2 or self.member.max() >= len(member_pred):
            raise GraceError("CV+ calibration names a member the model does not have")
        lo, hi = self.ranks(coverage)
        values = member_pred[self.member] + self.residuals[:, None]  # (n, units)
        bounds = np.partition(values, (lo, hi), axis=0)
        return np.maximum(bounds[lo], 0.0), bounds[hi]

    def to_dict(self) -> dict[str, Any]:
        levels = {}
        for level in LEVELS:
            low, high = self.offsets(level)
            levels[str(level)] = {"lower_offset": low, "upper_offset": high}
        out = {
            "method": self.method,
            **self.info,
            "n": self.n,
            "levels": levels,
            "stored": "every calibration residual, sorted: any coverage in (0, 1) is served",
            "residuals": self.residuals.tolist(),
        }
        if self.member is not None:
            out["member"] = self.member.tolist()
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibration:
        info = {k: v for k, v in d.items() if k not in ("method", "n", "levels", "stored")}
        residuals = info.pop("residuals")
        member = info.pop("member", None)
        return cls.from_residuals(
            np.asarray(residuals, dtype=np.float64),
            None if member is None else np.asarray(member, dtype=np.int64),
            **info,
        )


def interval_metrics(
    true: np.ndarray,
    pred: np.ndarray,
    calibration: Calibration,
    levels: Sequence[float] = LEVELS,
    member_pred: np.ndarray | None = None,
) -> dict[str, dict[str, float]]:
    """Empirical coverage and mean width of the intervals at each nominal level."""
    true = np.asarray(true, dtype=np.float64)
    out = {}
    for level in levels:
        low, high = calibration.interval(pred, level, member_pred)
        out[str(level)] = {
            "coverage": float(np.mean((true >= low) & (true <= high))),
            "mean_width": float(np.mean(high - low)),
        }
    return out


def calibration_windows(data: CMAPSSData, seed: int) -> Split:
    """The calibration cuts of a run: :data:`CAL_CUTS` per validation unit, seed + 1."""
    return truncated_windows(data.val, CAL_CUTS, seed + CAL_SEED_OFFSET)


def run_interval_metrics(
    model: nn.Module, data: CMAPSSData, seed: int, levels: Sequence[float] = LEVELS
) -> dict[str, dict[str, float]]:
    """``metrics.json``'s ``intervals`` for a finished run: calibrate, then score the test set.

    ``model`` holds the inference weights (e.g. inside ``ema.swapped(model)``), ``data``
    is the run's :func:`~grace_rul.data.load_dataset` result and ``seed`` the run's seed.
    Returns ``{"0.8": {"coverage": ..., "mean_width": ...}, "0.9": {...}}``.
    """
    cal = calibration_windows(data, seed)
    pred_cal, _ = predict(model, cal.x)
    residuals = cal.rul.numpy().astype(np.float64) - pred_cal.numpy().astype(np.float64)
    calibration = Calibration.from_residuals(residuals)
    pred_test, _ = predict(model, data.test.x)
    return interval_metrics(data.test.rul.numpy(), pred_test.numpy(), calibration, levels)
