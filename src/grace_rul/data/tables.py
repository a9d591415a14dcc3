"""A fleet of one's own: run-to-failure tables (CSV or Parquet) described by a YAML file.

A dataset YAML (``--dataset fleet.yaml``)::

    name: pumps                       # optional (default: the YAML's file name)
    train: pumps_train.parquet        # run-to-failure histories; CSV or Parquet
    test: pumps_test.csv              # optional: histories that end before failure
    test_rul: pumps_test_rul.csv      # optional: columns unit, rul (true RUL at the last row)
    unit: pump_id                     # unit id column (whole numbers or text ids)
    time: cycle                       # time column (whole numbers; rows in any order)
    settings: [load, speed]           # optional operating settings
    regimes: auto                     # auto | none | an integer k (default: auto with settings)
    sensors: [p_in, p_out, vib_x]     # or auto
    max_rul: 125                      # optional, see "precedence"
    window: 30                        # optional, see "precedence"
    nan_policy: error                 # error (default) | ffill (fill forward within a unit)

Paths are relative to the YAML. The tables go through the same contract as C-MAPSS
(:mod:`grace_rul.data.cmapss`): labels (RUL = last time of the unit - time, plus the
``test_rul`` value for test units, capped at ``data.max_rul``), health classes, windows
with front padding, the seeded validation split by whole units and the normaliser
fitted on training units only, per regime where there are regimes
(:mod:`grace_rul.data.scaling`: k-means on standardised settings; ``data.normalization
auto`` is per regime when more than one regime is found).

Sensors ``auto``: every numeric column other than unit, time and settings; a column
that is constant (std < 1e-8 of its scale) or near-constant (one value in at least
99.5 % of the training rows) is dropped, and :func:`describe` reports it.

Without ``test``: ``round(data.test_fraction * units)`` whole training units are held
out for the test, drawn with ``numpy.random.default_rng(0)`` (fixed, so every run seed
is scored on the same units). Those units run to failure, so they are scored like the
validation units: ``data.val_cuts`` seeded cuts per unit, last window each.
``metrics.json`` says so in ``test_split``. ``test`` without ``test_rul`` means the test
histories run to failure too (scored the same way).

Precedence: the YAML's ``max_rul`` and ``window`` are the dataset's defaults. A
``data.max_rul`` / ``data.window`` set explicitly (``--set``, ``--config``) overrides
them; :func:`grace_rul.resolve.resolve_config` writes the resolved values into the run's
config, so a checkpoint and an exported model carry them.

Unit ids may be text (``pump-A``): each file's ids are numbered 1..n in sorted order,
``test_rul`` rows are matched by id, and :func:`describe` states the numbering.

Every problem is one line (:class:`~grace_rul.errors.GraceError`): a missing file or
column (with near names), a blank unit id, a non-numeric column, NaN cells (rows and column named),
a unit id or time that is not a whole number or beyond 2**53, a setting or sensor beyond
float32, duplicate (unit, time) rows, fewer than 3 units,
a training unit shorter than the window, ``test_rul`` rows that do not match the test
units, and a sensor list that is empty after dropping constant columns. The cell checks
are those of prediction inputs (:mod:`grace_rul.data.frames`), so a table that trains is
a table that predicts.
"""

from __future__ import annotations

import difflib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from grace_rul.bounded import MAX_TABLE_BYTES, PARQUET_MAGIC, read_table_bytes
from grace_rul.config import DataConfig
from grace_rul.data import frames
from grace_rul.data.cmapss import RawSubset
from grace_rul.data.windows import TEST_SEED, check_window, split_units
from grace_rul.errors import GraceError, brief
from grace_rul.io import load_yaml

KEYS: tuple[str, ...] = (
    "name", "train", "test", "test_rul", "unit", "time", "settings", "regimes", "sensors",
    "max_rul", "window", "nan_policy",
)  # fmt: skip
NAN_POLICIES: tuple[str, ...] = ("error", "ffill")
MIN_UNITS = 3
NEAR_CONSTANT_SHARE = 0.995  # one value in this share of training rows: dropped


@dataclass
class TableSpec:
    """A parsed dataset YAML: file paths (absolute) and column roles."""

    path: Path
    name: str
    train: Path
    unit: str
    time: str
    test: Path | None = None
    test_rul: Path | None = None
    settings: list[str] = field(default_factory=list)
    regimes: str | int = "auto"
    sensors: list[str] | str = "auto"
    max_rul: int | None = None
    window: int | None = None
    nan_policy: str = "error"


