"""The recipe ingredients as settings: window summary features, min-max scaling, LR
schedules, SWA. Each is checked against its definition, resumes bit-identically and is
stored with the model where prediction needs it."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import QUIET, SHORT
from grace_rul.backbones import build_model
from grace_rul.data import Normalizer, bundled_dir, load_dataset, read_cmapss, window_summary
from grace_rul.data.windows import add_labels, make_windows
from grace_rul.errors import GraceError
from grace_rul.resolve import resolve_config
from grace_rul.scoring import score_split
from grace_rul.trainer import train
from resumable import assert_resumes_identically, train_copying

TEST_FD001 = Path(str(bundled_dir() / "test_FD001.txt.gz"))


def tiny(epochs: int, train_: dict | None = None, data: dict | None = None, arch: str = ""):
    return resolve_config(
        "tiny",
        overrides={
            "train": {"epochs": epochs, "batch_size": 2048, **(train_ or {})},
            "data": {**SHORT, **(data or {})},
            "model": {"arch": arch or None},
        },
    )


# Schedules and SWA act on the optimiser and the weights, whatever the network: their tests
# train the fastest tiny one.
FAST = "tcn"


def lrs(run: Path) -> list[float]:
    with open(run / "history.csv", newline="") as f:
        return [float(r["lr"]) for r in csv.DictReader(f)]


# --------------------------------------------------------------------------- window features


def test_window_summary_is_the_mean_and_least_squares_slope():
    t = np.arange(7, dtype=np.float32)
    x = np.stack([3 + 0.5 * t, -2 * t + 1, np.full(7, 4.0)], axis=1)[None]  # (1, 7, 3)
    out = window_summary(x.astype(np.float32))
    assert out.shape == (1, 9, 3) and np.array_equal(out[:, :7], x)
    np.testing.assert_allclose(out[0, 7], x[0].mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(out[0, 8], [0.5, -2.0, 0.0], atol=1e-6)
    noisy = np.random.default_rng(0).normal(size=(4, 12, 5)).astype(np.float32)
    slope = window_summary(noisy)[:, -1]
    ref = [np.polyfit(np.arange(12), noisy[i], 1)[0] for i in range(4)]  # numpy's fit
    np.testing.assert_allclose(slope, np.stack(ref), rtol=1e-4, atol=1e-5)
    frame = add_labels(read_cmapss("FD001").train.head(300), 125, 30, 80)
    feats = frame[["s2", "s3"]].to_numpy(np.float32)
    plain = make_windows(feats, frame, 10)
    summary = make_windows(feats, frame, 10, summary=True)
    assert summary.x.shape == (len(plain), 12, 2)
    assert torch.equal(summary.x[:, :10], plain.x) and torch.equal(summary.rul, plain.rul)


WF_MINMAX = {"window_features": True, "scaling": "minmax"}


@pytest.fixture(scope="module")
def featured(tmp_path_factory) -> tuple[Path, Path]:
    """A 2-epoch tiny run with window features and min-max scaling, copied after epoch 1."""
    root = tmp_path_factory.mktemp("ingredients")
    train_copying(tiny(2, data=WF_MINMAX), root / "wf-minmax", 1, root / "wf-minmax-copy")
    return root / "wf-minmax", root / "wf-minmax-copy"


def test_minmax_is_fitted_on_training_units_only_per_regime():
    cfg = tiny(1, data={"scaling": "minmax"}).data
    data = load_dataset(cfg, seed=42)
    norm = data.normalizer
    assert norm.scaling == "minmax" and norm.mode == "global"
    raw = read_cmapss("FD001").train
    train_rows = raw[raw["unit"].isin(data.train_units)][list(norm.sensors)].to_numpy()
    np.testing.assert_array_equal(norm.low[0], train_rows.min(axis=0))
    np.testing.assert_array_equal(norm.high[0], train_rows.max(axis=0))
    x = data.train.x.reshape(-1, len(norm.sensors))
    assert float(x.min()) == pytest.approx(-1, abs=1e-6)
    assert float(x.max()) == pytest.approx(1, abs=1e-6)
    # per regime on six-regime data: every regime's training rows span [-1, 1]
    fd002 = read_cmapss("FD002").train
    regime = Normalizer.fit(fd002, "regime", scaling="minmax")
    scaled, which = regime.transform(fd002), regime.assign(fd002)
    assert regime.n_regimes == 6
    for r in range(6):
        assert np.allclose(scaled[which == r].min(axis=0), -1, atol=1e-6)
        assert np.allclose(scaled[which == r].max(axis=0), 1, atol=1e-6)
    # stored and rebuilt exactly; old z-score dicts (no "scaling") still load
    again = Normalizer.from_dict(json.loads(json.dumps(regime.to_dict())))
    assert again.scaling == "minmax" and np.array_equal(again.transform(fd002), scaled)
    zscore = Normalizer.fit(fd002, "regime").to_dict()
    assert "scaling" not in zscore and Normalizer.from_dict(zscore).scaling == "zscore"


def test_window_features_and_minmax_are_stored_and_predict_equals_evaluate(featured, tmp_path, cli):
    featured = featured[0]
    best = torch.load(featured / "checkpoints" / "best.pt", weights_only=True)
    assert best["normalizer"]["scaling"] == "minmax"
    assert best["config"]["data"]["window_features"] is True
    assert best["inference"]["conv.0.weight"].shape[1] == 14
    model_dir = tmp_path / "model"
    assert cli("export", featured, "--out", model_dir, "--onnx").code == 0
    doc = json.loads((model_dir / "grace_model.json").read_text())
    assert doc["data"]["window_features"] is True and doc["data"]["window"] == 10
    assert doc["members"][0]["normalizer"]["scaling"] == "minmax"
    assert "rows=12" in doc["onnx"]["input"]["windows"]
    table = tmp_path / "pred.csv"
    assert cli("predict", "--model", model_dir, "--input", TEST_FD001, "--out", table).code == 0
    saved = pd.read_csv(featured / "predictions.csv")  # training's own test-window scores
    predicted = pd.read_csv(table)["rul"].to_numpy()
    assert np.array_equal(predicted, saved["pred_rul"].to_numpy())
    run_metrics = json.loads((featured / "metrics.json").read_text())
    for source in (model_dir, featured):
        evaluated = cli("evaluate", "--model", source)
        assert evaluated.code == 0 and json.loads(evaluated.out)["test"] == run_metrics["test"]
    # Without the summary rows the same network gives other predictions: they are used.
    import grace_rul

    model = grace_rul.load_model(model_dir)
    windows = model.windows(read_cmapss("FD001").test)[0].x
    assert windows.shape[1] == 12
    net = model.members[0].net
    shifted = windows.clone()
    shifted[:, -2:] += 1.0
    with torch.no_grad():
        assert not torch.allclose(net.eval()(windows)[0], net(shifted)[0])
    pytest.importorskip("onnxruntime")
    onnx_table = tmp_path / "onnx.csv"
    args = ("predict", "--model", model_dir, "--input", TEST_FD001, "--backend", "onnx")
    assert cli(*args, "--out", onnx_table).code == 0
    assert np.abs(pd.read_csv(onnx_table)["rul"].to_numpy() - predicted).max() < 1e-3


def test_window_features_and_minmax_resume_bit_identically(featured):
    assert_resumes_identically(tiny(2, data=WF_MINMAX), *featured)


# --------------------------------------------------------------------------- LR schedules


def n_batches(cfg) -> int:
    return -(-len(load_dataset(cfg.data, cfg.seed).train) // cfg.train.batch_size)


def test_cosine_schedule_follows_its_formula_and_resumes(tmp_path):
    cfg = tiny(3, {"schedule": "cosine", "warmup_epochs": 1, "min_lr": 1e-5}, arch=FAST)
    train_copying(cfg, tmp_path / "straight", 2, tmp_path / "copy")
    lr0, low, w, e = cfg.train.lr, cfg.train.min_lr, 1, 3
    expected = [lr0 * 0.1] + [
        low + (lr0 - low) * (1 + math.cos(math.pi * (k - w) / (e - w))) / 2 for k in range(w, e)
    ]
    assert lrs(tmp_path / "straight") == pytest.approx(expected, rel=1e-9)
    assert expected[1] == lr0 and expected[-1] < 0.6 * lr0  # warmup, then annealing
    last = torch.load(tmp_path / "straight" / "checkpoints" / "last.pt", weights_only=True)
    assert "cosine" in last["components"] and "plateau" not in last["components"]
    assert_resumes_identically(cfg, tmp_path / "straight", tmp_path / "copy")
    longer = tiny(4, {"schedule": "cosine", "warmup_epochs": 1, "min_lr": 1e-5}, arch=FAST)
    with pytest.raises(GraceError, match="train.epochs"):  # its length is fixed by epochs
        train(longer, tmp_path / "straight", execution=QUIET, resume=True)


def test_onecycle_schedule_follows_its_formula_per_step_and_resumes(tmp_path):
    cfg = tiny(2, {"schedule": "onecycle"}, arch=FAST)
    train_copying(cfg, tmp_path / "straight", 1, tmp_path / "copy")
    steps = 2 * n_batches(cfg)
    top, start = cfg.train.lr, cfg.train.lr / 25
    end = start / 1e4
    up = 0.3 * steps - 1

    def lr_at(s: int) -> float:  # torch's OneCycleLR, cosine annealing, two phases
        if s <= up:
            a, b, pct = start, top, s / up
        else:
            a, b, pct = top, end, (s - up) / (steps - 1 - up)
        return b + (a - b) / 2 * (math.cos(math.pi * pct) + 1)

    per_epoch = [lr_at(k * n_batches(cfg)) for k in range(2)]
    assert lrs(tmp_path / "straight") == pytest.approx(per_epoch, rel=1e-9)
    last = torch.load(tmp_path / "straight" / "checkpoints" / "last.pt", weights_only=True)
    group = last["components"]["optimizer"]["param_groups"][0]
    assert group["lr"] == pytest.approx(lr_at(steps), rel=1e-9)  # stepped after every step
    assert group["betas"] == tuple(cfg.train.betas)  # momentum is not cycled
    assert_resumes_identically(cfg, tmp_path / "straight", tmp_path / "copy")


# --------------------------------------------------------------------------- SWA


def test_swa_weights_are_the_average_of_its_snapshots_and_are_evaluated(tmp_path, monkeypatch):
    snapshots: list[dict[str, torch.Tensor]] = []
    original = torch.optim.swa_utils.AveragedModel.update_parameters

    def spy(self, model):
        snapshots.append({k: v.detach().clone() for k, v in model.named_parameters()})
        return original(self, model)

    monkeypatch.setattr(torch.optim.swa_utils.AveragedModel, "update_parameters", spy)
    cfg = tiny(3, {"swa_start": 2}, arch=FAST)
    out = tmp_path / "straight"
    train_copying(cfg, out, 2, tmp_path / "copy")
    assert len(snapshots) == 2  # once per epoch, from epoch 2 on
    last = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    swa = last["components"]["swa"]
    assert int(swa["n_averaged"]) == 2
    for name in snapshots[0]:
        mean = (snapshots[0][name] + snapshots[1][name]) / 2
        torch.testing.assert_close(swa[f"module.{name}"], mean, rtol=1e-6, atol=1e-7)
    assert torch.equal(last["components"]["model"]["fc.0.weight"], snapshots[1]["fc.0.weight"])
    # The last epoch's validation score is the SWA average's, not the EMA's.
    data = load_dataset(cfg.data, cfg.seed)
    net = build_model(cfg.model, window=cfg.data.window)
    net.load_state_dict({k.removeprefix("module."): v for k, v in swa.items()
                         if k != "n_averaged"})  # fmt: skip
    with open(out / "history.csv", newline="") as f:
        history = list(csv.DictReader(f))
    assert float(history[-1]["val_rmse"]) == pytest.approx(score_split(net, data.val)[0]["rmse"])
    best = torch.load(out / "checkpoints" / "best.pt", weights_only=True)
    assert best["inference_weights"] == ("swa" if int(best["epoch"]) >= 1 else "ema")
    snapshots.clear()
    assert_resumes_identically(cfg, out, tmp_path / "copy")
    assert len(snapshots) == 1  # the resumed epoch 3 added its snapshot to the restored one


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "args, words",
    [
        (["--set", "data.window_features=true", "--set", "data.window=2"],
         "data.window_features needs data.window >= 3 (got 2)"),
        (["--set", "data.scaling=robust"], "data.scaling must be one of zscore, minmax"),
        (["--set", "train.schedule=step"], "train.schedule must be one of plateau, cosine"),
        (["--set", "train.swa_start=-1"], "train.swa_start must be >= 0"),
    ],
)  # fmt: skip
def test_bad_ingredient_settings_are_one_line_and_exit_2(tmp_path, cli, args, words):
    done = cli("train", "--preset", "tiny", "--out", tmp_path / "r", "--quiet", *args)
    assert done.code == 2 and len(done.err_lines) == 1 and words in done.err_lines[0]
    assert not (tmp_path / "r").exists()


def test_every_ingredient_is_a_set_key(cli):
    cfg = resolve_config(
        "tiny",
        overrides={
            "data": {"window_features": "true", "scaling": "minmax"},
            "train": {"schedule": "onecycle", "swa_start": "3", "clip": "0.5"},
        },
    )
    assert cfg.data.window_features is True and cfg.train.swa_start == 3
    assert cfg.train.clip == 0.5 and cfg.train.schedule == "onecycle"
    assert resolve_config("tiny").train.schedule == "plateau"  # today's, with its warmup
