"""Scaling fitted on the training units: the :class:`Normalizer`, and operating regimes.

A :class:`Normalizer` standardises (or min-max scales) every sensor, globally or per
operating regime (the contract: :mod:`grace_rul.data.cmapss`). C-MAPSS regimes come from
rounding its three settings (:func:`regime_keys`). A fleet of one's own has settings of
any scale and resolution, so GRACE clusters them instead (:func:`kmeans_regimes`):

1. Each setting is standardised with its mean and std over the training rows (a std
   below 1e-8 is replaced by 1).
2. k-means (scikit-learn, ``n_init=10``, ``random_state=0``: the regimes are a property
   of the data, not of the run seed) with the given k, or with ``auto``:
   **the smallest k in 1..8 whose clusters leave at most 0.1 % of the standardised
   settings' variance** (inertia / total sum of squares <= :data:`AUTO_RESIDUAL`). When
   no k does, the settings vary continuously rather than sitting at a few operating
   points, and there is one regime. On C-MAPSS this finds the six rounding regimes of
   FD002/FD004 (k=5 leaves 0.7 %, k=6 under 1e-6) and one regime in FD001/FD003
   (k=8 still leaves 16 %).
3. Regimes are ordered by their centres, lexicographically (first setting first), and
   every row belongs to the nearest centre in standardised space: in fitting and for
   any later row, seen or not.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from grace_rul.config import SCALINGS, DataConfig
from grace_rul.data.cmapss import SENSORS, SETTINGS, RawSubset
from grace_rul.errors import GraceError

AUTO_MAX_K = 8
AUTO_RESIDUAL = 1e-3  # share of the standardised settings' variance left inside clusters
_STD_FLOOR = 1e-8  # a sensor with a smaller spread (constant in a regime) is only centred
# Decimals the settings are rounded to when they are clustered into operating regimes.
REGIME_DECIMALS: tuple[int, ...] = (0, 2, 0)
# Subsets with six operating conditions; "auto" normalisation is per regime for these.
MULTI_REGIME: tuple[str, ...] = ("FD002", "FD004")


def standardise(settings: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(z, mean, std)`` of a (rows, settings) matrix; a std below 1e-8 becomes 1."""
    mean = settings.mean(axis=0)
    std = settings.std(axis=0)
    std = np.where(std < _STD_FLOOR, 1.0, std)
    return (settings - mean) / std, mean, std


def choose_k(z: np.ndarray) -> int:
    """The ``auto`` rule: smallest k whose k-means leaves <= 0.1 % of the variance, else 1."""
    total = float(((z - z.mean(axis=0)) ** 2).sum())
    if total <= 0.0:
        return 1
    distinct = len(np.unique(z, axis=0))
    for k in range(2, min(AUTO_MAX_K, distinct) + 1):
        if _kmeans(z, k).inertia_ / total <= AUTO_RESIDUAL:
            return k
    return 1


def kmeans_regimes(
    settings: np.ndarray, k: str | int
) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """``(centres, regime of every row, (setting mean, setting std))`` of the training rows.

    ``centres`` are in standardised setting space, ordered lexicographically.
    """
    settings = np.asarray(settings, dtype=np.float64)
    if settings.ndim != 2 or settings.shape[1] == 0:
        raise GraceError("regimes need at least one operating setting")
    z, mean, std = standardise(settings)
    if k == "auto":
        k = choose_k(z)
    k = int(k)
    distinct = len(np.unique(z, axis=0))
    if k < 1 or k > distinct:
        raise GraceError(
            f"regimes: {k} regimes asked for, but the settings take {distinct} distinct values"
        )
    centres = z.mean(axis=0, keepdims=True) if k == 1 else _kmeans(z, k).cluster_centers_
    centres = centres[np.lexsort(centres.T[::-1])]
    regime = nearest(z, centres)
    return centres, regime, (mean, std)


