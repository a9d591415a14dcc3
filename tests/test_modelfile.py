"""Model directories, input checking and conformal intervals, without training a network."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
import torch

import grace_rul
import grace_rul.inference.modelfile as modelfile
from grace_rul.backbones import build_model
from grace_rul.data import SENSORS, Normalizer, read_cmapss, windows
from grace_rul.errors import GraceError
from grace_rul.inference.conformal import Calibration, check_coverage, interval_metrics
from grace_rul.inference.contract import DataContract
from grace_rul.inference.gracemodel import GraceModel, Member
from grace_rul.inference.inputs import clean_frame, read_input
from grace_rul.inference.modelfile import read_model_dir, save_model
from grace_rul.resolve import resolve_config
from grace_rul.scoring import score_split

torch.set_num_threads(1)


def untrained_model(seed: int = 0, dataset: str = "FD001", mode: str = "global") -> GraceModel:
    """A tiny network with random weights, a subset's normaliser and made-up residuals."""
    cfg = resolve_config("tiny", overrides={"data": {"dataset": dataset}})
    torch.manual_seed(seed)
    net = build_model(cfg.model, max_rul=cfg.data.max_rul).eval()
    train = read_cmapss(dataset).train
    normalizer = Normalizer.fit(train, mode)
    contract = DataContract.from_run(cfg.data, list(SENSORS), mode)
    calibration = Calibration.from_residuals(np.linspace(-30.0, 20.0, 101))
    member = Member(net, normalizer, cfg.to_dict(), {"seed": cfg.seed})
    return GraceModel([member], contract, calibration, Normalizer.fit(train, "regime").centroids)


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


# --------------------------------------------------------------------------- model files


def test_save_and_read_round_trip_gives_identical_predictions(tmp_path):
    model = untrained_model()
    out = save_model(model, tmp_path / "m")
    assert sorted(os.listdir(out)) == ["grace_model.json", "model.safetensors"]
    assert sorted(os.listdir(tmp_path)) == ["m"]  # no temporary directory left behind
    doc = json.loads((out / "grace_model.json").read_text())
    assert doc["format_version"] == 1 and doc["kind"] == "single"
    assert doc["data"]["sensors"] == list(SENSORS) and doc["data"]["window"] == 30
    assert doc["members"][0]["weights_prefix"] == "member0."
    loaded = read_model_dir(out)
    frame = read_cmapss("FD001").test
    pd.testing.assert_frame_equal(grace_rul.predict(model, frame), grace_rul.predict(loaded, frame))
    assert grace_rul.load_model(out / "grace_model.json").contract == model.contract


def test_a_regime_model_on_fd002_predicts_like_evaluation_and_flags_short_units():
    model = untrained_model(0, "FD002", "regime")
    member = model.members[0]
    cfg = resolve_config("tiny", overrides={"data": {"dataset": "FD002"}})
    _, expected, _ = score_split(
        member.net, windows.test_windows(read_cmapss("FD002"), member.normalizer, cfg.data)
    )
    raw = read_cmapss("FD002").test
    table = grace_rul.predict(model, raw)
    assert np.array_equal(table["rul"].to_numpy(), expected.astype(np.float64))
    short = (raw.groupby("unit").size() < 30).to_numpy()
    assert short.sum() == 6  # FD002 test units of 21-29 cycles
    assert table["flags"].tolist() == ["short_history" if s else "" for s in short]


