"""Training tables and prediction inputs refuse the same bad frames (grace_rul.data.frames)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from grace_rul.data import DataConfig
from grace_rul.data.tables import read_tables
from grace_rul.errors import GraceError
from grace_rul.inference.inputs import clean_frame

SENSORS = ["p_in", "vib_x"]


def fleet(units: int = 4, rows: int = 12) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    parts = [
        pd.DataFrame({
            "pump_id": u, "hour": np.arange(1, rows + 1), "load": rng.choice([10.0, 50.0], rows),
            "p_in": rng.normal(3, 0.1, rows), "vib_x": rng.normal(1, 0.1, rows),
        })
        for u in range(1, units + 1)
    ]  # fmt: skip
    return pd.concat(parts, ignore_index=True)


def _set(row: int, col: str, value) -> callable:
    def edit(f: pd.DataFrame) -> pd.DataFrame:
        f = f.astype({col: object}) if isinstance(value, str) else f.astype({col: float})
        f.loc[row, col] = value
        return f

    return edit


def _text_ids(f: pd.DataFrame) -> pd.DataFrame:
    return f.assign(pump_id="P" + f.pump_id.astype(str))


def training_error(frame: pd.DataFrame, folder: Path) -> str:
    """The one-line refusal of ``frame`` as a fleet's training table."""
    frame.to_csv(folder / "pumps.csv", index=False)
    doc = {"train": "pumps.csv", "unit": "pump_id", "time": "hour", "settings": ["load"],
           "regimes": "none", "sensors": SENSORS}  # fmt: skip
    (folder / "pumps.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(GraceError) as info:
        read_tables(DataConfig(dataset=str(folder / "pumps.yaml"), window=5))
    return str(info.value)


def prediction_error(frame: pd.DataFrame, folder: Path) -> str:
    """The one-line refusal of the same table read back as a prediction input.

    Rows are named as the training tables name them (``data row``, counted from 1), so
    the two messages can be compared whole.
    """
    table = pd.read_csv(folder / "pumps.csv")
    with pytest.raises(GraceError) as info:
        clean_frame(
            table, SENSORS, source=str(folder / "pumps.csv"), lines=np.arange(1, len(table) + 1),
            where="data row", settings=["load"], unit="pump_id", time="hour",
        )  # fmt: skip
    return str(info.value)


SAME_MESSAGE = {
    "time not whole": (_set(5, "hour", 5.5), "hour must be a whole number (5.5 at data row 6)"),
    "time missing": (_set(2, "hour", np.nan), "nan in column hour at data row 3"),
    "unit beyond 2**53": (_set(3, "pump_id", 2.0**60), "pump_id 1.15292e+18 at data row 4 is out"),
    "duplicate rows": (_set(5, "hour", 5), "duplicate rows for unit 1, hour 5 (data row 5 and"),
    "duplicate rows, text ids": (
        lambda f: _text_ids(_set(5, "hour", 5)(f)), "duplicate rows for unit P1, hour 5"),
    "sensor beyond float32": (
        _set(7, "vib_x", 1e39), "1e+39 in sensor vib_x at data row 8 (unit 1, hour 8) (outside"),
    "setting beyond float32": (_set(9, "load", -1e39), "-1e+39 in setting load at data row 10"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(SAME_MESSAGE))
def test_training_and_prediction_refuse_a_bad_frame_with_the_same_line(case, tmp_path):
    edit, words = SAME_MESSAGE[case]
    frame = edit(fleet())
    train, predict = training_error(frame, tmp_path), prediction_error(frame, tmp_path)
    assert "\n" not in train and words in train, train
    assert train == predict


# Both refuse these, in the words each path's own tests assert (they differ in wording).
SAME_REFUSAL = {
    "non-numeric time": (_set(5, "hour", "x"), ("'x'", "data row 6", "hour")),
    "blank unit id": (lambda f: _set(3, "pump_id", " ")(_text_ids(f)),
                      ("missing unit id", "data row 4")),
}  # fmt: skip


@pytest.mark.parametrize("case", list(SAME_REFUSAL))
def test_training_and_prediction_refuse_the_same_bad_cells(case, tmp_path):
    edit, words = SAME_REFUSAL[case]
    frame = edit(fleet())
    for line in (training_error(frame, tmp_path), prediction_error(frame, tmp_path)):
        assert "\n" not in line and all(w in line for w in words), line


def test_rows_out_of_time_order_are_sorted_for_training_and_refused_for_prediction(tmp_path):
    frame = fleet()
    frame.iloc[[3, 4]] = frame.iloc[[4, 3]].to_numpy()  # unit 1: hour 5 before hour 4
    frame.to_csv(tmp_path / "pumps.csv", index=False)
    doc = {"train": "pumps.csv", "unit": "pump_id", "time": "hour", "sensors": SENSORS}
    (tmp_path / "pumps.yaml").write_text(yaml.safe_dump(doc))
    raw = read_tables(DataConfig(dataset=str(tmp_path / "pumps.yaml"), window=5))
    assert (raw.train.groupby("unit")["cycle"].diff().dropna() > 0).all()
    refusal = "do not increase: cycle 4 at data row 5 follows cycle 5 at data row 4"
    assert refusal in prediction_error(frame, tmp_path)
