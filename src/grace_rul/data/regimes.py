"""Operating regimes of fleets with continuous settings: k-means on standardised settings.

C-MAPSS assigns regimes by rounding its three settings
(:func:`grace_rul.data.cmapss.regime_keys`). A fleet of one's own has settings of any
scale and resolution, so GRACE clusters them instead:

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

import numpy as np

from grace_rul.errors import GraceError

AUTO_MAX_K = 8
AUTO_RESIDUAL = 1e-3  # share of the standardised settings' variance left inside clusters
_STD_FLOOR = 1e-8


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
