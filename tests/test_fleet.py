"""Fleets of one's own: dataset YAMLs over CSV/Parquet tables give exactly C-MAPSS's runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import QUIET, tiny_config
from grace_rul.config import resolve_config
from grace_rul.data import (
    SENSORS,
    SETTINGS,
    DataConfig,
    Normalizer,
    load_cmapss,
    load_dataset,
    read_cmapss,
    regime_keys,
)
from grace_rul.data.regimes import kmeans_regimes

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
    theirs = load_cmapss(DataConfig(dataset=dataset), seed=7)
    assert_same_data(ours, theirs)
    assert ours.normalizer.n_regimes == (6 if dataset == "FD002" else 1)
    assert ours.feature_names == tuple(RENAME[s] for s in SENSORS)
    # Normaliser round trip keeps the k-means regime assignment.
    again = Normalizer.from_dict(ours.normalizer.to_dict())
    frame = read_cmapss(dataset).test.rename(columns=RENAME)
    frame = frame.rename(columns={"engine_id": "unit", "t": "cycle"})
    np.testing.assert_array_equal(again.assign(frame), ours.normalizer.assign(frame))


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
    assert tiny_config().data.window == 30


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
