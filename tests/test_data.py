"""The C-MAPSS data contract: labels, windows, scaling, splits, and refusal of bad files."""

from __future__ import annotations

import gzip
import hashlib
import json

import numpy as np
import pandas as pd
import pytest
import torch

from grace_rul.data import (
    COLUMNS,
    SENSORS,
    SHA256,
    DataConfig,
    Normalizer,
    add_labels,
    bundled_dir,
    clear_cache,
    health_class,
    load_dataset,
    make_windows,
    read_cmapss,
    regime_keys,
    truncated_windows,
    unit_windows,
)
from grace_rul.errors import GraceError

torch.set_num_threads(1)


def tiny_frame(lengths=(5, 140), settings=None) -> pd.DataFrame:
    """Hand-made units in the C-MAPSS layout; sensor k of global row r is r * 100 + k."""
    rows = []
    r = 0
    for unit, length in enumerate(lengths, start=1):
        for cycle in range(1, length + 1):
            s = settings(unit, cycle) if settings else (0.0, 0.0, 100.0)
            rows.append([unit, cycle, *s, *(r * 100.0 + k for k in range(1, 22))])
            r += 1
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    return frame.astype({"unit": np.int64, "cycle": np.int64})


# --------------------------------------------------------------------------- labels


def test_train_labels_are_capped_piecewise_linear() -> None:
    out = add_labels(tiny_frame(), max_rul=125, critical=30, degrading=80)
    u1 = out[out.unit == 1]
    u2 = out[out.unit == 2]
    assert u1.rul.tolist() == [4, 3, 2, 1, 0]
    # unit 2 has 140 cycles: raw RUL 139..0, capped at 125 for cycles 1..15.
    expected = [min(140 - c, 125) for c in range(1, 141)]
    assert u2.rul.tolist() == expected
    assert u2.rul.iloc[14] == 125 and u2.rul.iloc[15] == 124 and u2.rul.iloc[-1] == 0
    assert out.health.tolist() == health_class(out.rul.to_numpy()).tolist()
    assert "rul" not in tiny_frame()  # the input frame is not modified


def test_test_labels_add_the_final_rul_of_each_unit() -> None:
    out = add_labels(tiny_frame(), 125, 30, 80, final_rul=np.array([10, 3]))
    assert out[out.unit == 1].rul.tolist() == [14, 13, 12, 11, 10]
    u2 = out[out.unit == 2].rul.to_numpy()
    assert u2[-1] == 3 and u2[-2] == 4 and u2[0] == 125  # 139 + 3 capped
    assert (u2 == 125).sum() == 18  # cycles 1..18 have raw RUL >= 125
    with pytest.raises(GraceError, match="final RUL has 1 values"):
        add_labels(tiny_frame(), 125, 30, 80, final_rul=np.array([10]))


def test_health_class_boundaries_numpy_and_torch() -> None:
    rul = [0, 29, 30, 31, 79, 80, 81, 125]
    expected = [2, 2, 2, 1, 1, 1, 0, 0]
    got = health_class(np.array(rul, dtype=np.float64))
    assert isinstance(got, np.ndarray) and got.dtype == np.int64
    assert got.tolist() == expected
    got_t = health_class(torch.tensor(rul, dtype=torch.float32))
    assert isinstance(got_t, torch.Tensor) and got_t.dtype == torch.int64
    assert got_t.tolist() == expected
    assert health_class(np.array([10, 11, 50, 51]), critical=10, degrading=50).tolist() == [
        2, 1, 1, 0,
    ]  # fmt: skip


# --------------------------------------------------------------------------- windows