def read_spec(path: str | Path) -> TableSpec:
    """Parse and check a dataset YAML (files must exist; columns are checked on reading)."""

    p = Path(path).expanduser()
    doc = load_yaml(p, "dataset YAML")
    for key in doc:
        if key not in KEYS:
            near = difflib.get_close_matches(str(key), KEYS, n=3)
            hint = f"did you mean {', '.join(near)}?" if near else f"known: {', '.join(KEYS)}"
            raise GraceError(f"{p}: unknown key '{key}' ({hint})")
    for key in ("train", "unit", "time"):
        if not doc.get(key):
            raise GraceError(f"{p}: missing key '{key}'")

    def file(key: str) -> Path | None:
        if not doc.get(key):
            return None
        f = Path(str(doc[key])).expanduser()
        f = f if f.is_absolute() else p.parent / f
        if not f.is_file():
            raise GraceError(f"{p}: {key} file not found: {f}")
        return f

    settings = doc.get("settings") or []
    if isinstance(settings, str):
        settings = [settings]
    sensors = doc.get("sensors", "auto")
    if isinstance(sensors, list):
        sensors = [str(s) for s in sensors]
    elif sensors != "auto":
        raise GraceError(f"{p}: sensors must be a list of columns or 'auto' (got {brief(sensors)})")
    regimes = doc.get("regimes", "auto" if settings else "none")
    if isinstance(regimes, bool) or not (
        regimes in ("auto", "none") or (isinstance(regimes, int) and regimes >= 1)
    ):
        raise GraceError(
            f"{p}: regimes must be auto, none or a positive integer (got {brief(regimes)})"
        )
    if regimes != "none" and not settings:
        raise GraceError(f"{p}: regimes: {regimes} needs operating settings (settings: [...])")
    nan_policy = str(doc.get("nan_policy", "error"))
    if nan_policy not in NAN_POLICIES:
        raise GraceError(f"{p}: nan_policy must be one of {', '.join(NAN_POLICIES)}")
    ints = {}
    for key in ("max_rul", "window"):
        value = doc.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise GraceError(f"{p}: {key} must be a whole number (got {brief(value)})")
        ints[key] = value
    spec = TableSpec(
        path=p,
        name=str(doc.get("name") or p.stem),
        train=file("train"),  # type: ignore[arg-type]
        unit=str(doc["unit"]),
        time=str(doc["time"]),
        test=file("test"),
        test_rul=file("test_rul"),
        settings=[str(s) for s in settings],
        regimes=regimes,
        sensors=sensors,
        nan_policy=nan_policy,
        **ints,
    )
    if spec.test_rul is not None and spec.test is None:
        raise GraceError(f"{p}: test_rul given without a test file")
    return spec


def dataset_defaults(path: str | Path) -> dict[str, int]:
    """The ``window`` / ``max_rul`` a dataset YAML sets (for config resolution)."""
    spec = read_spec(path)
    return {k: v for k, v in (("window", spec.window), ("max_rul", spec.max_rul)) if v is not None}


def read_file(path: Path) -> pd.DataFrame:
    """A CSV or Parquet table (by content; gzip allowed), read within ``MAX_TABLE_BYTES``."""
    data = read_table_bytes(path, MAX_TABLE_BYTES)
    try:
        if data[:4] == PARQUET_MAGIC:
            return pd.read_parquet(io.BytesIO(data))
        return pd.read_csv(io.BytesIO(data))
    except Exception as exc:  # pandas and pyarrow raise many types for unreadable files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise GraceError(f"{path}: not a readable CSV or Parquet table ({first})") from None


