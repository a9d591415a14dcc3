"""The row checks shared by training tables and prediction inputs, so both refuse alike.

:mod:`grace_rul.data.tables` (a fleet's training and test tables) and
:mod:`grace_rul.inference.inputs` (files and frames to predict) read their columns
differently (a YAML's names, file lines or data rows) but check the cells here: text
unit ids, numbers, whole-number unit ids and times, values beyond float32 and duplicate
(unit, time) rows. ``at(i)`` names row ``i`` in each caller's terms (``data row 6``,
``line 7``, ``index 5``); every refusal is one line (:class:`~grace_rul.errors.GraceError`).

Rows in time order differ on purpose: training tables are sorted by (unit, time) (a
database export is rarely sorted), while a prediction input is read in file order and
:mod:`~grace_rul.inference.inputs` refuses a time that steps back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from grace_rul.errors import GraceError

MAX_WHOLE = 2**53  # unit ids and times: whole numbers that float64 holds exactly
FLOAT32_MAX = float(np.finfo(np.float32).max)
NAN_WORDS = frozenset({"", "nan", "na", "n/a", "null", "none", "-nan"})

Place = Callable[[int], str]


def text_unit_ids(column: pd.Series) -> tuple[list[str] | None, int | None]:
    """The sorted unit ids when a unit column holds text (``None`` for numbers, or numbers
    written as text), and the position of the first blank id (``None`` if there is none)."""
    if isinstance(column.dtype, pd.CategoricalDtype):
        column = column.astype(object)
    if pd.api.types.is_numeric_dtype(column.dtype) or pd.api.types.is_bool_dtype(column.dtype):
        return None, None
    text = column.astype(str).str.strip()
    blank = column.isna().to_numpy() | (text == "").to_numpy()
    if blank.any():
        return None, int(np.flatnonzero(blank)[0])
    if pd.to_numeric(text, errors="coerce").notna().all():
        return None, None
    return sorted(set(text)), None


def unit_codes(column: pd.Series, labels: list[str]) -> np.ndarray:
    """Text unit ids as their positions (0-based) in the sorted ``labels``."""
    text = column.astype(str).str.strip()
    return pd.Categorical(text, categories=labels).codes.astype(np.int64)


def as_numbers(column: pd.Series) -> tuple[np.ndarray, int | None]:
    """A column as float64 (NaN words are NaN) and the position of the first cell that is
    neither a number nor a NaN word (``None`` if every cell is one; true/false is refused
    by the callers before this)."""
    if pd.api.types.is_numeric_dtype(column.dtype):
        return column.to_numpy(dtype=np.float64, na_value=np.nan), None
    converted = pd.to_numeric(column, errors="coerce")
    text = column.astype(str).str.strip().str.lower()
    bad = np.flatnonzero(
        converted.isna().to_numpy() & column.notna().to_numpy() & ~text.isin(NAN_WORDS).to_numpy()
    )
    return converted.to_numpy(dtype=np.float64, na_value=np.nan), (
        int(bad[0]) if len(bad) else None
    )


def whole_numbers(values: np.ndarray, name: str, source: str, at: Place) -> np.ndarray:
    """``values`` of a unit id or time column as int64: finite, whole and within 2**53."""
    bad = np.flatnonzero(~np.isfinite(values))
    if len(bad):
        raise GraceError(f"{source}: {values[bad[0]]} in column {name} at {at(int(bad[0]))}")
    whole = values == np.round(values)
    if not whole.all():
        i = int(np.flatnonzero(~whole)[0])
        raise GraceError(f"{source}: {name} must be a whole number ({values[i]} at {at(i)})")
    big = np.flatnonzero(np.abs(values) > MAX_WHOLE)
    if len(big):
        i = int(big[0])
        raise GraceError(
            f"{source}: {name} {values[i]:.6g} at {at(i)} is out of range "
            f"(whole numbers up to 2**53)"
        )
    return values.astype(np.int64)


def finite_float32(
    values: np.ndarray, name: str, what: str, source: str, at: Place, row: Callable[[int], str]
) -> None:
    """Refuse NaN, Inf or a value beyond float32 (what the model computes in); ``what`` is
    ``sensor`` or ``setting`` and ``row(i)`` names the unit and time of row ``i``."""
    bad = np.flatnonzero(~np.isfinite(values) | (np.abs(values) > FLOAT32_MAX))
    if len(bad):
        i = int(bad[0])
        v = values[i]
        kind = "NaN" if np.isnan(v) else ("Inf" if np.isinf(v) else f"{v:.6g}")
        beyond = " (outside float32, what the model computes in)" if np.isfinite(v) else ""
        raise GraceError(f"{source}: {kind} in {what} {name} at {at(i)} ({row(i)}){beyond}")


def duplicate_rows(
    unit: np.ndarray, time: np.ndarray, time_name: str, source: str, at: Place,
    named: Callable[[int], Any],
) -> np.ndarray:  # fmt: skip
    """Refuse two rows with the same (unit, time); the (unit, time) sort order otherwise.

    ``named(u)`` is unit ``u`` as the user wrote it (a text id or the number).
    """
    order = np.lexsort((time, unit))
    same = np.flatnonzero((np.diff(unit[order]) == 0) & (np.diff(time[order]) == 0))
    if len(same):
        a, b = sorted((int(order[same[0]]), int(order[same[0] + 1])))
        raise GraceError(
            f"{source}: duplicate rows for unit {named(int(unit[a]))}, {time_name} {time[a]} "
            f"({at(a)} and {at(b)})"
        )
    return order
