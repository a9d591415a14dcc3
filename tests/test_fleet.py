"""Fleets of one's own: dataset YAMLs over CSV/Parquet tables give exactly C-MAPSS's runs."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from conftest import QUIET
from grace_rul.data import (
    SENSORS,
    SETTINGS,
    DataConfig,
    Normalizer,
    load_dataset,
    read_cmapss,
    regime_keys,
)
from grace_rul.data.scaling import kmeans_regimes
from grace_rul.errors import GraceError
from grace_rul.resolve import resolve_config

# Other names for every C-MAPSS column: the tables must not rely on GRACE's names.
RENAME = {"unit": "engine_id", "cycle": "t", **{s: f"op_{i}" for i, s in enumerate(SETTINGS)}}
RENAME.update({f"s{i}": f"sensor_{i:02d}" for i in range(1, 22)})


def write_fleet(dataset: str, folder: Path, fmt: str, **extra) -> Path:
    """``dataset`` as renamed CSV or Parquet tables plus a dataset YAML; returns the YAML."""
    raw = read_cmapss(dataset)
    folder.mkdir(parents=True, exist_ok=True)
    suffix = "csv" if fmt == "csv" else "parquet"
    files = {}
    for part, frame in (("train", raw.train), ("test", raw.test)):
        path = folder / "tables" / f"{part}.{suffix}"
        path.parent.mkdir(exist_ok=True)
        renamed = frame.rename(columns=RENAME)
        if fmt == "csv":
            renamed.to_csv(path, index=False)
        else:
            renamed.to_parquet(path, index=False)
        files[part] = f"tables/{path.name}"
    rul = folder / "tables" / "rul.csv"
    units = np.unique(raw.test["unit"])
    rul.write_text("engine_id,rul\n" + "".join(f"{u},{r:g}\n" for u, r in zip(units, raw.test_rul)))
    doc = {
        "name": f"{dataset.lower()}-{fmt}",
        **files,
        "test_rul": "tables/rul.csv",
        "unit": "engine_id",
        "time": "t",
        "settings": [RENAME[s] for s in SETTINGS],
        "regimes": "auto",
        "sensors": [RENAME[s] for s in SENSORS],
        **extra,
    }
    path = folder / f"{dataset.lower()}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def assert_same_data(a, b) -> None:
    for part in ("train", "val", "val_last", "test"):
        sa, sb = getattr(a, part), getattr(b, part)
        for field in ("x", "rul", "health", "unit", "cycle"):
            assert torch.equal(getattr(sa, field), getattr(sb, field)), (part, field)
    na, nb = a.normalizer, b.normalizer
    assert na.mode == nb.mode
    np.testing.assert_array_equal(na.mean, nb.mean)
    np.testing.assert_array_equal(na.std, nb.std)
    np.testing.assert_array_equal(na.centroids, nb.centroids)
    assert a.train_units == b.train_units and a.val_units == b.val_units


@pytest.mark.parametrize("dataset", ["FD001", "FD002"])
@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_tables_give_exactly_the_cmapss_windows_labels_and_normaliser(dataset, fmt, tmp_path):
    path = write_fleet(dataset, tmp_path, fmt)
    ours = load_dataset(DataConfig(dataset=str(path)), seed=7)
    theirs = load_dataset(DataConfig(dataset=dataset), seed=7)
    assert_same_data(ours, theirs)
    assert ours.normalizer.n_regimes == (6 if dataset == "FD002" else 1)
    assert ours.feature_names == tuple(RENAME[s] for s in SENSORS)
    # Normaliser round trip keeps the k-means regime assignment.
    again = Normalizer.from_dict(ours.normalizer.to_dict())
    frame = read_cmapss(dataset).test.rename(columns=RENAME)
    frame = frame.rename(columns={"engine_id": "unit", "t": "cycle"})
    np.testing.assert_array_equal(again.assign(frame), ours.normalizer.assign(frame))


def test_text_unit_ids_give_the_same_data_and_are_matched_in_test_rul(tmp_path, cli):
    path = write_fleet("FD001", tmp_path, "csv")
    tables = tmp_path / "tables"
    for name in ("train.csv", "test.csv", "rul.csv"):  # zero-padded: sorted ids = numeric order
        _edit_csv(
            tables / name, lambda f: f.assign(engine_id=[f"ESN-{u:03d}" for u in f.engine_id])
        )
    rul = pd.read_csv(tables / "rul.csv")
    rul.iloc[::-1].to_csv(tables / "rul.csv", index=False)  # matched by id, not by row order
    ours = load_dataset(DataConfig(dataset=str(path)), seed=7)
    assert_same_data(ours, load_dataset(DataConfig(dataset="FD001"), seed=7))
    r = cli("data", "describe", "--dataset", path, "--json")
    notes = json.loads(r.out)["notes"]
    assert "ESN-001 = 1, ESN-100 = 100" in notes["train_unit_ids"], notes
    assert "ESN-001 = 1" in notes["test_unit_ids"], notes
    rul.assign(engine_id=rul.engine_id.str.replace("ESN-100", "ESN-999")).to_csv(
        tables / "rul.csv", index=False
    )
    r = cli("data", "describe", "--dataset", path)
    assert r.code == 2 and "rows for unit(s) ESN-999 that are not in the test file" in r.err


@pytest.mark.parametrize("dataset", ["FD002", "FD004"])
def test_kmeans_auto_finds_the_rounding_regimes(dataset):
    raw = read_cmapss(dataset)
    for frame in (raw.train, raw.test):
        _, by_kmeans, _ = kmeans_regimes(frame[list(SETTINGS)].to_numpy(), "auto")
        _, by_rounding = np.unique(regime_keys(frame), axis=0, return_inverse=True)
        np.testing.assert_array_equal(by_kmeans, by_rounding.reshape(-1))


def test_kmeans_auto_finds_one_regime_on_fd001():
    raw = read_cmapss("FD001")
    centres, regime, _ = kmeans_regimes(raw.train[list(SETTINGS)].to_numpy(), "auto")
    assert len(centres) == 1 and (regime == 0).all()


@pytest.mark.slow
@pytest.mark.parametrize(("dataset", "fmt"), [("FD001", "csv"), ("FD002", "parquet")])
def test_tables_train_exactly_like_cmapss(dataset, fmt, tmp_path):
    from grace_rul.trainer import train

    path = write_fleet(dataset, tmp_path / "fleet", fmt)
    results = []
    for name in (dataset, str(path)):
        cfg = resolve_config("tiny", overrides={"data": {"dataset": name}, "train": {"epochs": 1}})
        out = tmp_path / Path(name).stem
        metrics = train(cfg, out, execution=QUIET)
        best = torch.load(out / "checkpoints" / "best.pt", weights_only=True)
        results.append((metrics, best))
    (m1, b1), (m2, b2) = results
    for key in b1["inference"]:
        assert torch.equal(b1["inference"][key], b2["inference"][key]), key
    for key in ("val", "test", "intervals", "best_epoch", "params"):
        assert m1[key] == m2[key], key
    assert m2["dataset"] == str(path) and m2["test_split"] == "test units, last window"


def test_yaml_window_and_max_rul_are_defaults_that_data_settings_override(tmp_path):
    path = write_fleet("FD001", tmp_path, "csv", window=20, max_rul=110)
    cfg = resolve_config("tiny", overrides={"data": {"dataset": str(path)}})
    assert (cfg.data.window, cfg.data.max_rul) == (20, 110)
    cfg = resolve_config("tiny", overrides={"data": {"dataset": str(path), "window": 25}})
    assert (cfg.data.window, cfg.data.max_rul) == (25, 110)
    assert resolve_config("tiny").data.window == 30  # a C-MAPSS subset keeps its default


# --------------------------------------------------------------------------- N-CMAPSS


def test_ncmapss_sample_end_to_end(tmp_path, cli):
    pytest.importorskip("h5py")
    from grace_rul.trainer import train
    from ncmapss_sample import write_sample

    path = write_sample(tmp_path / "N-CMAPSS_DS02-006.h5")
    cfg = DataConfig(dataset=str(path), window=10, downsample=10)
    data = load_dataset(cfg, seed=1)
    assert data.feature_names[:4] == ("alt", "Mach", "TRA", "T2") and len(data.feature_names) == 18
    assert sorted(set(data.train_units + data.val_units)) == [2, 5, 10, 16, 18, 20]
    assert sorted(set(data.test.unit.tolist())) == [11, 14, 15]
    assert data.normalizer.mode == "global" and "11 14 15" in data.test_split
    assert float(data.train.rul.max()) <= 125
    over = {"data": {"dataset": str(path), "window": 10}, "train": {"epochs": 1}}
    metrics = train(resolve_config("tiny", overrides=over), tmp_path / "run", execution=QUIET)
    assert np.isfinite(metrics["test"]["rmse_last"]) and "run to failure" in metrics["test_split"]


def test_hdf5_without_ncmapss_arrays(tmp_path, cli):
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    r = cli("train", "--preset", "tiny", "--dataset", path, "--out", tmp_path / "run")
    assert r.code == 2 and len(r.err_lines) == 1
    assert "not an N-CMAPSS file (missing W_dev" in r.err
    assert not (tmp_path / "run" / "metrics.json").exists()


# --------------------------------------------------------------------------- own fleets


def pump_fleet(folder: Path, units: int = 6, rows: int = 40, **yaml_keys) -> Path:
    """A small synthetic run-to-failure fleet (CSV) with its YAML; ``yaml_keys`` edit the YAML."""
    rng = np.random.default_rng(0)
    frames = []
    for u in range(1, units + 1):
        n = rows + 3 * u
        t = np.arange(1, n + 1)
        wear = t / n
        load = rng.choice([10.0, 50.0], size=n)
        frames.append(
            pd.DataFrame(
                {
                    "pump_id": u,
                    "hour": t,
                    "load": load,
                    "p_in": 3 + load / 10 + wear + rng.normal(0, 0.05, n),
                    "vib_x": 1 + wear**2 + rng.normal(0, 0.05, n),
                    "temp": 60 + 5 * wear + rng.normal(0, 0.2, n),
                    "firmware": 7.0,
                }
            )
        )
    folder.mkdir(parents=True, exist_ok=True)
    pd.concat(frames).to_csv(folder / "pumps.csv", index=False)
    doc = {"name": "pumps", "train": "pumps.csv", "unit": "pump_id", "time": "hour",
           "settings": ["load"], "regimes": "auto", "sensors": "auto", "window": 10}  # fmt: skip
    doc.update(yaml_keys)
    path = folder / "pumps.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in doc.items() if v is not None}))
    return path


def test_describe_fd001_and_a_fleet_yaml(tmp_path, cli):
    r = cli("data", "describe", "--dataset", "fd001", "--json")
    assert r.code == 0, r.err
    d = json.loads(r.out)
    assert d["units"] == {"train": 80, "val": 20, "test": 100}
    assert d["regimes"]["found"] == 1 and len(d["sensors"]["kept"]) == 14
    assert d["rows_per_unit"]["train"]["min"] == 128
    r = cli("data", "describe", "--dataset", pump_fleet(tmp_path), "--json")
    assert r.code == 0, r.err
    d = json.loads(r.out)
    assert d["sensors"]["kept"] == ["p_in", "vib_x", "temp"]
    assert d["sensors"]["dropped"] == {"firmware": "constant"}
    assert d["regimes"]["found"] == 2 and d["normalization"] == "regime"
    assert d["units"]["test"] == 1 and "held-out training units" in d["test_split"]
    assert d["windows"]["window"] == 10 and d["labels"]["train"]["min"] == 0
    r = cli("data", "describe", "--dataset", pump_fleet(tmp_path))
    assert r.code == 0 and "dropped firmware: constant" in r.out


def _edit_csv(path: Path, edit) -> None:
    frame = pd.read_csv(path)
    out = edit(frame)  # edits in place (None) or returns a new frame
    (frame if out is None else out).to_csv(path, index=False)


def _set(frame, row, col: str, value) -> None:
    frame.loc[row, col] = value


BAD_INPUTS = {
    "missing file": (
        {"train": "nowhere.csv"}, None, "train file not found"),
    "missing column": (
        {"sensors": ["p_in", "vib_y"]}, None, "no column 'vib_y' (near: vib_x"),
    "short unit": (
        {"window": 60}, None, "fewer than data.window=60"),
    # Rows in any order are sorted on read (issue 23, section 5); a non-numeric time is refused.
    "time not numeric": (
        {}, lambda f: f.assign(hour=f.hour.astype(str).where(f.index != 5, "x")),
        "column 'hour' is not numeric ('x' at data row 6)"),
    "duplicate rows": (
        {}, lambda f: _set(f, 5, "hour", 5), "duplicate rows for unit 1, hour 5"),
    "nan cells": (
        {}, lambda f: _set(f, 7, "vib_x", np.nan), "in column 'vib_x' at data row(s) 8"),
    "blank unit id": (
        {}, lambda f: f.assign(pump_id=[" " if i == 3 else f"P{u}" for i, u in enumerate(f.pump_id)]),  # noqa: E501
        "missing unit id in column 'pump_id' at data row 4"),
    "too few units": (
        {}, lambda f: f[f.pump_id <= 2], "a dataset needs at least 3"),
    "all constant": (
        {"settings": None, "regimes": None},
        lambda f: f.assign(p_in=1.0, vib_x=1.0, temp=1.0, load=1.0),
        "no sensors left after dropping constant"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_fleet_input_is_one_line_and_trains_nothing(case, tmp_path, cli):
    keys, edit, message = BAD_INPUTS[case]
    path = pump_fleet(tmp_path, **keys)
    if edit is not None:
        _edit_csv(tmp_path / "pumps.csv", edit)
    r = cli("train", "--preset", "tiny", "--dataset", path, "--out", tmp_path / "run")
    assert r.code == 2 and len(r.err_lines) == 1, r.err
    assert message in r.err, r.err
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_nan_policy_ffill_fills_within_a_unit(tmp_path):
    path = pump_fleet(tmp_path, nan_policy="ffill")
    _edit_csv(tmp_path / "pumps.csv", lambda f: _set(f, 7, "vib_x", np.nan))
    data = load_dataset(DataConfig(dataset=str(path), window=10), seed=0)
    assert torch.isfinite(data.train.x).all()
    _edit_csv(tmp_path / "pumps.csv", lambda f: _set(f, 0, "vib_x", np.nan))  # nothing before it
    with pytest.raises(GraceError, match="column 'vib_x' at data row"):
        load_dataset(DataConfig(dataset=str(path), window=10), seed=0)


def test_test_rul_must_match_the_test_units(tmp_path, cli):
    path = pump_fleet(tmp_path, test="test.csv", test_rul="rul.csv")
    frame = pd.read_csv(tmp_path / "pumps.csv")
    frame[frame.pump_id <= 3].to_csv(tmp_path / "test.csv", index=False)
    (tmp_path / "rul.csv").write_text("pump_id,rul\n1,5\n2,7\n9,3\n")
    r = cli("data", "describe", "--dataset", path)
    assert r.code == 2 and "rows for unit(s) 9 that are not in the test file" in r.err
    (tmp_path / "rul.csv").write_text("unit,rul\n1,5\n2,7\n")
    r = cli("data", "describe", "--dataset", path)
    assert r.code == 2 and "no row for test unit(s) 3" in r.err
    (tmp_path / "rul.csv").write_text("unit,rul\n1,5\n2,7\n3,0\n")
    r = cli("data", "describe", "--dataset", path, "--json")
    assert r.code == 0 and json.loads(r.out)["test_split"] == "test units, last window"


def test_dataset_that_does_not_exist(tmp_path, cli):
    r = cli("train", "--preset", "tiny", "--dataset", tmp_path / "x.yaml", "--out", tmp_path / "r")
    assert r.code == 2 and len(r.err_lines) == 1 and "file not found" in r.err
    r = cli("train", "--preset", "tiny", "--dataset", "FD009", "--out", tmp_path / "r")
    assert r.code == 2 and "is not one of FD001, FD002, FD003, FD004" in r.err


@pytest.mark.slow
def test_fleet_yaml_train_evaluate_export_predict_and_sweep_names(tmp_path, cli, monkeypatch):
    path = pump_fleet(tmp_path / "fleet")
    monkeypatch.chdir(tmp_path / "fleet")  # a relative dataset path is stored absolute
    run = tmp_path / "run"
    r = cli("train", "--preset", "tiny", "--epochs", "1", "--threads", "1", "--quiet",
            "--dataset", "pumps.yaml", "--out", run)  # fmt: skip
    assert r.code == 0, r.err
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["dataset"] == str(path) and "held-out training units" in metrics["test_split"]
    r = cli("evaluate", "--model", run / "checkpoints" / "best.pt")
    assert r.code == 0, r.err
    assert json.loads(r.out)["test"]["rmse_last"] == pytest.approx(metrics["test"]["rmse_last"])
    r = cli("export", run, "--out", tmp_path / "model")
    assert r.code == 0, r.err
    r = cli("evaluate", "--model", tmp_path / "model")  # the model path scores the same cuts
    assert r.code == 0, r.err
    assert json.loads(r.out)["test"]["rmse_last"] == pytest.approx(
        metrics["test"]["rmse_last"], rel=1e-5
    )
    frame = pd.read_csv(tmp_path / "fleet" / "pumps.csv")
    frame[frame.pump_id <= 2].to_csv(tmp_path / "new.csv", index=False)  # the YAML's names
    r = cli("predict", "--model", tmp_path / "model", "--input", tmp_path / "new.csv")
    assert r.code == 0, r.err
    table = pd.read_csv(io.StringIO(r.out))
    assert table["unit"].tolist() == [1, 2] and table["rul"].notna().all()
    frame.rename(columns={"pump_id": "engine"}).to_csv(tmp_path / "bad.csv", index=False)
    r = cli("predict", "--model", tmp_path / "model", "--input", tmp_path / "bad.csv")
    assert r.code == 2 and "missing column(s) pump_id" in r.err
    from grace_rul.experiments.grid import Cell

    assert Cell(str(path), "gaba", 1).name == "pumps-gaba-s1"
