"""K-fold cross-validation over whole engines: folds, out-of-fold scores, the fold ensemble.

One 2-fold cross-validation of the tiny network (1 epoch per fold, real FD001) is trained
per module and shared.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import grace_rul
from conftest import QUIET, SHORT
from grace_rul.cli import main
from grace_rul.data import bundled_dir, fold_units, load_dataset, read_dataset
from grace_rul.errors import GraceError
from grace_rul.folds import cv_score
from grace_rul.inference.conformal import Calibration
from grace_rul.resolve import resolve_config
from grace_rul.stabilisers import stream_seed
from grace_rul.trainer import train

torch.set_num_threads(1)
TEST_FD001 = Path(str(bundled_dir() / "test_FD001.txt.gz"))
TINY = ["--preset", "tiny", "--set", "data.window=10", "--epochs", "1", "--threads", "1"]


def _lengths():
    raw = read_dataset(resolve_config("tiny").data)
    return raw.train.groupby("unit").size()


def test_folds_are_disjoint_cover_every_unit_once_and_repeat_with_the_seed():
    lengths = _lengths()
    folds = fold_units(lengths, 5, seed=42)
    flat = [u for f in folds for u in f]
    assert sorted(flat) == sorted(lengths.index.tolist())  # every unit, exactly once
    assert len(set(flat)) == len(flat)
    assert max(map(len, folds)) - min(map(len, folds)) <= 1
    assert fold_units(lengths, 5, seed=42) == folds
    assert fold_units(lengths, 5, seed=7) != folds
    # Stratified by life length: every fold's mean life is close to the fleet's.
    means = [lengths[f].mean() for f in folds]
    assert max(means) - min(means) < 0.1 * lengths.mean()
    with pytest.raises(GraceError, match="more than the 100 training units"):
        fold_units(lengths, 101, seed=42)


def test_fold_f_validates_on_its_own_fold_and_trains_on_the_others():
    cfg = resolve_config("tiny", overrides={"data": {**SHORT, "folds": 3, "fold": 2}})
    data = load_dataset(cfg.data, cfg.seed, with_test=False)
    folds = fold_units(_lengths(), 3, cfg.seed)
    assert data.val_units == folds[1]
    assert sorted(data.train_units) == sorted(folds[0] + folds[2])
    assert data.test is None  # with_test=False builds no test split


class _Built(Exception):
    """Raised by the spy below once a run's components exist: nothing trains."""


def _initial_streams(monkeypatch, tmp_path: Path, fold: int) -> tuple[torch.Tensor, int]:
    """The first weight tensor and the data-order seed a run of fold ``fold`` starts from."""
    import grace_rul.trainer as trainer

    def spy(run, cfg, data, components, *args):
        first = next(components.model.parameters()).detach().clone()
        raise _Built(first, components.rng.generator.initial_seed())

    monkeypatch.setattr(trainer, "_start", spy)
    split = {"folds": 2, "fold": fold} if fold else {}  # fold 0: a single run
    cfg = resolve_config("tiny", overrides={"data": {**SHORT, **split}})
    with pytest.raises(_Built) as built:
        train(cfg, tmp_path / f"fold{fold}", execution=QUIET, score_test=False)
    return built.value.args


def test_each_fold_starts_from_its_own_initialisation_and_data_order(monkeypatch, tmp_path):
    single = _initial_streams(monkeypatch, tmp_path, 0)
    one, two = (_initial_streams(monkeypatch, tmp_path, f) for f in (1, 2))
    seed = resolve_config("tiny").seed
    assert single[1] == seed  # a single run keeps its seed: its results do not move
    assert one[1] == stream_seed(seed, 1) != two[1] != seed
    assert not torch.equal(one[0], two[0]) and not torch.equal(one[0], single[0])
    assert torch.equal(_initial_streams(monkeypatch, tmp_path / "again", 1)[0], one[0])


@pytest.fixture(scope="module")
def cv_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cv") / "fd001-cv"
    assert main(["train", *TINY, "--folds", "2", "--quiet", "--out", str(out)]) == 0
    return out


def test_cross_validation_writes_oof_with_one_fold_per_unit_and_the_cv_score(cv_run):
    oof = pd.read_csv(cv_run / "oof.csv")
    assert list(oof.columns) == ["unit", "cut", "true", "predicted", "fold"]
    assert oof.groupby("unit")["fold"].nunique().max() == 1  # one fold per unit
    assert sorted(oof["unit"].unique()) == list(range(1, 101))  # every training engine
    metrics = json.loads((cv_run / "metrics.json").read_text())
    err = oof["predicted"] - oof["true"]
    assert metrics["cv"]["rmse"] == pytest.approx(float(np.sqrt((err**2).mean())))
    assert metrics["cv"] == cv_score(oof)
    assert len(metrics["cv"]["fold_rmse"]) == 2 and metrics["cv"]["std"] >= 0
    # The fold ensemble's test metrics and each fold model's, scored once.
    assert metrics["test"]["rmse_last"] > 0
    assert [f["fold"] for f in metrics["fold_runs"]] == [1, 2]
    assert all(f["test"]["rmse_last"] > 0 for f in metrics["fold_runs"])
    # Each fold's own validation units are exactly the units of its out-of-fold rows.
    for f in (1, 2):
        fold_cfg = (cv_run / f"fold{f}" / "config.yaml").read_text()
        assert f"fold: {f}" in fold_cfg
        own = pd.read_csv(cv_run / f"fold{f}" / "oof.csv")
        assert set(own["unit"]) == set(oof[oof["fold"] == f]["unit"])