def read_tables(cfg: DataConfig, data_dir: str | Path | None = None) -> RawSubset:
    """Read a dataset YAML's tables into a checked :class:`RawSubset` (``data_dir`` unused)."""
    spec = read_spec(cfg.dataset)
    train_raw = read_file(spec.train)
    notes: dict[str, Any] = {}
    sensors = _sensors(spec, train_raw, notes)
    columns = [spec.unit, spec.time, *spec.settings, *sensors]
    train = train_ids = _clean(train_raw, columns, spec, spec.train)
    units = np.unique(train["unit"])
    if len(units) < MIN_UNITS:
        raise GraceError(
            f"{spec.train}: {len(units)} unit(s); a dataset needs at least {MIN_UNITS} "
            "(training, validation and test units)"
        )
    check_window(train, cfg.window, str(spec.train))
    if spec.test is None:
        rest, held = split_units(units, cfg.test_fraction, TEST_SEED)
        test = train[train["unit"].isin(held)].reset_index(drop=True)
        train = train[train["unit"].isin(rest)].reset_index(drop=True)
        test_rul = np.zeros(len(held))
        split = (
            f"held-out training units ({len(held)} of {len(units)}, run to failure, "
            f"{cfg.val_cuts} seeded cuts each)"
        )
    else:
        test = _clean(read_file(spec.test), columns, spec, spec.test)
        if spec.test_rul is None:
            test_rul = np.zeros(test["unit"].nunique())
            split = f"test file units (run to failure, {cfg.val_cuts} seeded cuts each)"
        else:
            test_rul = _test_rul(spec, test)
            split = "test units, last window"
    for role, frame in (("train", train_ids), ("test", test if spec.test else None)):
        if frame is not None and frame.attrs.get("unit_labels") is not None:
            ids = frame.attrs["unit_labels"]
            notes[f"{role}_unit_ids"] = (
                f"text ids numbered 1..{len(ids)} in sorted order ({ids[0]} = 1, {ids[-1]} = "
                f"{len(ids)}); predictions.csv and trajectories.csv use the numbers"
            )
    return RawSubset(
        dataset=spec.name,
        train=train,
        test=test,
        test_rul=test_rul,
        sensors=tuple(sensors),
        settings=tuple(spec.settings),
        regimes=spec.regimes,
        test_split=split,
        test_cuts=spec.test_rul is None,
        notes=notes,
    )


def _near(name: str, columns: list[str]) -> str:
    near = difflib.get_close_matches(name, columns, n=3, cutoff=0.5)
    return f"near: {', '.join(near)}" if near else f"columns: {', '.join(columns[:12])}"


def _sensors(spec: TableSpec, frame: pd.DataFrame, notes: dict[str, Any]) -> list[str]:
    """The sensor columns: the YAML's list, or every other numeric, non-constant column."""
    columns = [str(c) for c in frame.columns]
    for role, name in (("unit", spec.unit), ("time", spec.time)):
        if name not in columns:
            raise GraceError(f"{spec.train}: no {role} column '{name}' ({_near(name, columns)})")
    dropped: dict[str, str] = {}
    if spec.sensors != "auto":
        sensors = list(spec.sensors)
        if not sensors:
            raise GraceError(f"{spec.path}: sensors is an empty list")
    else:
        taken = {spec.unit, spec.time, *spec.settings}
        sensors = []
        for name in columns:
            if name in taken:
                continue
            column = frame[name]
            if not pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column):
                dropped[name] = "not numeric"
                continue
            values = column.to_numpy(dtype=np.float64, na_value=np.nan)
            values = values[np.isfinite(values)]
            if len(values) == 0:
                dropped[name] = "no values"
                continue
            scale = max(1.0, float(np.abs(values).max()))
            share = float(pd.Series(values).value_counts().iloc[0]) / len(values)
            if values.std() < 1e-8 * scale:
                dropped[name] = "constant"
            elif share >= NEAR_CONSTANT_SHARE:
                dropped[name] = f"near-constant ({share:.1%} of rows one value)"
            else:
                sensors.append(name)
        if not sensors:
            raise GraceError(
                f"{spec.train}: no sensors left after dropping constant columns "
                f"({', '.join(f'{k}: {v}' for k, v in dropped.items()) or 'no other columns'})"
            )
    notes["sensors_dropped"] = dropped
    return sensors


def _clean(frame: pd.DataFrame, columns: list[str], spec: TableSpec, source: Path) -> pd.DataFrame:
    """Columns unit, cycle, settings, sensors (float64), checked and ordered by unit, time."""
    names = [str(c) for c in frame.columns]
    frame = frame.set_axis(names, axis=1)
    for name in columns:
        if name not in names:
            raise GraceError(f"{source}: no column '{name}' ({_near(name, names)})")
    frame, labels = _number_units(frame, spec.unit, source)
    values: dict[str, np.ndarray] = {}
    for name in columns:
        column = frame[name]
        if isinstance(column, pd.DataFrame):
            raise GraceError(f"{source}: column '{name}' appears more than once")
        numbers, bad = frames.as_numbers(column)
        if pd.api.types.is_bool_dtype(column) or bad is not None:
            row = bad or 0
            raise GraceError(
                f"{source}: column '{name}' is not numeric ({brief(column.iloc[row], 40)} at "
                f"data row {row + 1})"
            )
        values[name] = numbers
    if len(frame) == 0:
        raise GraceError(f"{source}: no rows")

    def at(i: int) -> str:
        return f"data row {i + 1}"

    def named(u: int) -> Any:  # a unit as the user wrote it
        return labels[u - 1] if labels is not None else u

    unit = frames.whole_numbers(values[spec.unit], spec.unit, str(source), at)
    time = frames.whole_numbers(values[spec.time], spec.time, str(source), at)
    # Rows in any order (a database or Spark export is rarely sorted): sorted here by
    # (unit, time); only true duplicates are refused.
    order = frames.duplicate_rows(unit, time, spec.time, str(source), at, named)
    data = {"unit": unit[order], "cycle": time[order]}
    data.update({name: values[name][order] for name in columns[2:]})
    clean = pd.DataFrame(data)
    if spec.nan_policy == "ffill":
        clean[columns[2:]] = clean.groupby("unit", sort=False)[columns[2:]].ffill()
    for name in columns[2:]:
        _no_nan(clean, name, source, order)

    def row(i: int) -> str:
        return f"unit {named(int(clean['unit'].iat[i]))}, {spec.time} {clean['cycle'].iat[i]}"

    for name in columns[2:]:
        what = "setting" if name in spec.settings else "sensor"
        frames.finite_float32(
            clean[name].to_numpy(), name, what, str(source), lambda i: at(int(order[i])), row
        )
    if labels is not None:
        clean.attrs["unit_labels"] = labels
    return clean


