"""NASA C-MAPSS turbofan data: reading, labels, scaling, splits and windows, in one place.

C-MAPSS (Saxena et al., 2008) is a fleet of simulated turbofan engines run to
failure. It has four subsets that differ in operating conditions and fault modes:

======  ==========  ======  ===========  ==========
subset  conditions  faults  train units  test units
======  ==========  ======  ===========  ==========
FD001   1           1       100          100
FD002   6           1       260          259
FD003   1           2       100          100
FD004   6           2       249          248
======  ==========  ======  ===========  ==========

Everything GRACE does to the data before a network sees it is decided here:

Files
    The twelve original NASA text files, gzip-compressed, are bundled in
    ``grace_rul/data/cmapss/`` (``SOURCE.md`` there says where they came from).
    ``data_dir`` may point to another directory holding the same twelve
    ``{train,test,RUL}_FD00x.txt.gz`` files. Each file is parsed with a whitespace
    separator (the lines carry trailing spaces) and must have 26 numeric columns
    (:data:`COLUMNS`: unit, cycle, three operational settings, sensors s1..s21),
    or 1 for the ``RUL_*`` files, with one RUL value per test unit. The sha256 of
    every decompressed file is checked against :data:`SHA256` the first time the
    file is read in a process; a changed file is refused. Verified, parsed files
    are cached in memory (keyed by path, size and mtime), so repeated loads in one
    process cost a copy, not a parse. Every problem is a one-line
    :class:`~grace_rul.errors.GraceError` naming the file.
Features
    The 14 informative sensors of :data:`SENSORS`; the other seven are constant or
    nearly so. Operational settings are not features: they only pick the regime.
Labels
    RUL of a training row = last cycle of its unit - its cycle (the unit fails
    after its last cycle). Test units stop early: ``RUL_FD00x`` gives the RUL at
    each test unit's last cycle, which is added. Both are capped piecewise-linearly
    at ``max_rul`` (125): engines early in life are "healthy", not "far from
    failure by an unknowable amount".
Health state
    Three classes from the capped RUL (:func:`health_class`): 2 critical when
    RUL <= ``critical_rul`` (30), 1 degrading when ``critical_rul`` < RUL <=
    ``degrading_rul`` (80), 0 healthy above.
Split
    ``round(val_fraction * n_units)`` whole training engines (20 %) are held out
    for validation, chosen by ``numpy.random.default_rng(seed)``: windows of one
    engine never land in both parts. With ``folds`` K >= 2 the training units are dealt
    into K folds instead (:func:`fold_units`: seeded, stratified by life length) and
    fold ``fold`` is the validation part; the K runs of ``fold`` = 1..K together
    validate every training engine exactly once. The test split is the last window of each
    test unit, in unit order, which is the standard C-MAPSS "last-window" score.
Scaling
    A :class:`Normalizer` is fitted on the *training units only* (never validation
    or test) and standardises each sensor to mean 0 / std 1. ``global`` mode uses
    one mean/std per sensor. ``regime`` mode first assigns every row an operating
    regime by rounding the settings (setting1 to 0 decimals, setting2 to 2,
    setting3 to 0: exactly six regimes in FD002/FD004, one in FD001/FD003) and
    standardises per regime, because the regimes dominate sensor variance. Rows of
    a regime not seen in fitting go to the nearest fitted regime. ``auto`` (the
    default) means regime for FD002/FD004 and global for FD001/FD003. The fitted
    statistics are stored in every checkpoint (:meth:`Normalizer.to_dict`).
Windows
    Windows of ``window`` (30) consecutive cycles, stride 1; a window's label is the
    RUL (and health) at its last cycle. A unit of L >= window cycles gives
    L - window + 1 windows. Units shorter than the window (some FD002/FD004 test
    units have 19-29 cycles) are front-padded by repeating their first row, never
    dropped.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import re
import zlib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from grace_rul.config import DATASETS, SCALINGS, DataConfig
from grace_rul.errors import GraceError

if TYPE_CHECKING:  # importlib.resources.abc is 3.11+; annotations only
    from importlib.resources.abc import Traversable

SETTINGS: tuple[str, ...] = ("setting1", "setting2", "setting3")
COLUMNS: tuple[str, ...] = ("unit", "cycle", *SETTINGS, *(f"s{i}" for i in range(1, 22)))
SENSORS: tuple[str, ...] = (
    "s2", "s3", "s4", "s7", "s8", "s9", "s11", "s12", "s13", "s14", "s15", "s17", "s20", "s21",
)  # fmt: skip
# Decimals the settings are rounded to when they are clustered into operating regimes.
REGIME_DECIMALS: tuple[int, ...] = (0, 2, 0)
# Subsets with six operating conditions; "auto" normalisation is per regime for these.
MULTI_REGIME: tuple[str, ...] = ("FD002", "FD004")

# sha256 of each decompressed file, copied from data/cmapss/SOURCE.md.
SHA256: dict[str, str] = {
    "train_FD001.txt": "963b5e22825b34d8b21c69e1aeb4af3e647050eb672ee8834ba4b5d91d2de0f8",
    "test_FD001.txt": "3cda7109ce17bafb5443f2ac926cfcf88154b941b8c4cf95eb55d1ddd6f52851",
    "RUL_FD001.txt": "a19c8ec94931949d0485bdc35118206e9c81c4547b422efb9cf86f4ceddbceca",
    "train_FD002.txt": "dac6c4dbc4e7c1bdeb5747da3d313d05c395bb99801b44a002b26a2ba13d788f",
    "test_FD002.txt": "de7b5bf7e998a985c378488480528b7c02cff1406a46740def362dda8d9b4e02",
    "RUL_FD002.txt": "c851dd96a6ea6998d3c4a8f834d3c8013aa90e93a6ed950dc826ad0655b2906b",
    "train_FD003.txt": "2abbe9968cc5e8eb091980f51b20f62bb4127336d3482cb52071d53bf23329e2",
    "test_FD003.txt": "299babd63c8d987cef079c4a425429f33b3a34797d803bbe2ad48c29dbd0d790",
    "RUL_FD003.txt": "df1e0566306b174a2de41c67a3e7a51877889598b78643fc3e5685259091b7cb",
    "train_FD004.txt": "27ef6160b6a1dcb2613a88de9c239f763b223f02cdc41dc5cdedc5dc189b6218",
    "test_FD004.txt": "1dc675fff0624bac10786927c6715b37d1297657137400d2b1a3138d777a3ba5",
    "RUL_FD004.txt": "196b836b85a95ac7fdbbf29c5fdf1657382eafa445644d114ffaaf50dc2975e1",
}

SUMMARY_ROWS = 2  # data.window_features: the mean row and the slope row
# Seed of test splits a fleet lacks (held-out units, their cuts): fixed, so every run
# seed of a sweep is scored on the same test windows.
TEST_SEED = 0

_STD_FLOOR = 1e-8  # a sensor with a smaller spread (constant in a regime) is only centred

# Verified, parsed files: (location, size, mtime) -> frame or RUL array. Process-local.
_CACHE: dict[tuple[str, int | None, int | None], Any] = {}


# --------------------------------------------------------------------------- reading


@dataclass
class RawSubset:
    """One fleet as read from disk: train and test frames plus the test RUL.

    A C-MAPSS subset uses the defaults. Other fleets (:mod:`grace_rul.data.tables`,
    :mod:`grace_rul.data.ncmapss`) name their own sensors and settings; their frames
    always have ``unit`` and ``cycle`` columns (the time column, renamed).
    """

    dataset: str
    train: pd.DataFrame  # columns unit, cycle, settings, sensors; ordered by unit then cycle
    test: pd.DataFrame
    test_rul: np.ndarray  # true RUL at each test unit's last cycle, in unit order
    sensors: tuple[str, ...] = SENSORS
    settings: tuple[str, ...] = SETTINGS
    regimes: str | int = "round"  # round (C-MAPSS rounding) | none | auto | k (k-means)
    # How the test split was made, for metrics.json; "cuts": test units run to failure
    # and are scored like validation units (truncated at data.val_cuts points).
    test_split: str = "test units, last window"
    test_cuts: bool = False
    label_column: str | None = None  # a column of true RUL per row (N-CMAPSS Y), else computed
    notes: dict[str, Any] = field(default_factory=dict)  # what the reader dropped, and why


def bundled_dir() -> Traversable:
    """The directory of the C-MAPSS files shipped inside the package."""
    return resources.files("grace_rul.data").joinpath("cmapss")


def clear_cache() -> None:
    """Forget every verified, parsed file (the next read decompresses and checks again)."""
    _CACHE.clear()


def read_cmapss(dataset: str, data_dir: str | Path | None = None) -> RawSubset:
    """Read, check and parse one subset (``"FD001"``..``"FD004"``).

    ``data_dir=None`` reads the bundled copy; otherwise ``data_dir`` must hold the
    twelve ``*.txt.gz`` files. Raises :class:`GraceError` naming the file on a
    missing file, a broken gzip, a wrong column count, a non-numeric cell, a
    checksum mismatch or a RUL file that does not have one value per test unit.
    """
    name = str(dataset).upper()
    if name not in DATASETS:
        raise GraceError(f"unknown C-MAPSS subset '{dataset}' (choose from: {', '.join(DATASETS)})")
    if data_dir is None:
        folder: Traversable = bundled_dir()
    else:
        folder = Path(data_dir).expanduser()
        if not folder.is_dir():
            raise GraceError(f"C-MAPSS data directory not found: {folder}")
    train = _load(folder.joinpath(f"train_{name}.txt.gz"), rul_file=False)
    test = _load(folder.joinpath(f"test_{name}.txt.gz"), rul_file=False)
    rul_path = folder.joinpath(f"RUL_{name}.txt.gz")
    test_rul = _load(rul_path, rul_file=True)
    n_test_units = test["unit"].nunique()
    if len(test_rul) != n_test_units:
        raise GraceError(
            f"{rul_path}: has {len(test_rul)} RUL values but test_{name} has {n_test_units} units"
        )
    # Copies: the cached originals must survive callers that edit their frames.
    return RawSubset(name, train.copy(), test.copy(), test_rul.copy())


def _load(path: Traversable, rul_file: bool) -> Any:
    """Decompress, parse and verify one file once per process; return the cached result."""
    if not path.is_file():
        raise GraceError(f"C-MAPSS file not found: {path}")
    if isinstance(path, Path):
        st = path.stat()
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    else:  # a resource inside a zip: it cannot change while the process runs
        key = (str(path), None, None)
    if key in _CACHE:
        return _CACHE[key]
    try:
        text = gzip.decompress(path.read_bytes())
    except (OSError, EOFError, zlib.error) as exc:
        raise GraceError(
            f"{path}: not a readable gzip file (truncated or corrupt: {exc})"
        ) from None
    parsed = _parse(text, path, rul_file)
    # Structure is checked first so a malformed file gets the specific message; the
    # checksum then refuses any other change to the original NASA text.
    digest = hashlib.sha256(text).hexdigest()
    expected = SHA256.get(path.name.removesuffix(".gz"))
    if digest != expected:
        raise GraceError(
            f"{path}: sha256 of the decompressed text is {digest[:12]}..., expected "
            f"{str(expected)[:12]}... (not the original NASA C-MAPSS file)"
        )
    _CACHE[key] = parsed
    return parsed


def _parse(text: bytes, path: Traversable, rul_file: bool) -> pd.DataFrame | np.ndarray:
    """Parse whitespace-separated text into a frame (or the RUL vector), refusing bad cells."""
    n_cols = 1 if rul_file else len(COLUMNS)
    try:
        frame = pd.read_csv(io.BytesIO(text), sep=r"\s+", header=None)
    except pd.errors.EmptyDataError:
        raise GraceError(f"{path}: the file is empty") from None
    except pd.errors.ParserError as exc:  # a row with more fields than the first one
        found = re.search(r"fields in line (\d+), saw (\d+)", str(exc))
        where = f"line {found[1]} has {found[2]} fields" if found else str(exc).strip()
        raise GraceError(f"{path}: wrong column count: {where}, expected {n_cols}") from None
    counts = frame.notna().sum(axis=1).to_numpy()
    bad = np.flatnonzero(counts != n_cols)
    if frame.shape[1] != n_cols or len(bad):
        line = int(bad[0]) + 1 if len(bad) else 1
        seen = int(counts[line - 1])
        raise GraceError(
            f"{path}: wrong column count: line {line} has {seen} fields, expected {n_cols}"
        )
    for col in frame.columns:
        if not pd.api.types.is_numeric_dtype(frame[col]):
            numeric = pd.to_numeric(frame[col], errors="coerce")
            row = int(np.flatnonzero(numeric.isna().to_numpy())[0])
            raise GraceError(
                f"{path}: non-numeric value {frame[col].iloc[row]!r} at line {row + 1}, "
                f"column {int(col) + 1}"
            )
    if rul_file:
        return frame[0].to_numpy(dtype=np.float64)
    frame.columns = list(COLUMNS)
    return frame.astype({"unit": np.int64, "cycle": np.int64})


# --------------------------------------------------------------------------- labels


def health_class(rul: np.ndarray | Tensor, critical: int = 30, degrading: int = 80) -> Any:
    """Health state from (capped) RUL: 2 critical (<= critical), 1 degrading (<= degrading), 0.

    Returns int64 labels of the input's kind: a tensor for a tensor, else an ndarray.
    """
    if isinstance(rul, Tensor):
        out = torch.zeros(rul.shape, dtype=torch.int64, device=rul.device)
        out[rul <= degrading] = 1
        out[rul <= critical] = 2
        return out
    values = np.asarray(rul)
    labels = np.zeros(values.shape, dtype=np.int64)
    labels[values <= degrading] = 1
    labels[values <= critical] = 2
    return labels


def add_labels(
    frame: pd.DataFrame,
    max_rul: int,
    critical: int,
    degrading: int,
    final_rul: np.ndarray | None = None,
) -> pd.DataFrame:
    """Return a copy of ``frame`` with capped ``rul`` and ``health`` columns.

    ``rul = min(last cycle of the unit - cycle + final_rul[unit], max_rul)``;
    ``final_rul`` (test units only) holds the true RUL at each unit's last cycle,
    one value per unit in ascending unit order; it is 0 for run-to-failure units.
    """
    units = frame["unit"].to_numpy()
    cycles = frame["cycle"].to_numpy()
    last = frame.groupby("unit", sort=False)["cycle"].transform("max").to_numpy()
    rul = (last - cycles).astype(np.float64)
    if final_rul is not None:
        unit_ids = np.unique(units)
        final = np.asarray(final_rul, dtype=np.float64).reshape(-1)
        if len(final) != len(unit_ids):
            raise GraceError(
                f"final RUL has {len(final)} values but the frame has {len(unit_ids)} units"
            )
        rul += final[np.searchsorted(unit_ids, units)]
    rul = np.minimum(rul, float(max_rul))
    return frame.assign(rul=rul, health=health_class(rul, critical, degrading))


# --------------------------------------------------------------------------- scaling


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
    k-means (:func:`grace_rul.data.regimes.kmeans_regimes`) on the settings
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
            from grace_rul.data.regimes import kmeans_regimes

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
            from grace_rul.data.regimes import nearest

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


# --------------------------------------------------------------------------- windows


@dataclass
class Split:
    """Windows ready for training: CPU tensors, one row per window."""

    x: Tensor  # (N, window rows, 14) float32 (window_rows: + 2 with data.window_features)
    rul: Tensor  # (N,) float32, capped RUL at the window's last cycle
    health: Tensor  # (N,) int64
    unit: Tensor  # (N,) int64
    cycle: Tensor  # (N,) int64, cycle of the window's last row

    def __len__(self) -> int:
        return int(self.x.shape[0])


def window_rows(cfg: DataConfig) -> int:
    """Rows of one network input: ``data.window``, plus 2 with ``data.window_features``."""
    return cfg.window + (SUMMARY_ROWS if cfg.window_features else 0)


def window_summary(x: np.ndarray) -> np.ndarray:
    """Windows (N, W, F) with each sensor's mean and least-squares slope appended as 2 rows.

    Row W is the mean over the window's W rows; row W + 1 the slope of the ordinary
    least-squares line through (t, x_t), t = 0..W-1, in scaled units per cycle:
    ``sum_t (t - t_mean)(x_t - x_mean) / sum_t (t - t_mean)^2``. Front-padded rows count
    as rows (the same window gives the same summary at training and prediction time).
    """
    values = np.asarray(x, dtype=np.float64)
    t = np.arange(values.shape[1], dtype=np.float64)
    t -= t.mean()
    mean = values.mean(axis=1)
    slope = np.einsum("t,ntf->nf", t, values - mean[:, None]) / (t @ t)
    return np.concatenate([x, np.stack([mean, slope], axis=1).astype(x.dtype)], axis=1)


def make_windows(
    features: np.ndarray,
    frame: pd.DataFrame,
    window: int,
    last_only: bool = False,
    summary: bool = False,
) -> Split:
    """Cut stride-1 windows from each unit; labels come from each window's last row.

    ``features`` are the rows of ``frame`` (ordered by unit, then cycle), already
    scaled. Units shorter than ``window`` are front-padded by repeating their first
    row. ``last_only`` keeps only the last window of each unit. ``summary``
    (``data.window_features``) appends :func:`window_summary`'s two rows to every
    window. A frame without ``rul``/``health`` columns (unlabelled data) gives NaN RUL
    and health -1. Training, evaluation and ``grace predict`` all cut windows here.
    """
    if window < 1:
        raise GraceError(f"window must be >= 1 (got {window})")
    features = np.asarray(features, dtype=np.float32)
    if len(features) != len(frame):
        raise ValueError(f"features have {len(features)} rows, frame has {len(frame)}")
    units = frame["unit"].to_numpy(dtype=np.int64)
    if len(units) == 0:
        raise GraceError("no rows to cut windows from")
    starts = np.flatnonzero(np.r_[True, units[1:] != units[:-1]])
    if len(starts) != len(np.unique(units)):
        raise ValueError("frame rows must be grouped by unit (ordered by unit, then cycle)")
    lengths = np.diff(np.r_[starts, len(units)])
    pad = np.maximum(window - lengths, 0)
    padded = lengths + pad
    # Row index of every position of every padded unit: the first `pad` positions
    # repeat the unit's first row.
    offsets = np.r_[0, np.cumsum(padded)[:-1]]
    pos = np.arange(padded.sum()) - np.repeat(offsets, padded)
    rows = np.repeat(starts, padded) + np.maximum(pos - np.repeat(pad, padded), 0)
    if last_only:
        first = offsets + padded - window
    else:
        n_win = padded - window + 1
        first = np.repeat(offsets, n_win) + (
            np.arange(n_win.sum()) - np.repeat(np.r_[0, np.cumsum(n_win)[:-1]], n_win)
        )
    index = np.lib.stride_tricks.sliding_window_view(rows, window)[first]  # (N, window)
    last = index[:, -1]
    x = features[index]
    if summary:
        x = window_summary(x)
    if "rul" in frame:
        rul = frame["rul"].to_numpy(dtype=np.float32)[last]
        health = frame["health"].to_numpy(dtype=np.int64)[last]
    else:
        rul = np.full(len(last), np.nan, dtype=np.float32)
        health = np.full(len(last), -1, dtype=np.int64)
    return Split(
        x=torch.from_numpy(np.ascontiguousarray(x)),
        rul=torch.from_numpy(rul),
        health=torch.from_numpy(health),
        unit=torch.from_numpy(units[last]),
        cycle=torch.from_numpy(frame["cycle"].to_numpy(dtype=np.int64)[last]),
    )


# --------------------------------------------------------------------------- assembly


@dataclass
class CMAPSSData:
    """A subset ready to train on: windowed train/val/test splits and the fitted scaling."""

    dataset: str
    train: Split
    val: Split  # every window of the validation units
    val_last: Split  # last windows of validation units cut at seeded random points
    test: Split | None  # the last window of each test unit, in unit order (None: not built)
    normalizer: Normalizer
    feature_names: tuple[str, ...]
    train_units: list[int]
    val_units: list[int]
    test_split: str = "test units, last window"  # how the test split was made (metrics.json)


def split_units(units: np.ndarray, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded hold-out of ``round(val_fraction * n)`` whole units: (train units, val units)."""
    units = np.unique(units)
    if len(units) < 2:
        raise GraceError(f"need at least 2 training units to hold some out (got {len(units)})")
    n_val = min(max(int(round(val_fraction * len(units))), 1), len(units) - 1)
    chosen = np.random.default_rng(seed).choice(units, size=n_val, replace=False)
    val = sorted(int(u) for u in chosen)
    train = sorted(int(u) for u in np.setdiff1d(units, chosen))
    return train, val