def nearest(z: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Index of the nearest centre (Euclidean, standardised space) of every row."""
    return ((z[:, None, :] - centres[None]) ** 2).sum(axis=2).argmin(axis=1).astype(np.int64)


def _kmeans(z: np.ndarray, k: int):
    try:
        from sklearn.cluster import KMeans
    except ImportError:  # pragma: no cover - a declared dependency
        raise GraceError("regimes need scikit-learn: pip install scikit-learn") from None
    return KMeans(n_clusters=k, n_init=10, random_state=0).fit(z)


def resolve_normalization(mode: str, dataset: str) -> str:
    """Resolve ``auto`` to ``regime`` for FD002/FD004 and ``global`` otherwise."""
    if mode == "auto":
        return "regime" if str(dataset).upper() in MULTI_REGIME else "global"
    if mode not in ("global", "regime"):
        raise GraceError(f"normalization must be auto, global or regime (got '{mode}')")
    return mode


def regime_keys(frame: pd.DataFrame) -> np.ndarray:
    """The rounded operating settings of every row, shape (rows, 3); equal rows = one regime."""
    settings = frame[list(SETTINGS)].to_numpy(dtype=np.float64)
    keys = np.column_stack([np.round(settings[:, i], d) for i, d in enumerate(REGIME_DECIMALS)])
    return keys + 0.0  # turns -0.0 into 0.0 so that it cannot form a regime of its own


class Normalizer:
    """Per-sensor standardisation fitted on the training units only, stored in checkpoints.

    ``mode="global"``: one mean/std per sensor. ``mode="regime"``: each sensor is
    standardised per operating regime. C-MAPSS regimes come from rounding the settings
    (:func:`regime_keys`); rows of an unseen regime use the nearest fitted regime
    centroid (distance measured in rounding steps). Other fleets find regimes by
    k-means (:func:`kmeans_regimes`) on the settings
    standardised with ``setting_scale`` (mean, std); ``keys`` are then the cluster
    centres in that space and every row goes to the nearest one. A std below 1e-8 is
    replaced by 1 (the sensor is only centred).

    ``scaling="minmax"`` maps each sensor's fitted [min, max] (per regime in regime mode)
    to [-1, 1] instead: ``mean`` and ``std`` then hold the centre ``(max + min) / 2`` and
    half-range ``(max - min) / 2`` that :meth:`transform` uses alike (a half-range below
    1e-8 is replaced by 1), and ``low``/``high`` the fitted extremes, which is what
    :meth:`to_dict` stores.
    """

    def __init__(
        self,
        mode: str,
        keys: np.ndarray,
        centroids: np.ndarray,
        mean: np.ndarray,
        std: np.ndarray,
        sensors: tuple[str, ...] = SENSORS,
        settings: tuple[str, ...] = SETTINGS,
        setting_scale: tuple[np.ndarray, np.ndarray] | None = None,
        scaling: str = "zscore",
        extremes: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> None:
        if mode not in ("global", "regime"):
            raise GraceError(f"normalizer mode must be global or regime (got '{mode}')")
        if scaling not in SCALINGS:
            raise GraceError(f"normalizer scaling must be one of {', '.join(SCALINGS)}")
        self.mode = mode
        self.scaling = scaling
        self.sensors = tuple(sensors)
        self.settings = tuple(settings)
        self.keys = _rows(keys, len(self.settings))
        self.centroids = _rows(centroids, len(self.settings))
        self.low = self.high = None
        if scaling == "minmax":
            if extremes is None:
                raise GraceError("a min-max normalizer needs the fitted min and max")
            self.low, self.high = (_rows(v, len(self.sensors)) for v in extremes)
            mean, std = (self.high + self.low) / 2, (self.high - self.low) / 2
            std = np.where(std < _STD_FLOOR, 1.0, std)
        self.mean = _rows(mean, len(self.sensors))
        self.std = _rows(std, len(self.sensors))
        self.setting_scale = (
            None
            if setting_scale is None
            else tuple(np.asarray(v, dtype=np.float64).reshape(-1) for v in setting_scale)
        )
        n = len(self.mean)
        if n < 1 or len(self.std) != n or (mode == "regime" and len(self.keys) != n):
            raise GraceError("normalizer statistics are inconsistent (corrupt checkpoint?)")
        stats = [self.keys, self.centroids, self.mean, self.std, *(self.setting_scale or ())]
        spread = [self.std, *(self.setting_scale or ())[1:]]
        if not all(np.isfinite(a).all() for a in stats) or not all((a > 0).all() for a in spread):
            raise GraceError(
                "normalizer statistics are not finite or have a std <= 0 (corrupt model file?)"
            )

    @property
    def n_regimes(self) -> int:
        return len(self.mean)

    @classmethod
    def fit(
        cls,
        frame: pd.DataFrame,
        mode: str,
        sensors: tuple[str, ...] = SENSORS,
        settings: tuple[str, ...] = SETTINGS,
        regimes: str | int = "round",
        scaling: str = "zscore",
    ) -> Normalizer:
        """Fit on ``frame`` (the training units only) in ``global`` or ``regime`` mode.

        ``regimes`` says how regime mode finds regimes: ``"round"`` (C-MAPSS rounding),
        ``"auto"`` or an integer k (k-means on the standardised settings). ``scaling`` is
        ``zscore`` or ``minmax`` (``data.scaling``).
        """
        if mode not in ("global", "regime"):
            raise GraceError(f"normalizer mode must be global or regime (got '{mode}')")
        if len(frame) == 0:
            raise GraceError("cannot fit the normalizer on an empty frame")
        sensors, settings = tuple(sensors), tuple(settings)
        values = frame[list(sensors)].to_numpy(dtype=np.float64)
        if mode == "global":
            empty = np.zeros((0, len(settings)))
            mean, std = values.mean(0, keepdims=True), _safe_std(values)
            extremes = (values.min(0, keepdims=True), values.max(0, keepdims=True))
            return cls(mode, empty, empty, mean, std, sensors, settings, None, scaling, extremes)
        raw = frame[list(settings)].to_numpy(dtype=np.float64)
        scale = None
        if regimes == "round":
            uniq, inverse = np.unique(regime_keys(frame), axis=0, return_inverse=True)
        else:
            uniq, inverse, scale = kmeans_regimes(raw, regimes)
        inverse = inverse.reshape(-1)
        counts = np.bincount(inverse)[:, None]
        centroids = np.zeros((len(uniq), len(settings)))
        np.add.at(centroids, inverse, raw)
        mean = np.zeros((len(uniq), len(sensors)))
        np.add.at(mean, inverse, values)
        mean /= counts
        var = np.zeros_like(mean)
        np.add.at(var, inverse, (values - mean[inverse]) ** 2)
        std = np.sqrt(var / counts)
        std = np.where(std < _STD_FLOOR, 1.0, std)
        low = np.full_like(mean, np.inf)
        high = np.full_like(mean, -np.inf)
        np.minimum.at(low, inverse, values)
        np.maximum.at(high, inverse, values)
        return cls(
            mode, uniq, centroids / counts, mean, std, sensors, settings, scale, scaling,
            (low, high),
        )  # fmt: skip

    def assign(self, frame: pd.DataFrame) -> np.ndarray:
        """Regime index of every row (all zeros in global mode)."""
        if self.mode == "global":
            return np.zeros(len(frame), dtype=np.int64)
        if self.setting_scale is not None:
            centre, spread = self.setting_scale
            z = (frame[list(self.settings)].to_numpy(dtype=np.float64) - centre) / spread
            return nearest(z, self.keys)
        keys = regime_keys(frame)
        match = np.all(np.isclose(keys[:, None, :], self.keys[None], atol=1e-9), axis=2)
        known = match.any(axis=1)
        regime = match.argmax(axis=1)
        if not known.all():
            steps = 10.0 ** -np.asarray(REGIME_DECIMALS, dtype=np.float64)
            settings = frame[list(SETTINGS)].to_numpy(dtype=np.float64)[~known]
            dist = (((settings[:, None, :] - self.centroids[None]) / steps) ** 2).sum(axis=2)
            regime[~known] = dist.argmin(axis=1)
        return regime.astype(np.int64)

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        """Standardised sensors of every row, shape (rows, sensors), float32."""
        values = frame[list(self.sensors)].to_numpy(dtype=np.float64)
        regime = self.assign(frame)
        return ((values - self.mean[regime]) / self.std[regime]).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        """Plain lists and floats (JSON- and ``torch.save``-safe) for checkpoints.

        C-MAPSS statistics keep their original keys; other settings names and
        k-means regimes add ``settings``, ``regime_method``, ``setting_mean`` and
        ``setting_std``.
        """
        out: dict[str, Any] = {
            "mode": self.mode,
            "sensors": list(self.sensors),
            "regime_decimals": list(REGIME_DECIMALS),
            "keys": self.keys.tolist(),
            "centroids": self.centroids.tolist(),
        }
        if self.scaling == "minmax":  # no mean/std: a reader without min-max refuses the dict
            out.update(scaling="minmax", min=self.low.tolist(), max=self.high.tolist())
        else:
            out.update(mean=self.mean.tolist(), std=self.std.tolist())
        if self.settings != SETTINGS:
            out["settings"] = list(self.settings)
        if self.setting_scale is not None:
            out["regime_method"] = "kmeans"
            out["setting_mean"] = self.setting_scale[0].tolist()
            out["setting_std"] = self.setting_scale[1].tolist()
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Normalizer:
        """Rebuild a normalizer saved by :meth:`to_dict`."""
        try:
            kmeans = d.get("regime_method", "round") == "kmeans"
            if not kmeans and list(d.get("regime_decimals", REGIME_DECIMALS)) != list(
                REGIME_DECIMALS
            ):
                raise GraceError("normalizer was fitted with other regime rounding")
            scale = (d["setting_mean"], d["setting_std"]) if kmeans else None
            settings = tuple(str(s) for s in d.get("settings", SETTINGS))
            if d.get("scaling", "zscore") == "minmax":
                extremes = (d["min"], d["max"])
                n, width = len(d["min"]), len(d["sensors"])
                return cls(
                    d["mode"], d["keys"], d["centroids"], np.zeros((n, width)),
                    np.ones((n, width)), tuple(d["sensors"]), settings, scale, "minmax", extremes,
                )  # fmt: skip
            return cls(
                d["mode"], d["keys"], d["centroids"], d["mean"], d["std"], tuple(d["sensors"]),
                settings, scale,
            )  # fmt: skip
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise GraceError(
                f"normalizer statistics are malformed (missing or bad {exc})"
            ) from None

    def __repr__(self) -> str:
        return f"Normalizer(mode={self.mode!r}, regimes={self.n_regimes}, scaling={self.scaling!r})"


def _rows(values: Any, width: int) -> np.ndarray:
    """``values`` as a float64 matrix with ``width`` columns (a width of 0 keeps the rows)."""
    array = np.asarray(values, dtype=np.float64)
    if width == 0:
        return array.reshape(len(array) if array.ndim else 0, 0)
    return array.reshape(-1, width)


def _safe_std(values: np.ndarray) -> np.ndarray:
    std = values.std(0, keepdims=True)
    return np.where(std < _STD_FLOOR, 1.0, std)


def fit_normalizer(raw: RawSubset, train: pd.DataFrame, cfg: DataConfig) -> Normalizer:
    """The normaliser of ``raw``'s training units under ``data.normalization`` and ``scaling``.

    C-MAPSS: ``auto`` is per regime for FD002/FD004. Other fleets: ``auto`` is per
    regime when the fleet's ``regimes`` setting finds more than one, else global.
    """
    if raw.regimes == "round":
        mode = resolve_normalization(cfg.normalization, raw.dataset)
        return Normalizer.fit(train, mode, raw.sensors, raw.settings, scaling=cfg.scaling)
    if cfg.normalization == "global" or raw.regimes == "none":
        if cfg.normalization == "regime":
            raise GraceError(f"data.normalization=regime, but {raw.dataset} has no regimes")
        return Normalizer.fit(train, "global", raw.sensors, raw.settings, scaling=cfg.scaling)
    fitted = Normalizer.fit(
        train, "regime", raw.sensors, raw.settings, raw.regimes, scaling=cfg.scaling
    )
    if fitted.n_regimes == 1 and cfg.normalization == "auto":
        return Normalizer.fit(train, "global", raw.sensors, raw.settings, scaling=cfg.scaling)
    return fitted
