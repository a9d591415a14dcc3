"""Engines to predict: C-MAPSS text, CSV or Parquet, checked before any prediction.

Accepted files (gzip-compressed or not, recognised by content, not by name; at most
:data:`~grace_rul.bounded.MAX_INPUT_BYTES` on disk and decompressed, binary refused):

* C-MAPSS text: whitespace-separated, no header, 26 columns in the NASA order
  (:data:`~grace_rul.data.cmapss.COLUMNS`: unit, cycle, setting1..3, s1..s21), e.g.
  ``test_FD001.txt``.
* A table with a header row, comma-, tab- or whitespace-separated, or a Parquet file:
  named columns ``unit``, ``cycle``, ``setting1``..``setting3`` and the model's sensors
  (``s1``..``s21``); any column order, other columns ignored. Unit ids are whole numbers
  or text (serial numbers such as ``ESN-1042``); text ids are numbered in sorted order
  inside and named as given in the output.

:func:`clean_frame` refuses, with one line naming the place: a missing column, a sensor
set that lacks one of the model's sensors, a non-numeric cell (file, line, column), NaN
or Inf or a value outside float32 (sensor or setting, line, unit, cycle), a blank unit id,
a numeric unit or a cycle that is not a whole number or beyond 2**53, no rows
(or a unit listed as a category with no rows), duplicate (unit, cycle) rows, and cycles
that do not increase within a unit in file order. Rows of one unit need not be adjacent;
the cleaned frame is ordered by unit (stable), then file order. The cell checks are
those of training tables (:mod:`grace_rul.data.frames`); messages use the unit and time
column names the input was read with.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from grace_rul.bounded import MAX_INPUT_BYTES, read_table_bytes
from grace_rul.data import frames
from grace_rul.data.cmapss import COLUMNS, SETTINGS
from grace_rul.errors import GraceError, brief

REQUIRED: tuple[str, ...] = ("unit", "cycle", *SETTINGS)


@dataclass
class Table:
    """A parsed input file: its cells as read, and the file line (or row) of every row."""

    frame: pd.DataFrame
    lines: np.ndarray
    where: str  # "line" (text files) or "row" (Parquet)
    source: str


def read_table(path: str | Path) -> Table:
    """Parse ``path`` (C-MAPSS text, CSV/TSV with a header, or Parquet; gzip allowed)."""
    p = Path(path)
    if not p.exists():
        raise GraceError(f"input {p} not found")
    if not p.is_file():
        raise GraceError(f"input {p} is not a file")
    source = str(p)
    data = read_table_bytes(p, MAX_INPUT_BYTES, source)  # bounded, gzip streamed
    if data[:4] == b"PAR1":
        try:
            frame = pd.read_parquet(io.BytesIO(data))
        except Exception as exc:  # pyarrow raises several types for damaged files
            line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise GraceError(f"{source}: not a readable Parquet file ({line})") from None
        return Table(frame, np.arange(1, len(frame) + 1), "row", source)
    return _read_text(data, source)


def _read_text(data: bytes, source: str) -> Table:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise GraceError(f"{source}: not C-MAPSS text, CSV or Parquet (not UTF-8 text)") from None
    numbered = [(i + 1, line) for i, line in enumerate(text.splitlines()) if line.strip()]
    if not numbered:
        raise GraceError(f"{source}: no rows (the file is empty)")
    first = numbered[0][1]
    sep = "," if "," in first else ("\t" if "\t" in first else None)
    header = not _is_number(_fields(first, sep)[0])
    counts = [len(_fields(line, sep)) for _, line in numbered]
    expected = counts[0] if header else len(COLUMNS)
    if '"' not in text:  # plain splitting counts fields right only without quoting
        bad = [i for i, c in enumerate(counts) if c != expected]
        if bad:
            what = "columns of the header" if header else "C-MAPSS columns"
            raise GraceError(
                f"{source}: wrong column count: line {numbered[bad[0]][0]} has "
                f"{counts[bad[0]]} fields, expected {expected} ({what})"
            )
    try:
        # The same pandas reader (and number parser) as grace_rul.data.read_cmapss.
        extra = {"skipinitialspace": True} if sep else {}
        frame = pd.read_csv(
            io.BytesIO(data), sep=sep or r"\s+", header=0 if header else None, **extra
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as exc:
        raise GraceError(
            f"{source}: cannot be parsed ({str(exc).strip().splitlines()[0]})"
        ) from None
    if not header:
        frame.columns = list(COLUMNS)
    lines = np.array([n for n, _ in numbered[1:]] if header else [n for n, _ in numbered])
    if len(lines) != len(frame):  # quoting or odd blank lines: fall back to data-row numbers
        return Table(frame, np.arange(1, len(frame) + 1), "data row", source)
    return Table(frame, lines, "line", source)


def _fields(line: str, sep: str | None) -> list[str]:
    return line.split(sep) if sep else line.split()


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_input(
    path: str | Path, sensors: tuple[str, ...] | list[str], **columns: Any
) -> pd.DataFrame:
    """Read and check an input file for a model reading ``sensors``; see :func:`clean_frame`.

    ``columns`` (``settings``, ``unit``, ``time``) name the input columns of models of
    other fleets (their dataset YAML's names).
    """
    table = read_table(path)
    return clean_frame(
        table.frame, sensors, source=table.source, lines=table.lines, where=table.where, **columns
    )


def clean_frame(
    frame: pd.DataFrame,
    sensors: tuple[str, ...] | list[str],
    *,
    source: str = "input frame",
    lines: np.ndarray | None = None,
    where: str = "index",
    settings: tuple[str, ...] | list[str] = SETTINGS,
    unit: str = "unit",
    time: str = "cycle",
) -> pd.DataFrame:
    """Checked numeric columns unit, cycle, settings and ``sensors``, ordered by unit.

    ``lines`` gives each row's place in the file (``where`` says what it counts); by
    default the frame's index labels. ``unit`` and ``time`` name the input's unit and
    time columns (a dataset YAML's names); they are returned as ``unit`` and ``cycle``.
    Every refusal is a one-line ``GraceError``.
    """
    frame = _canonical(frame, unit, time)
    said = {"unit": unit, "cycle": time}  # the names the user wrote, for messages
    required = ("unit", "cycle", *settings)
    if not isinstance(frame, pd.DataFrame):
        raise GraceError(f"{source}: expected a pandas DataFrame, got {type(frame).__name__}")
    names: dict[str, object] = {}
    for col in frame.columns:
        names.setdefault(str(col).strip(), col)
    missing = [c for c in required if c not in names]
    if missing:
        raise GraceError(
            f"{source}: missing column(s) {', '.join(said.get(c, c) for c in missing)} "
            f"(needed: {', '.join(said.get(c, c) for c in required)} and the model's sensors)"
        )
    lacking = [s for s in sensors if s not in names]
    if lacking:
        raise GraceError(
            f"{source}: sensor set differs from the model's: no {', '.join(lacking)} "
            f"(the model reads {', '.join(sensors)})"
        )
    places = np.asarray(frame.index if lines is None else lines)
    if len(frame) == 0:
        raise GraceError(f"{source}: no rows (every unit needs at least one cycle)")
    unit_col = frame[names["unit"]]
    if isinstance(unit_col.dtype, pd.CategoricalDtype):
        empty = sorted(set(unit_col.cat.categories) - set(unit_col.dropna().unique()))
        if empty:
            raise GraceError(f"{source}: unit {empty[0]} has no rows")

    def at(i: int) -> str:
        return f"{where} {places[i]}"

    values: dict[str, np.ndarray] = {}
    labels = _unit_labels(unit_col, source, at)
    if labels is not None:  # text ids (serial numbers): numbered in sorted order, kept for output
        frame = frame.assign(**{names["unit"]: frames.unit_codes(unit_col, labels)})
    for name in (*required, *sensors):
        column = frame[names[name]]
        if isinstance(column, pd.DataFrame):
            raise GraceError(f"{source}: column {said.get(name, name)} appears more than once")
        position = frame.columns.get_loc(names[name])
        values[name] = _numeric(column, said.get(name, name), int(position) + 1, source, at)
    unit = frames.whole_numbers(values["unit"], said["unit"], source, at)
    cycle = frames.whole_numbers(values["cycle"], said["cycle"], source, at)
    for name in settings:
        bad = np.flatnonzero(~np.isfinite(values[name]))
        if len(bad):
            raise GraceError(f"{source}: {values[name][bad[0]]} in column {name} at {at(bad[0])}")

    def named(u: int) -> Any:  # a unit as the user wrote it
        return labels[u] if labels is not None else u

    def row(i: int) -> str:
        return f"unit {named(unit[i])}, {said['cycle']} {cycle[i]}"

    for name in (*settings, *sensors):
        what = "sensor" if name in sensors else "setting"
        frames.finite_float32(values[name], name, what, source, at, row)
    frames.duplicate_rows(unit, cycle, said["cycle"], source, at, named)
    order = np.argsort(unit, kind="stable")
    step_back = np.flatnonzero((np.diff(unit[order]) == 0) & (np.diff(cycle[order]) < 0))
    if len(step_back):
        a, b = order[step_back[0]], order[step_back[0] + 1]
        raise GraceError(
            f"{source}: cycles of unit {named(unit[a])} do not increase: cycle {cycle[b]} at "
            f"{at(b)} follows cycle {cycle[a]} at {at(a)}"
        )
    out = {"unit": unit[order], "cycle": cycle[order]}
    out.update({name: values[name][order] for name in (*settings, *sensors)})
    clean = pd.DataFrame(out)
    if labels is not None:
        clean.attrs["unit_labels"] = labels
    return clean


def _unit_labels(column: pd.Series, source: str, at) -> list[str] | None:
    """The sorted unit ids when they are text (``None`` when they are numbers).

    Ids such as ``ESN-1042`` are kept as labels: rows are grouped by the label and the
    output names each unit by it. A missing or blank id is refused.
    """
    labels, blank = frames.text_unit_ids(column)
    if blank is not None:
        raise GraceError(f"{source}: missing unit id at {at(blank)}")
    return labels


def _canonical(frame: Any, unit: str, time: str) -> Any:
    """``frame`` with its ``unit`` / ``time`` columns named ``unit`` / ``cycle``."""
    if (unit, time) == ("unit", "cycle") or not isinstance(frame, pd.DataFrame):
        return frame
    return frame.rename(columns={unit: "unit", time: "cycle"})


def _numeric(column: pd.Series, name: str, position: int, source: str, at) -> np.ndarray:
    """A column as float64; a cell that is neither a number nor a NaN word is refused."""
    if pd.api.types.is_bool_dtype(column.dtype):
        raise GraceError(f"{source}: column {name} holds true/false values, not numbers")
    values, bad = frames.as_numbers(column)
    if bad is not None:
        raise GraceError(
            f"{source}: non-numeric value {brief(column.iloc[bad], 40)} at {at(bad)}, column "
            f"{position} ({name})"
        )
    return values