def fold_units(lengths: pd.Series, k: int, seed: int) -> list[list[int]]:
    """Deal whole units into ``k`` seeded folds, stratified by life length.

    ``lengths`` maps unit -> number of cycles. Units are sorted by length and taken in
    blocks of ``k``; each block's units go to the ``k`` folds in an order drawn by
    ``numpy.random.default_rng(seed)``, so every fold gets short, medium and long lives
    and fold sizes differ by at most one. Returns ``k`` sorted unit lists, disjoint and
    covering every unit once.
    """
    if k < 2:
        raise GraceError(f"folds must be >= 2 (got {k})")
    order = lengths.sort_values(kind="stable").index.to_numpy()
    if k > len(order):
        raise GraceError(
            f"data.folds={k} is more than the {len(order)} training units: each fold needs one"
        )
    rng = np.random.default_rng(seed)
    folds: list[list[int]] = [[] for _ in range(k)]
    for start in range(0, len(order), k):
        block = order[start : start + k]
        # the short last block goes to the currently smallest folds, in random order
        targets = sorted(range(k), key=lambda f: (len(folds[f]), rng.random()))[: len(block)]
        for unit, f in zip(block, rng.permutation(targets)):
            folds[int(f)].append(int(unit))
    return [sorted(f) for f in folds]