def test_fold_ensemble_predicts_with_cv_plus_intervals_around_the_point(cv_run, tmp_path):
    model = grace_rul.load_model(cv_run)
    assert len(model.members) == 2
    assert model.calibration.member is not None
    assert model.calibration.method.startswith("CV+")
    out = tmp_path / "pred.csv"
    assert (
        main(["predict", "--model", str(cv_run), "--input", str(TEST_FD001), "--out", str(out)])
        == 0
    )
    table = pd.read_csv(out)
    assert len(table) == 100
    assert ((table["rul_lower"] <= table["rul"]) & (table["rul"] <= table["rul_upper"])).all()
    assert main(["evaluate", "--model", str(cv_run)]) == 0


def test_fold_ensemble_exports_to_onnx_within_a_thousandth_of_a_cycle(cv_run, tmp_path):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "onnx"
    assert main(["export", str(cv_run), "--out", str(out), "--onnx"]) == 0
    tables = {}
    for backend in ("torch", "onnx"):
        target = tmp_path / f"{backend}.csv"
        args = ["predict", "--model", str(out), "--input", str(TEST_FD001), "--out", str(target)]
        assert main([*args, "--backend", backend]) == 0
        tables[backend] = pd.read_csv(target)
    for col in ("rul", "rul_lower", "rul_upper"):
        assert np.abs(tables["onnx"][col] - tables["torch"][col]).max() < 1e-3


def test_cv_plus_adds_each_residual_to_the_prediction_of_its_own_fold_model():
    residuals = np.array([-3.0, 1.0, 2.0, -1.0, 5.0, 0.5, -2.0, 4.0, 3.0])
    member = np.array([0, 1, 0, 1, 0, 1, 0, 1, 0])
    cal = Calibration.from_residuals(residuals, member)
    member_pred = np.array([[50.0, 10.0], [60.0, 20.0]])
    low, high = cal.interval(member_pred.mean(axis=0), 0.8, member_pred)
    for j in range(2):
        values = np.sort(member_pred[member, j] + residuals)
        lo, hi = cal.ranks(0.8)
        assert low[j] == max(values[lo], 0.0) and high[j] == values[hi]
    # Round trip through the model file's JSON keeps the member of every residual.
    again = Calibration.from_dict(json.loads(json.dumps(cal.to_dict())))
    assert np.array_equal(again.member, cal.member)
    with pytest.raises(GraceError, match="every member"):
        cal.interval(member_pred.mean(axis=0), 0.8)


def test_a_killed_fold_is_retrained_and_finished_folds_are_kept(cv_run, tmp_path):
    copy = tmp_path / "cv"
    shutil.copytree(cv_run, copy)
    before = pd.read_csv(copy / "oof.csv")
    kept = (copy / "fold1" / "metrics.json").stat().st_mtime_ns
    shutil.rmtree(copy / "fold2" / "checkpoints")  # fold 2 died in its first epoch
    (copy / "fold2" / "metrics.json").unlink()
    (copy / "metrics.json").unlink()
    cfg = resolve_config("tiny", overrides={"data": {**SHORT, "folds": 2}, "train": {"epochs": 1}})
    train(cfg, copy, execution=QUIET, resume=True)
    assert (copy / "fold1" / "metrics.json").stat().st_mtime_ns == kept
    pd.testing.assert_frame_equal(pd.read_csv(copy / "oof.csv"), before)  # bit-identical retrain


def test_sweep_with_folds_tabulates_the_cv_score_beside_the_test_score(tmp_path, capsys):
    out = tmp_path / "sweep"
    args = ["sweep", "--datasets", "FD001", "--balancers", "equal", "--seeds", "1",
            "--preset", "tiny", "--set", "data.window=10", "--set", "train.epochs=1",
            "--set", "data.folds=2", "--threads", "1", "--quiet", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    capsys.readouterr()
    assert main(["table", str(out)]) == 0
    text = capsys.readouterr().out
    assert "Test RMSE" in text and "CV score" in text
    results = pd.read_csv(out / "results.csv")
    assert results["cv_rmse"].notna().all()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--folds", "1"], "--folds needs K >= 2"),
        (["--folds", "101"], "more than the 100 training units"),
        (["--set", "data.fold=3", "--set", "data.folds=2"], "data.fold must be in"),
    ],
)
def test_bad_fold_settings_are_one_line_and_write_nothing(flags, message, tmp_path, cli):
    out = tmp_path / "run"
    result = cli("train", *TINY, *flags, "--out", out)
    assert result.code == 2 and len(result.err_lines) == 1
    assert message in result.err
    assert not out.exists()
