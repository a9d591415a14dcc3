"""Split-conformal RUL intervals from signed residuals on held-out validation engines.

Calibration set
    The validation units of the run (never trained on), each truncated at
    :data:`CAL_CUTS` (20) seeded random points and scored on the window ending there,
    as a test engine is scored on its last window
    (:func:`grace_rul.data.cmapss.truncated_windows` on ``load_cmapss(...).val`` with
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
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import nn

from grace_rul.data.cmapss import CMAPSSData, Split, truncated_windows
from grace_rul.errors import GraceError
from grace_rul.model import predict

LEVELS: tuple[float, ...] = (0.8, 0.9)
CAL_CUTS = 20
CAL_SEED_OFFSET = 1  # calibration cuts use seed + 1; checkpoint selection uses seed
METHOD = "split-conformal, asymmetric signed-residual quantiles (true - predicted)"


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
    """Sorted signed calibration residuals (true - predicted RUL) and where they came from."""

    residuals: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_residuals(cls, residuals: np.ndarray, **info: Any) -> Calibration:
        values = np.round(np.sort(np.asarray(residuals, dtype=np.float64).ravel()), 6)
        if len(values) == 0 or not np.all(np.isfinite(values)):
            raise GraceError("calibration needs at least one finite residual")
        return cls(values, dict(info))

    @property
    def n(self) -> int:
        return len(self.residuals)

    def offsets(self, coverage: float) -> tuple[float, float]:
        """``(lower, upper)`` offsets added to a prediction for ``coverage``."""
        alpha = 1.0 - check_coverage(coverage)
        n = self.n
        # 1e-9 absorbs float error: 1 - 0.8 is 0.19999999999999996, not 0.2.
        lo = math.floor((n + 1) * alpha / 2 + 1e-9)
        hi = math.ceil((n + 1) * (1 - alpha / 2) - 1e-9)
        return float(self.residuals[min(max(lo, 1), n) - 1]), float(
            self.residuals[min(max(hi, 1), n) - 1]
        )

    def interval(self, pred: np.ndarray, coverage: float) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper RUL bounds around predictions ``pred`` (lower clipped at 0)."""
        low, high = self.offsets(coverage)
        pred = np.asarray(pred, dtype=np.float64)
        return np.maximum(pred + low, 0.0), pred + high

    def to_dict(self) -> dict[str, Any]:
        levels = {}
        for level in LEVELS:
            low, high = self.offsets(level)
            levels[str(level)] = {"lower_offset": low, "upper_offset": high}
        return {
            "method": METHOD,
            **self.info,
            "n": self.n,
            "levels": levels,
            "stored": "every calibration residual, sorted: any coverage in (0, 1) is served",
            "residuals": self.residuals.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibration:
        info = {k: v for k, v in d.items() if k not in ("method", "n", "levels", "stored")}
        residuals = info.pop("residuals")
        return cls.from_residuals(np.asarray(residuals, dtype=np.float64), **info)


def interval_metrics(
    true: np.ndarray,
    pred: np.ndarray,
    calibration: Calibration,
    levels: Sequence[float] = LEVELS,
) -> dict[str, dict[str, float]]:
    """Empirical coverage and mean width of the intervals at each nominal level."""
    true = np.asarray(true, dtype=np.float64)
    out = {}
    for level in levels:
        low, high = calibration.interval(pred, level)
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
    is the run's :func:`~grace_rul.data.load_cmapss` result and ``seed`` the run's seed.
    Returns ``{"0.8": {"coverage": ..., "mean_width": ...}, "0.9": {...}}``.
    """
    cal = calibration_windows(data, seed)
    pred_cal, _ = predict(model, cal.x)
    residuals = cal.rul.numpy().astype(np.float64) - pred_cal.numpy().astype(np.float64)
    calibration = Calibration.from_residuals(residuals)
    pred_test, _ = predict(model, data.test.x)
    return interval_metrics(data.test.rul.numpy(), pred_test.numpy(), calibration, levels)