def holdout_units(frame: pd.DataFrame, cfg: DataConfig, seed: int) -> tuple[list[int], list[int]]:
    """(train units, validation units) of a labelled training frame under ``cfg``.

    One seeded hold-out (:func:`split_units`), or fold ``cfg.fold`` of :func:`fold_units`.
    """
    if cfg.folds >= 2:
        folds = fold_units(frame.groupby("unit").size(), cfg.folds, seed)
        if cfg.fold < 1:
            raise GraceError("data.fold must name the held-out fold (1..data.folds)")
        val = folds[cfg.fold - 1]
        train = sorted(u for f in folds for u in f if u not in set(val))
        return train, val
    return split_units(frame["unit"].to_numpy(), cfg.val_fraction, seed)


def load_cmapss(cfg: DataConfig, seed: int, data_dir: str | Path | None = None) -> CMAPSSData:
    """Read a subset and build its train/val/test windows as described in the module docstring.

    ``seed`` picks the validation units and their truncation points; ``data_dir`` is
    where the files are (``None``: the bundled copy).
    """
    cfg.validate()
    return build_data(read_cmapss(cfg.dataset, data_dir), cfg, seed)


def check_window(train: pd.DataFrame, window: int, source: str) -> None:
    """Refuse a window longer than a training unit: one rule for every fleet.

    A unit shorter than the window would train only on front-padded windows.
    """
    lengths = train.groupby("unit").size()
    if window > int(lengths.max()):
        raise GraceError(
            f"data.window={window} is longer than every training unit of {source} "
            f"(longest: {int(lengths.max())} cycles): each of its {len(lengths)} units has "
            f"fewer than data.window={window} rows"
        )
    short = lengths[lengths < window]
    if len(short):
        labels = train.attrs.get("unit_labels")
        unit = labels[int(short.index[0]) - 1] if labels is not None else short.index[0]
        raise GraceError(
            f"{source}: unit {unit} has {short.iloc[0]} rows, fewer than data.window={window} "
            f"({len(short)} such unit(s)); lower data.window or drop the unit"
        )