def test_window_counts_padding_and_labels() -> None:
    frame = add_labels(tiny_frame(), 125, 30, 80)
    feats = frame[list(SENSORS)].to_numpy(dtype=np.float32)
    split = make_windows(feats, frame, window=30)
    unit = split.unit.numpy()
    assert (unit == 1).sum() == 1  # 5 cycles < 30: one padded window, not dropped
    assert (unit == 2).sum() == 140 - 30 + 1
    assert len(split) == 112 and split.x.shape == (112, 30, 14)
    assert split.x.dtype == torch.float32 and split.health.dtype == torch.int64

    # The short unit: 25 copies of its first row, then its 5 rows.
    padded = split.x[0].numpy()
    np.testing.assert_array_equal(padded[:26], np.repeat(feats[:1], 26, axis=0))
    np.testing.assert_array_equal(padded[25:], feats[0:5])
    assert split.cycle[0] == 5 and split.rul[0] == 0

    # Unit 2's k-th window is rows k..k+29 of that unit, labelled at its last row.
    for k in (0, 57, 110):
        np.testing.assert_array_equal(split.x[1 + k].numpy(), feats[5 + k : 5 + k + 30])
        assert split.cycle[1 + k] == k + 30
        assert split.rul[1 + k] == min(140 - (k + 30), 125)
    assert split.health.tolist() == health_class(split.rul.numpy()).tolist()

    last = make_windows(feats, frame, window=30, last_only=True)
    assert len(last) == 2 and last.unit.tolist() == [1, 2] and last.cycle.tolist() == [5, 140]
    np.testing.assert_array_equal(last.x[1].numpy(), feats[-30:])
    np.testing.assert_array_equal(last.x[0].numpy(), padded)

    # A unit exactly one window long gives exactly one unpadded window.
    exact = make_windows(feats[:5], frame.iloc[:5], window=5)
    assert len(exact) == 1
    np.testing.assert_array_equal(exact.x[0].numpy(), feats[:5])


def test_windows_without_labels_and_ungrouped_rows() -> None:
    frame = tiny_frame((3, 4))
    feats = frame[list(SENSORS)].to_numpy(dtype=np.float32)
    split = make_windows(feats, frame, window=2)
    assert len(split) == 2 + 3
    assert torch.isnan(split.rul).all() and (split.health == -1).all()
    with pytest.raises(ValueError, match="grouped by unit"):
        make_windows(feats[[0, 3, 1]], frame.iloc[[0, 3, 1]], window=1)


# --------------------------------------------------------------------------- scaling


def two_regime_frame() -> pd.DataFrame:
    """Regime A (settings ~ 0, 0, 100) on odd cycles, regime B (~ 42, 0.84, 100) on even ones."""
    rng = np.random.default_rng(0)

    def settings(unit: int, cycle: int) -> tuple[float, float, float]:
        jitter = rng.uniform(-0.003, 0.003)
        return (0.0 + jitter, 0.0, 100.0) if cycle % 2 else (42.0 + jitter, 0.84, 100.0)

    frame = tiny_frame((20, 31), settings)
    values = rng.normal(size=(len(frame), len(SENSORS)))
    regime_b = frame.cycle.to_numpy() % 2 == 0
    values[regime_b] = values[regime_b] * 7.0 + 500.0
    frame[list(SENSORS)] = values
    frame.loc[~regime_b, "s2"] = 3.5  # constant within regime A: std guarded to 1
    return frame