def _number_units(frame: pd.DataFrame, name: str, source: Path) -> tuple[pd.DataFrame, list | None]:
    """Text unit ids (``pump-A``) replaced by 1..n in sorted id order, and the sorted ids.

    Numeric ids (or numbers written as text) are left for the whole-number checks. A
    blank id is refused.
    """
    if name not in frame.columns or isinstance(frame[name], pd.DataFrame):
        return frame, None
    labels, blank = frames.text_unit_ids(frame[name])
    if blank is not None:
        raise GraceError(f"{source}: missing unit id in column '{name}' at data row {blank + 1}")
    if labels is None:
        return frame, None
    return frame.assign(**{name: frames.unit_codes(frame[name], labels) + 1}), labels


def _no_nan(frame: pd.DataFrame, name: str, source: Path, order: np.ndarray) -> None:
    """Refuse NaN/Inf cells of one column (rows in ``order``), naming up to three data rows
    (file order)."""
    values = frame[name].to_numpy(dtype=np.float64, na_value=np.nan)
    bad = np.flatnonzero(~np.isfinite(values))
    if not len(bad):
        return
    rows = np.sort(order[bad])[:3] + 1
    more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
    raise GraceError(
        f"{source}: {len(bad)} NaN/Inf cell(s) in column '{name}' at data row(s) "
        f"{', '.join(map(str, rows))}{more} (nan_policy: ffill fills within a unit)"
    )


def _test_rul(spec: TableSpec, test: pd.DataFrame) -> np.ndarray:
    """The test_rul table as one value per test unit (ascending unit order), checked."""
    table = read_file(spec.test_rul)  # type: ignore[arg-type]
    names = [str(c) for c in table.columns]
    unit_col = spec.unit if spec.unit in names else "unit"
    for name in (unit_col, "rul"):
        if name not in names:
            raise GraceError(f"{spec.test_rul}: no column '{name}' ({_near(name, names)})")
    rul = pd.to_numeric(table["rul"], errors="coerce").to_numpy(dtype=np.float64)
    labels = test.attrs.get("unit_labels")
    if labels is not None:  # text ids: the test file's numbering (1..n in sorted id order)
        given = table[unit_col].astype(str).str.strip()
        unknown = sorted(set(given) - set(labels))
        if unknown:
            raise GraceError(
                f"{spec.test_rul}: rows for unit(s) {', '.join(unknown[:5])} that are not in "
                f"the test file {spec.test}"
            )
        code = {label: i + 1 for i, label in enumerate(labels)}
        table = table.assign(**{unit_col: given.map(code)})
    units = pd.to_numeric(table[unit_col], errors="coerce").to_numpy(dtype=np.float64)
    if not (np.isfinite(rul).all() and np.isfinite(units).all()):
        raise GraceError(f"{spec.test_rul}: non-numeric or missing unit/rul values")
    units = units.astype(np.int64)
    if len(np.unique(units)) != len(units):
        raise GraceError(f"{spec.test_rul}: a unit has more than one row")
    test_units = np.unique(test["unit"])
    extra = np.setdiff1d(units, test_units)
    if len(extra):
        raise GraceError(
            f"{spec.test_rul}: rows for unit(s) {', '.join(map(str, extra[:5]))} that are not "
            f"in the test file {spec.test}"
        )
    missing = np.setdiff1d(test_units, units)
    if len(missing):
        raise GraceError(
            f"{spec.test_rul}: no row for test unit(s) {', '.join(map(str, missing[:5]))}"
        )
    return rul[np.argsort(units)]