def build_data(raw: RawSubset, cfg: DataConfig, seed: int, with_test: bool = True) -> CMAPSSData:
    """Windows, labels, split and scaling of any fleet read into a :class:`RawSubset`.

    ``with_test=False`` builds no test split (``test`` is ``None``): what a tuning trial
    sees, so no choice it makes can depend on the test set.
    """
    check_window(raw.train, cfg.window, raw.dataset)
    train_all = label_frame(raw, raw.train, cfg)
    train_units, val_units = holdout_units(train_all, cfg, seed)
    in_val = train_all["unit"].isin(val_units).to_numpy()
    train, val = train_all[~in_val], train_all[in_val]
    normalizer = fit_normalizer(raw, train, cfg)
    val_split = make_windows(
        normalizer.transform(val), val, cfg.window, summary=cfg.window_features
    )
    return CMAPSSData(
        dataset=raw.dataset,
        train=make_windows(
            normalizer.transform(train), train, cfg.window, summary=cfg.window_features
        ),
        val=val_split,
        val_last=truncated_windows(val_split, cfg.val_cuts, seed),
        test=test_windows(raw, normalizer, cfg) if with_test else None,
        normalizer=normalizer,
        feature_names=tuple(raw.sensors),
        train_units=train_units,
        val_units=val_units,
        test_split=raw.test_split,
    )


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