def test_regime_normalizer_statistics_match_numpy() -> None:
    frame = two_regime_frame()
    norm = Normalizer.fit(frame, "regime")
    assert norm.n_regimes == 2
    regime_b = frame.cycle.to_numpy() % 2 == 0
    for r, mask in enumerate((~regime_b, regime_b)):  # regime keys sort A before B
        values = frame.loc[mask, list(SENSORS)].to_numpy()
        std = values.std(axis=0)
        np.testing.assert_allclose(norm.mean[r], values.mean(axis=0))
        np.testing.assert_allclose(norm.std[r], np.where(std < 1e-8, 1.0, std))
    assert norm.std[0][SENSORS.index("s2")] == 1.0

    out = norm.transform(frame)
    assert out.shape == (len(frame), 14) and out.dtype == np.float32
    np.testing.assert_array_equal(norm.assign(frame), regime_b.astype(np.int64))
    # Column 0 (s2) is constant in regime A, so only regime B standardises it.
    for scaled in (out[~regime_b][:, 1:], out[regime_b]):
        np.testing.assert_allclose(scaled.mean(axis=0), 0.0, atol=1e-5)
        np.testing.assert_allclose(scaled.std(axis=0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(out[~regime_b][:, 0], 0.0)  # the constant sensor is centred

    glob = Normalizer.fit(frame, "global")
    values = frame[list(SENSORS)].to_numpy()
    np.testing.assert_allclose(glob.mean[0], values.mean(axis=0))
    np.testing.assert_allclose(glob.std[0], values.std(axis=0))
    assert not np.allclose(glob.transform(frame), out)


def test_normalizer_round_trip_and_unseen_regime(tmp_path) -> None:
    frame = two_regime_frame()
    norm = Normalizer.fit(frame, "regime")
    via_json = Normalizer.from_dict(json.loads(json.dumps(norm.to_dict())))
    torch.save(norm.to_dict(), tmp_path / "n.pt")
    via_torch = Normalizer.from_dict(torch.load(tmp_path / "n.pt", weights_only=True))
    for other in (via_json, via_torch):
        assert other.mode == "regime"
        np.testing.assert_array_equal(other.transform(frame), norm.transform(frame))

    # Settings (41.6, 0.80, 100) round to a key never fitted: nearest centroid is regime B.
    odd = frame.iloc[:3].copy()
    odd[list(frame.columns[2:5])] = [41.6, 0.80, 100.0]
    assert norm.assign(odd).tolist() == [1, 1, 1]
    odd[list(frame.columns[2:5])] = [0.6, 0.04, 100.0]
    assert norm.assign(odd).tolist() == [0, 0, 0]

    with pytest.raises(GraceError, match="normalizer statistics are malformed"):
        Normalizer.from_dict({"mode": "regime"})
    with pytest.raises(GraceError, match="global or regime"):
        Normalizer.fit(frame, "minmax")


# --------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def fd001():
    return load_dataset(DataConfig(dataset="FD001"), seed=42)


@pytest.fixture(scope="module")
def fd002():
    return load_dataset(DataConfig(dataset="FD002"), seed=42)


@pytest.mark.parametrize(
    "dataset, train_rows, train_units, test_rows, test_units",
    [("FD001", 20631, 100, 13096, 100), ("FD002", 53759, 260, 33991, 259)],
)
def test_real_counts_match_source(dataset, train_rows, train_units, test_rows, test_units) -> None:
    raw = read_cmapss(dataset)
    assert tuple(raw.train.columns) == COLUMNS and len(COLUMNS) == 26
    assert raw.train.shape == (train_rows, 26) and raw.train.unit.nunique() == train_units
    assert raw.test.shape == (test_rows, 26) and raw.test.unit.nunique() == test_units
    assert raw.test_rul.shape == (test_units,)
    if dataset == "FD001":  # the first row as quoted in SOURCE.md
        assert raw.train.iloc[0, :9].tolist() == pytest.approx(
            [1, 1, -0.0007, -0.0004, 100.0, 518.67, 641.82, 1589.70, 1400.60]
        )


def test_real_regime_counts() -> None:
    for dataset, n in (("FD001", 1), ("FD002", 6), ("FD003", 1), ("FD004", 6)):
        raw = read_cmapss(dataset)
        for frame in (raw.train, raw.test):
            assert len(np.unique(regime_keys(frame), axis=0)) == n, dataset


def test_real_sha256_constants_match_bundled_files() -> None:
    folder = bundled_dir()
    assert len(SHA256) == 12
    for name, digest in SHA256.items():
        text = gzip.decompress(folder.joinpath(name + ".gz").read_bytes())
        assert hashlib.sha256(text).hexdigest() == digest


@pytest.mark.parametrize("dataset, n_test", [("FD002", 259), ("FD004", 248)])
def test_real_short_test_units_are_padded_not_dropped(dataset, n_test, fd002) -> None:
    data = fd002 if dataset == "FD002" else load_dataset(DataConfig(dataset=dataset), seed=42)
    raw = read_cmapss(dataset)
    lengths = raw.test.groupby("unit").size()
    short = lengths[lengths < 30]
    assert len(short) > 0  # the subset really has test units shorter than a window
    assert len(data.test) == n_test
    assert data.test.unit.tolist() == list(range(1, n_test + 1))
    for unit, length in short.items():
        x = data.test.x[unit - 1]
        pad = 30 - length
        assert data.test.cycle[unit - 1] == length
        assert torch.equal(x[:pad], x[pad].expand(pad, -1))  # repeated first row
        assert not torch.equal(x[pad], x[pad + 1])
    # The test label of each unit is its capped RUL from the RUL file.
    np.testing.assert_array_equal(data.test.rul.numpy(), np.minimum(raw.test_rul, 125))


def test_real_fd001_test_split_and_labels(fd001) -> None:
    assert len(fd001.test) == 100 and fd001.test.unit.tolist() == list(range(1, 101))
    assert fd001.test.x.shape == (100, 30, 14)
    assert fd001.feature_names == SENSORS
    for split in (fd001.train, fd001.val, fd001.test):
        assert split.rul.max() <= 125 and split.rul.min() >= 0
        assert split.health.tolist() == health_class(split.rul.numpy()).tolist()
    assert fd001.train.rul.max() == 125 and fd001.train.rul.min() == 0
    raw = read_cmapss("FD001")
    lengths = raw.train.groupby("unit").size()
    assert len(fd001.train) + len(fd001.val) == int((lengths - 29).sum())


def test_real_split_is_by_whole_unit_and_seeded(fd001) -> None:
    train, val = set(fd001.train_units), set(fd001.val_units)
    assert not train & val and train | val == set(range(1, 101)) and len(val) == 20
    assert set(fd001.train.unit.tolist()) == train
    assert set(fd001.val.unit.tolist()) == val
    again = load_dataset(DataConfig(dataset="FD001"), seed=42)
    other = load_dataset(DataConfig(dataset="FD001"), seed=123)
    assert again.val_units == fd001.val_units
    assert torch.equal(again.train.x, fd001.train.x)
    assert other.val_units != fd001.val_units


def test_real_normalizer_fitted_on_training_units_only(fd001, fd002) -> None:
    for data in (fd001, fd002):
        raw = read_cmapss(data.dataset)
        in_train = raw.train.unit.isin(data.train_units)
        mode = "regime" if data.dataset == "FD002" else "global"
        assert data.normalizer.mode == mode
        refit = Normalizer.fit(raw.train[in_train], mode)
        np.testing.assert_allclose(data.normalizer.mean, refit.mean)
        np.testing.assert_allclose(data.normalizer.std, refit.std)
        everything = Normalizer.fit(raw.train, mode)
        assert not np.allclose(data.normalizer.mean, everything.mean)
    assert fd002.normalizer.n_regimes == 6
    # Per-regime scaling really standardises the training windows.
    assert abs(float(fd002.train.x.mean())) < 0.1 and 0.8 < float(fd002.train.x.std()) < 1.1


def test_real_unit_windows_trace_a_whole_life(fd001) -> None:
    raw = read_cmapss("FD001")
    cfg = DataConfig(dataset="FD001")
    test1 = unit_windows(raw, fd001.normalizer, cfg, unit=1)
    assert len(test1) == 31 - 30 + 1  # test unit 1 has 31 cycles
    assert torch.equal(test1.x[-1], fd001.test.x[0]) and test1.rul[-1] == fd001.test.rul[0] == 112
    train1 = unit_windows(raw, fd001.normalizer, cfg, unit=1, split="train")
    assert len(train1) == 192 - 29 and train1.rul[-1] == 0 and train1.rul[0] == 125
    with pytest.raises(GraceError, match="no unit 999"):
        unit_windows(raw, fd001.normalizer, cfg, unit=999)


def test_real_window_longer_than_every_unit() -> None:
    with pytest.raises(
        GraceError,
        match=r"data\.window=400 is longer than every training unit of FD001 "
        r"\(longest: 362 cycles\)",
    ):
        load_dataset(DataConfig(dataset="FD001", window=400), seed=0)


def test_cache_returns_independent_copies() -> None:
    first = read_cmapss("FD001")
    first.train.loc[0, "s2"] = -1.0
    first.test_rul[0] = -5
    second = read_cmapss("FD001")
    assert second.train.loc[0, "s2"] == 641.82 and second.test_rul[0] == 112


# --------------------------------------------------------------------------- bad input


@pytest.fixture
def copy_dir(tmp_path):
    """A data_dir holding copies of the bundled FD001 files."""
    for kind in ("train", "test", "RUL"):
        name = f"{kind}_FD001.txt.gz"
        (tmp_path / name).write_bytes(bundled_dir().joinpath(name).read_bytes())
    return tmp_path


def rewrite(path, edit) -> None:
    lines = gzip.decompress(path.read_bytes()).decode().splitlines(keepends=True)
    path.write_bytes(gzip.compress("".join(edit(lines)).encode()))


def test_copy_dir_reads_like_the_bundled_copy(copy_dir) -> None:
    clear_cache()
    ours, bundled = read_cmapss("FD001", copy_dir), read_cmapss("FD001")
    pd.testing.assert_frame_equal(ours.train, bundled.train)
    np.testing.assert_array_equal(ours.test_rul, bundled.test_rul)


def test_missing_file_and_directory(copy_dir) -> None:
    (copy_dir / "test_FD001.txt.gz").unlink()
    with pytest.raises(GraceError, match=r"C-MAPSS file not found: .*test_FD001\.txt\.gz"):
        read_cmapss("FD001", copy_dir)
    with pytest.raises(GraceError, match="data directory not found"):
        read_cmapss("FD001", copy_dir / "nowhere")
    with pytest.raises(GraceError, match="unknown C-MAPSS subset"):
        read_cmapss("FD005")


def test_changed_value_fails_the_checksum(copy_dir) -> None:
    path = copy_dir / "train_FD001.txt.gz"
    rewrite(path, lambda ls: [ls[0].replace("518.67", "518.68", 1), *ls[1:]])
    with pytest.raises(GraceError, match=r"train_FD001\.txt\.gz: sha256 .* expected 963b5e22825b"):
        read_cmapss("FD001", copy_dir)


def test_truncated_gzip(copy_dir) -> None:
    path = copy_dir / "test_FD001.txt.gz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(GraceError, match=r"test_FD001\.txt\.gz: not a readable gzip file"):
        read_cmapss("FD001", copy_dir)
    path.write_bytes(b"not gzip at all")
    with pytest.raises(GraceError, match=r"test_FD001\.txt\.gz: not a readable gzip file"):
        read_cmapss("FD001", copy_dir)


def test_wrong_column_count(copy_dir) -> None:
    path = copy_dir / "train_FD001.txt.gz"
    original = path.read_bytes()
    rewrite(path, lambda ls: [*ls[:4], ls[4].rstrip() + " 1.0  \n", *ls[5:]])  # line 5: 27
    message = r"train_FD001\.txt\.gz: wrong column count: line 5 has 27 fields, expected 26"
    with pytest.raises(GraceError, match=message):
        read_cmapss("FD001", copy_dir)
    path.write_bytes(original)
    rewrite(path, lambda ls: [*ls[:6], ls[6].rsplit(" ", 3)[0] + "\n", *ls[7:]])  # line 7: 25
    with pytest.raises(GraceError, match=r"line 7 has 25 fields, expected 26"):
        read_cmapss("FD001", copy_dir)
    rul = copy_dir / "RUL_FD001.txt.gz"
    rewrite(rul, lambda ls: [ls[0].rstrip() + " 7\n", *ls[1:]])
    path.write_bytes(original)
    with pytest.raises(GraceError, match=r"RUL_FD001\.txt\.gz: wrong column count.*expected 1"):
        read_cmapss("FD001", copy_dir)


def test_non_numeric_cell(copy_dir) -> None:
    path = copy_dir / "test_FD001.txt.gz"
    # Line 3 is "1 3 0.0003 0.0001 100.0 518.67 642.46 ...": sensor s2 becomes "abc.46".
    rewrite(path, lambda ls: [*ls[:2], ls[2].replace(" 642.", " abc.", 1), *ls[3:]])
    message = r"test_FD001\.txt\.gz: non-numeric value 'abc\.46' at line 3, column 7"
    with pytest.raises(GraceError, match=message):
        read_cmapss("FD001", copy_dir)


def test_rul_count_must_match_test_units(copy_dir, monkeypatch) -> None:
    rul = copy_dir / "RUL_FD001.txt.gz"
    rewrite(rul, lambda ls: ls[:-1])
    # Accept the shortened file's checksum so the count check itself is reached.
    digest = hashlib.sha256(gzip.decompress(rul.read_bytes())).hexdigest()
    monkeypatch.setitem(SHA256, "RUL_FD001.txt", digest)
    with pytest.raises(GraceError, match=r"RUL_FD001\.txt\.gz: has 99 RUL values but .* 100 units"):
        read_cmapss("FD001", copy_dir)


def test_file_changed_after_a_good_read_is_checked_again(copy_dir) -> None:
    read_cmapss("FD001", copy_dir)
    path = copy_dir / "RUL_FD001.txt.gz"
    rewrite(path, lambda ls: [*ls, "5 \n"])
    with pytest.raises(GraceError, match=r"RUL_FD001\.txt\.gz: sha256"):
        read_cmapss("FD001", copy_dir)
    path.write_bytes(bundled_dir().joinpath("RUL_FD001.txt.gz").read_bytes())
    assert len(read_cmapss("FD001", copy_dir).test_rul) == 100


def test_auto_normalisation_is_per_regime_for_six_condition_subsets():
    from grace_rul.data import resolve_normalization

    modes = [resolve_normalization("auto", d) for d in ("FD001", "FD002", "FD003", "FD004")]
    assert modes == ["global", "regime", "global", "regime"]
    assert resolve_normalization("global", "FD002") == "global"


def test_truncated_validation_is_the_last_window_of_each_cut() -> None:
    """Each unit cut at ``cuts`` seeded points, scored on the window ending there."""
    frame = add_labels(tiny_frame(lengths=(5, 140, 60)), 125, 30, 80)
    feats = frame[list(SENSORS)].to_numpy(dtype=np.float32)
    full = make_windows(feats, frame, window=30)
    cut = truncated_windows(full, cuts=4, seed=7)
    # unit 1 has one (padded) window: it is taken once; units 2 and 3 get 4 cuts each
    assert cut.unit.tolist().count(1) == 1 and cut.unit.tolist().count(2) == 4
    assert cut.unit.tolist().count(3) == 4 and len(cut) == 9
    again = truncated_windows(full, cuts=4, seed=7)
    assert torch.equal(cut.cycle, again.cycle)  # seeded
    assert not torch.equal(cut.cycle, truncated_windows(full, cuts=4, seed=8).cycle)
    lengths = {1: 5, 2: 140, 3: 60}
    unit_frames = {u: frame[frame["unit"] == u] for u in lengths}
    for i in range(len(cut)):
        unit, c = int(cut.unit[i]), int(cut.cycle[i])
        # the same window as cutting the unit after cycle c and taking its last window
        truncated = unit_frames[unit][unit_frames[unit]["cycle"] <= c]
        rows = truncated.index.to_numpy()
        last = make_windows(feats[rows], truncated, window=30, last_only=True)
        np.testing.assert_array_equal(cut.x[i].numpy(), last.x[0].numpy())
        assert float(cut.rul[i]) == min(lengths[unit] - c, 125)  # label at the cut
        assert int(cut.health[i]) == int(health_class(np.array([cut.rul[i].item()]))[0])
    assert cut.cycle[cut.unit == 2].tolist() == sorted(cut.cycle[cut.unit == 2].tolist())
    with pytest.raises(GraceError, match="cuts"):
        truncated_windows(full, cuts=0, seed=0)


def test_real_validation_cuts_per_unit(fd001) -> None:
    assert len(fd001.val_last) == 10 * len(fd001.val_units)
    assert set(fd001.val_last.unit.tolist()) == set(fd001.val_units)
