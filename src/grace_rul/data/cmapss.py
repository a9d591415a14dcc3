"""NASA C-MAPSS turbofan data: the reader, and the data contract every fleet follows.

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

Everything GRACE does to the data before a network sees it is stated here; this module
reads the files, :mod:`grace_rul.data.scaling` fits the scaling and regimes and
:mod:`grace_rul.data.windows` makes the labels, splits and windows:

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

from grace_rul.config import DATASETS
from grace_rul.errors import GraceError

if TYPE_CHECKING:  # importlib.resources.abc is 3.11+; annotations only
    from importlib.resources.abc import Traversable

SETTINGS: tuple[str, ...] = ("setting1", "setting2", "setting3")
COLUMNS: tuple[str, ...] = ("unit", "cycle", *SETTINGS, *(f"s{i}" for i in range(1, 22)))
SENSORS: tuple[str, ...] = (
    "s2", "s3", "s4", "s7", "s8", "s9", "s11", "s12", "s13", "s14", "s15", "s17", "s20", "s21",
)  # fmt: skip

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


# Verified, parsed files: (location, size, mtime) -> frame or RUL array. Process-local.
_CACHE: dict[tuple[str, int | None, int | None], Any] = {}


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