def label_frame(
    raw: RawSubset, frame: pd.DataFrame, cfg: DataConfig, final_rul: np.ndarray | None = None
) -> pd.DataFrame:
    """Capped RUL and health of every row of one of ``raw``'s frames.

    Computed from the cycles (:func:`add_labels`), or taken from ``raw.label_column``
    (capped at ``max_rul``) where the fleet records the true RUL of every row.
    """
    if raw.label_column is None:
        return add_labels(frame, cfg.max_rul, cfg.critical_rul, cfg.degrading_rul, final_rul)
    rul = np.minimum(frame[raw.label_column].to_numpy(dtype=np.float64), float(cfg.max_rul))
    return frame.assign(rul=rul, health=health_class(rul, cfg.critical_rul, cfg.degrading_rul))


def test_windows(raw: RawSubset, normalizer: Normalizer, cfg: DataConfig) -> Split:
    """The test windows of ``raw``, labelled and scaled with ``normalizer``.

    The last window of every test unit; test units that run to failure
    (``raw.test_cuts``) are cut like validation units instead: ``data.val_cuts``
    windows per unit, drawn with the fixed seed :data:`TEST_SEED`.
    """
    if raw.test_cuts:
        test = label_frame(raw, raw.test, cfg)
        split = make_windows(
            normalizer.transform(test), test, cfg.window, summary=cfg.window_features
        )
        return truncated_windows(split, cfg.val_cuts, TEST_SEED)
    test = label_frame(raw, raw.test, cfg, raw.test_rul)
    return make_windows(
        normalizer.transform(test), test, cfg.window, last_only=True, summary=cfg.window_features
    )