def test_replacing_a_model_needs_overwrite_and_never_touches_other_directories(tmp_path):
    out = save_model(untrained_model(0), tmp_path / "m")
    with pytest.raises(GraceError, match="--overwrite") as info:
        save_model(untrained_model(1), out)
    one_line(info)
    save_model(untrained_model(1), out, overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["m"]
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(GraceError, match="not a GRACE model directory"):
        save_model(untrained_model(), other, overwrite=True)
    assert (other / "keep.txt").read_text() == "mine"


def test_a_failed_write_leaves_the_old_model_and_no_temporary_files(tmp_path, monkeypatch):
    out = save_model(untrained_model(0), tmp_path / "m")
    before = (out / "model.safetensors").read_bytes()

    def crash(path, obj, indent=2):
        raise OSError("disk full")

    monkeypatch.setattr(modelfile, "atomic_write_json", crash)
    with pytest.raises(OSError, match="disk full"):
        save_model(untrained_model(1), out, overwrite=True)
    with pytest.raises(OSError, match="disk full"):
        save_model(untrained_model(1), tmp_path / "new")
    assert sorted(os.listdir(tmp_path)) == ["m"]
    assert (out / "model.safetensors").read_bytes() == before


@pytest.mark.parametrize(
    "damage, words",
    [
        (lambda d: _rewrite_json(d, format_version=2), "format_version 2, newer than"),
        (lambda d: _truncate(d / "grace_model.json"), "grace_model.json is corrupt or truncated"),
        (lambda d: _truncate(d / "model.safetensors"), "model.safetensors is corrupt or truncated"),
        (lambda d: (d / "model.safetensors").write_bytes(b"\x00" * 64), "corrupt or truncated"),
        (lambda d: (d / "model.safetensors").unlink(), "model.safetensors not found"),
        (lambda d: _rewrite_json(d, members=None), "malformed"),
    ],
)
def test_damaged_model_directories_are_refused_in_one_line(tmp_path, damage, words):
    out = save_model(untrained_model(), tmp_path / "m")
    damage(out)
    with pytest.raises(GraceError, match=words) as info:
        grace_rul.load_model(out)
    one_line(info)


def _rewrite_json(directory, **changes):
    path = directory / "grace_model.json"
    doc = json.loads(path.read_text())
    doc.update(changes)
    path.write_text(json.dumps(doc))


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# --------------------------------------------------------------------------- inputs


def frame(units=(1, 2), cycles=40) -> pd.DataFrame:
    """A few units of FD001 test rows, renumbered."""
    raw = read_cmapss("FD001").test
    parts = [raw[raw["unit"] == u].head(cycles).assign(unit=u) for u in units]
    return pd.concat(parts, ignore_index=True)


def test_clean_frame_orders_units_and_keeps_only_what_the_model_reads():
    f = frame()
    interleaved = f.sort_values(["cycle", "unit"]).assign(comment="x")  # units alternate
    clean = clean_frame(interleaved, SENSORS)
    assert list(clean.columns) == ["unit", "cycle", "setting1", "setting2", "setting3", *SENSORS]
    pd.testing.assert_frame_equal(clean, clean_frame(f, SENSORS))


@pytest.mark.parametrize(
    "edit, words",
    [
        (lambda f: f.drop(columns="setting2"), "missing column(s) setting2"),
        (lambda f: f.drop(columns=["s9", "s14"]),
         "sensor set differs from the model's: no s9, s14"),
        (lambda f: f.astype({"s4": object}).assign(s4=lambda d: d.s4.mask(d.index == 3, "hot")),
         "non-numeric value 'hot' at index 3, column 9 (s4)"),
        (lambda f: f.assign(s4=f.s4.mask(f.index == 5, np.nan)), "NaN in sensor s4 at index 5"),
        (lambda f: f.assign(s21=f.s21.mask(f.index == 7, np.inf)), "Inf in sensor s21 at index 7"),
        (lambda f: f.assign(setting1=f.setting1.mask(f.index == 2, np.nan)),
         "nan in column setting1 at index 2"),
        (lambda f: f.assign(cycle=f.cycle.mask(f.index == 4, 3)),
         "duplicate rows for unit 1, cycle 3 (index 2 and index 4)"),
        (lambda f: f.assign(cycle=f.cycle.mask(f.index == 4, 0)),
         "cycles of unit 1 do not increase: cycle 0 at index 4 follows cycle 4 at index 3"),
        (lambda f: f.assign(unit=f.unit.astype(float).mask(f.index == 1, 1.5)),
         "unit must be a whole number"),
        (lambda f: f.iloc[:0], "no rows"),
        (lambda f: f.assign(unit=pd.Categorical(f.unit, categories=[1, 2, 3])),
         "unit 3 has no rows"),
    ],
)  # fmt: skip
def test_bad_frames_are_refused_in_one_line(edit, words):
    with pytest.raises(GraceError) as info:
        clean_frame(edit(frame()), SENSORS)
    assert words in one_line(info)


def test_text_files_name_file_line_and_column(tmp_path):
    lines = [" ".join(str(v) for v in row) for row in frame((1,), 5).itertuples(index=False)]
    path = tmp_path / "engines.txt"
    bad = lines[2].split()
    bad[7] = "zero"  # s3
    path.write_text("\n".join([*lines[:2], " ".join(bad), *lines[3:]]))
    with pytest.raises(GraceError) as info:
        read_input(path, SENSORS)
    message = one_line(info)
    assert str(path) in message and "non-numeric value 'zero' at line 3, column 8 (s3)" in message
    path.write_text("\n".join(lines[:3] + [lines[3] + " 7"] + lines[4:]))
    with pytest.raises(GraceError, match="line 4 has 27 fields, expected 26"):
        read_input(path, SENSORS)
    csv = tmp_path / "engines.csv"
    frame((1,), 5).assign(s3="1.0").assign(s3=lambda d: d.s3.mask(d.index == 2, "n/k")).to_csv(
        csv, index=False
    )
    with pytest.raises(GraceError, match=r"non-numeric value 'n/k' at line 4, column 8 \(s3\)"):
        read_input(csv, SENSORS)
    (tmp_path / "header.csv").write_text(",".join(frame().columns) + "\n")
    with pytest.raises(GraceError, match="no rows"):
        read_input(tmp_path / "header.csv", SENSORS)


# --------------------------------------------------------------------------- conformal


def test_conformal_ranks_are_finite_sample_corrected():
    cal = Calibration.from_residuals(np.arange(1.0, 100.0))  # n = 99, residuals 1..99
    # coverage 0.8: lo = floor(100 * 0.1) = 10, hi = ceil(100 * 0.9) = 90
    assert cal.offsets(0.8) == (10.0, 90.0)
    assert cal.offsets(0.9) == (5.0, 95.0)
    assert cal.offsets(0.999) == (1.0, 99.0)  # ranks outside 1..n: the extremes
    low, high = cal.interval(np.array([0.0, 50.0]), 0.8)
    assert low.tolist() == [10.0, 60.0] and high.tolist() == [90.0, 140.0]
    shifted = Calibration.from_residuals(np.arange(-50.0, 49.0))
    assert shifted.interval(np.array([5.0]), 0.8)[0].tolist() == [0.0]  # clipped at 0 cycles
    assert Calibration.from_dict(json.loads(json.dumps(cal.to_dict()))).offsets(0.73) == (
        cal.offsets(0.73)
    )


def test_interval_metrics_count_coverage_and_width():
    cal = Calibration.from_residuals(np.arange(1.0, 100.0))
    pred = np.zeros(4)
    metrics = interval_metrics(np.array([10.0, 50.0, 90.0, 95.0]), pred, cal)
    assert metrics["0.8"] == {"coverage": 0.75, "mean_width": 80.0}
    assert metrics["0.9"] == {"coverage": 1.0, "mean_width": 90.0}


@pytest.mark.parametrize("bad", [0, 1, 1.5, -0.2, float("nan"), "abc"])
def test_coverage_outside_the_open_unit_interval_is_refused(bad):
    with pytest.raises(GraceError, match="coverage must be"):
        check_coverage(bad)
