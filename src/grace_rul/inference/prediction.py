"""``predict``: per-engine RUL, interval, health state and flags for a frame of cycles.

Output, one row per unit (ascending unit id):

=============  ================================================================
unit           the unit id, as in the input (numbers or text; in CSV a text id starting
               with = + - @ is prefixed with ' so that a spreadsheet shows, not runs, it)
cycles_seen    cycles of the unit in the input
rul            predicted RUL at the last cycle (cycles; mean over members)
rul_lower      lower bound of the conformal interval at ``coverage`` (>= 0)
rul_upper      upper bound
health         healthy / degrading / critical (argmax of the mean probabilities)
p_healthy ...  mean softmax probability of each health class
flags          ';'-joined: ``short_history`` (fewer cycles than the window: the
               window was front-padded by repeating the first cycle),
               ``unseen_regime`` (see :mod:`grace_rul.inference.contract`)
=============  ================================================================
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from grace_rul.errors import GraceError
from grace_rul.inference.conformal import check_coverage
from grace_rul.inference.contract import HEALTH_CLASSES, UNSEEN_REGIME_STEPS, regime_distance
from grace_rul.inference.gracemodel import GraceModel
from grace_rul.inference.inputs import clean_frame, read_input

OUTPUT_COLUMNS: tuple[str, ...] = (
    "unit", "cycles_seen", "rul", "rul_lower", "rul_upper", "health",
    "p_healthy", "p_degrading", "p_critical", "flags",
)  # fmt: skip
FORMATS: tuple[str, ...] = ("csv", "json")


def predict(
    model: GraceModel, frame: pd.DataFrame, coverage: float = 0.9, *, backend: str = "torch"
) -> pd.DataFrame:
    """Predict every unit of ``frame`` (columns unit, cycle, setting1..3, the model's sensors).

    The frame is checked first (:func:`grace_rul.inference.inputs.clean_frame`); every
    problem is a one-line ``GraceError``. ``backend="onnx"`` runs ``model.onnx``.
    """
    coverage = check_coverage(coverage)
    columns = model.contract.input_columns()
    return predict_clean(model, clean_frame(frame, **columns), coverage, backend)


def predict_file(
    model: GraceModel, path: str | Path, coverage: float = 0.9, *, backend: str = "torch"
) -> pd.DataFrame:
    """:func:`predict` for a file: C-MAPSS text, CSV/TSV or Parquet (gzip allowed)."""
    coverage = check_coverage(coverage)
    columns = model.contract.input_columns()
    return predict_clean(model, read_input(path, **columns), coverage, backend)


def predict_clean(
    model: GraceModel, frame: pd.DataFrame, coverage: float, backend: str = "torch"
) -> pd.DataFrame:
    """:func:`predict` for a frame already checked by ``clean_frame`` (ordered by unit)."""
    out = model.outputs(frame, backend)
    units = frame["unit"].to_numpy()
    starts = np.flatnonzero(np.r_[True, units[1:] != units[:-1]])
    seen = np.diff(np.r_[starts, len(units)])
    group = np.repeat(np.arange(len(starts)), seen)
    from_end = np.repeat(starts + seen, seen) - np.arange(len(units)) - 1
    in_window = from_end < model.contract.window
    far = regime_distance(frame[in_window], model.centroids) > UNSEEN_REGIME_STEPS
    unseen = np.bincount(group[in_window][far], minlength=len(starts)) > 0
    short = seen < model.contract.window
    rul = out.rul
    lower, upper = model.calibration.interval(rul, coverage, out.member_rul)
    probs = out.probs
    flags = [
        ";".join(name for name, on in (("short_history", s), ("unseen_regime", u)) if on)
        for s, u in zip(short, unseen)
    ]
    labels = frame.attrs.get("unit_labels")
    return pd.DataFrame(
        {
            "unit": out.unit if labels is None else np.asarray(labels, dtype=object)[out.unit],
            "cycles_seen": seen.astype(np.int64),
            "rul": rul,
            "rul_lower": lower,
            "rul_upper": upper,
            "health": np.asarray(HEALTH_CLASSES, dtype=object)[probs.argmax(axis=1)],
            "p_healthy": probs[:, 0],
            "p_degrading": probs[:, 1],
            "p_critical": probs[:, 2],
            "flags": flags,
        },
        columns=list(OUTPUT_COLUMNS),
    )


def format_predictions(table: pd.DataFrame, fmt: str = "csv") -> str:
    """The prediction table as CSV text, or as a JSON list of records (flags as lists)."""
    if fmt == "csv":
        return table.assign(unit=table["unit"].map(spreadsheet_safe)).to_csv(index=False)
    if fmt != "json":
        raise GraceError(f"format must be one of {', '.join(FORMATS)} (got '{fmt}')")
    records = []
    for row in table.itertuples(index=False):
        rec = row._asdict()
        for key, value in rec.items():
            if isinstance(value, np.generic):
                rec[key] = value.item()
        rec["flags"] = rec["flags"].split(";") if rec["flags"] else []
        records.append(rec)
    return json.dumps(records, indent=2, allow_nan=False) + "\n"


# Cells starting with these are formulas to a spreadsheet (CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value: object) -> object:
    """A text cell a spreadsheet would run as a formula, prefixed with ``'``; others as given."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value