def truncated_windows(split: Split, cuts: int, seed: int) -> Split:
    """Validation built like the test set: each unit cut at ``cuts`` seeded random points.

    A C-MAPSS test unit stops at an unknown cycle before failure and is scored on its
    last window only. Cutting a validation unit after cycle ``c`` and taking its last
    window is the same as taking the unit's window that ends at ``c``, so this picks
    ``cuts`` distinct windows per unit of ``split`` (all of them when the unit has
    fewer), uniformly among its windows, with ``numpy.random.default_rng(seed)``.
    Rows stay in unit, then cycle order.
    """
    if cuts < 1:
        raise GraceError(f"cuts must be >= 1 (got {cuts})")
    units = split.unit.numpy()
    starts = np.flatnonzero(np.r_[True, units[1:] != units[:-1]])
    ends = np.r_[starts[1:], len(units)]
    rng = np.random.default_rng(seed)
    chosen = [
        np.sort(rng.choice(np.arange(a, b), size=min(cuts, b - a), replace=False))
        for a, b in zip(starts, ends)
    ]
    index = torch.from_numpy(np.concatenate(chosen))
    return Split(
        x=split.x[index],
        rul=split.rul[index],
        health=split.health[index],
        unit=split.unit[index],
        cycle=split.cycle[index],
    )


def unit_windows(
    raw: RawSubset, normalizer: Normalizer, cfg: DataConfig, unit: int, split: str = "test"
) -> Split:
    """Every window along one unit's life (for a full RUL trajectory), labelled as in training."""
    if split not in ("train", "test"):
        raise GraceError(f"split must be train or test (got '{split}')")
    frame = raw.test if split == "test" else raw.train
    rows = frame[frame["unit"] == unit]
    if rows.empty:
        known = frame["unit"].unique()
        raise GraceError(
            f"{raw.dataset} {split} has no unit {unit} (units {known.min()}..{known.max()})"
        )
    final = None
    if split == "test":
        final = raw.test_rul[np.searchsorted(np.unique(frame["unit"].to_numpy()), unit)]
        final = np.array([final])
    labelled = label_frame(raw, rows, cfg, final)
    return make_windows(
        normalizer.transform(labelled), labelled, cfg.window, summary=cfg.window_features
    )
