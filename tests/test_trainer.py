"""The trainer on real FD001: cadence, outputs, fault injection, schedules, resume."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import grace_rul.trainer as trainer_mod
from grace_rul.balancers import BALANCERS
from grace_rul.cli import main
from grace_rul.config import resolve_config
from grace_rul.model import build_model
from grace_rul.stabilisers import ModelEma, seed_everything
from grace_rul.trainer import train, weight_decay_factor

torch.set_num_threads(1)


def tiny(**train):
    return resolve_config("tiny", overrides={"train": {"threads": 1, **train}})


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def initial_weights(cfg) -> dict[str, torch.Tensor]:
    seed_everything(cfg.seed)
    return build_model(cfg.model, max_rul=cfg.data.max_rul).state_dict()


def test_cadence_clip_step_ema_and_swapped_evaluation(tmp_path, monkeypatch):
    events: list[str] = []
    restored: list[bool] = []

    def spy(cls, name, tag):
        orig = getattr(cls, name)

        def wrapper(self, *a, **k):
            events.append(tag)
            return orig(self, *a, **k)

        monkeypatch.setattr(cls, name, wrapper)

    spy(torch.optim.AdamW, "step", "step")
    spy(trainer_mod.GradClipper, "clip", "clip")
    spy(ModelEma, "update", "ema")
    spy(torch.optim.lr_scheduler.ReduceLROnPlateau, "step", "plateau")
    orig_swapped = ModelEma.swapped

    @contextlib.contextmanager
    def swapped(self, model):
        before = {k: v.clone() for k, v in model.state_dict().items()}
        with orig_swapped(self, model):
            events.append("eval")
            inside = model.state_dict()
            assert any(not torch.equal(before[k], inside[k]) for k in before)  # EMA weights in
            yield
        after = model.state_dict()
        restored.append(all(torch.equal(before[k], after[k]) for k in before))

    monkeypatch.setattr(ModelEma, "swapped", swapped)
    train(tiny(epochs=3), tmp_path / "run", quiet=True)

    # Per batch: clip -> optimiser step -> EMA update, never another order.
    batch_events = [e for e in events if e in ("clip", "step", "ema")]
    assert batch_events == ["clip", "step", "ema"] * (len(batch_events) // 3)
    # Per epoch: evaluate (weights swapped back), then the plateau scheduler once.
    epoch_events = [e for e in events if e in ("eval", "plateau")]
    assert epoch_events[:6] == ["eval", "plateau"] * 3
    assert events.count("plateau") == 3
    assert restored[:3] == [True, True, True]


def test_end_to_end_small_preset_and_evaluate_reproduces(tmp_path, capsys):
    out = tmp_path / "fd001"
    args = ["train", "--dataset", "FD001", "--preset", "small", "--epochs", "3"]
    assert main([*args, "--out", str(out), "--quiet", "--threads", "2"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["params"] > 0
    for name in (
        "config.yaml", "metrics.json", "history.csv", "gradient_stats.csv", "grad_norms.npy",
        "predictions.csv", "trajectories.csv", "events.log", "checkpoints/best.pt",
        "checkpoints/last.pt",
    ):  # fmt: skip
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["test"]) >= {"rmse_last", "nasa_score", "mae", "health_accuracy"}
    assert metrics["epochs_run"] == 3 and metrics["params"] == printed["params"]
    assert 0 < metrics["test"]["rmse_last"] < 60
    history = rows(out / "history.csv")
    assert len(history) == 3 and len(rows(out / "gradient_stats.csv")) == 3
    val = [float(r["val_rmse"]) for r in history]
    assert min(val[1:]) < val[0]  # validation improved over the first epoch
    predictions = rows(out / "predictions.csv")  # one row per FD001 test unit, in unit order
    assert [int(r["unit"]) for r in predictions] == list(range(1, 101))
    steps = sum(int(r["steps"]) for r in rows(out / "gradient_stats.csv"))
    assert np.load(out / "grad_norms.npy").shape == (steps,)
    best = load(out / "checkpoints" / "best.pt")
    assert {"model", "ema", "inference", "normalizer", "config"} <= set(best)

    assert main(["evaluate", "--checkpoint", str(out / "checkpoints" / "best.pt")]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["test"] == metrics["test"]


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step")  # no step ran
def test_nan_loss_steps_are_skipped_and_leave_no_trace(tmp_path, monkeypatch):
    orig = trainer_mod.task_losses
    monkeypatch.setattr(trainer_mod, "task_losses", lambda *a: orig(*a) * float("nan"))
    cfg = tiny(epochs=1, max_bad_steps=10_000)
    metrics = train(cfg, tmp_path / "run", quiet=True)
    steps = -(-int(0.8 * 14_070) // cfg.train.batch_size)
    assert metrics["stability"]["skipped_steps"] >= steps - 1
    assert metrics["stability"]["first_bad_step"]["epoch"] == 1
    assert "loss" in metrics["stability"]["first_bad_step"]["what"]
    last = load(tmp_path / "run" / "checkpoints" / "last.pt")
    init = initial_weights(cfg)
    assert all(torch.equal(last["model"][k], init[k]) for k in init)  # weights untouched
    assert last["optimizer"]["state"] == {}  # optimiser untouched
    ema_shadow = last["ema"]["shadow"]
    assert all(torch.equal(ema_shadow[k], init[k]) for k in ema_shadow)  # EMA untouched
    assert last["balancer"]["step"].item() == 0  # GABA state untouched


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step")  # no step ran
def test_inf_gradient_steps_are_skipped_and_leave_no_trace(tmp_path, monkeypatch):
    orig = trainer_mod.balance_backward

    def poisoned(balancer, losses, shared, heads, **kw):
        result = orig(balancer, losses, shared, heads, **kw)
        shared[0].grad = torch.full_like(shared[0], float("inf"))
        return result

    monkeypatch.setattr(trainer_mod, "balance_backward", poisoned)
    cfg = tiny(epochs=1, max_bad_steps=10_000)
    metrics = train(cfg, tmp_path / "run", quiet=True)
    assert metrics["stability"]["first_bad_step"]["what"] == "gradients"
    last = load(tmp_path / "run" / "checkpoints" / "last.pt")
    init = initial_weights(cfg)
    assert all(torch.equal(last["model"][k], init[k]) for k in init)
    assert last["optimizer"]["state"] == {}
    assert last["balancer"]["step"].item() == 0  # GABA's EMA step restored after the skip


def test_repeated_non_finite_steps_stop_with_one_line(tmp_path, monkeypatch, capsys):
    orig = trainer_mod.task_losses
    monkeypatch.setattr(trainer_mod, "task_losses", lambda *a: orig(*a) * float("nan"))
    code = main(
        [
            "train",
            "--preset",
            "tiny",
            "--max-bad-steps",
            "3",
            "--out",
            str(tmp_path / "r"),
            "--quiet",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "consecutive" in err[0]


def test_lr_warmup_and_weight_decay_schedule(tmp_path, monkeypatch):
    assert weight_decay_factor(((100, 0.5), (200, 0.1)), 99) == 1.0
    assert weight_decay_factor(((100, 0.5), (200, 0.1)), 100) == 0.5
    assert weight_decay_factor(((100, 0.5), (200, 0.1)), 250) == 0.1
    # The GRACE balancer's schedule is applied by the trainer (milestones moved forward).
    grace_cls = trainer_mod.build_balancer("grace").__class__
    monkeypatch.setattr(grace_cls, "weight_decay_schedule", ((1, 0.5), (2, 0.1)))
    cfg = resolve_config(
        "tiny",
        overrides={
            "train": {"epochs": 4, "warmup_epochs": 3, "threads": 1},
            "balancer": {"name": "grace"},
        },
    )
    train(cfg, tmp_path / "run", quiet=True)
    history = rows(tmp_path / "run" / "history.csv")
    lr0 = cfg.train.lr
    lrs = [float(r["lr"]) for r in history]
    assert lrs == pytest.approx([lr0 * (0.1 + 0.9 * e / 3) for e in range(3)] + [lr0])
    wds = [float(r["weight_decay"]) for r in history]
    assert wds == pytest.approx([1e-4, 5e-5, 1e-5, 1e-5])


def test_same_seed_gives_identical_metrics(tmp_path):
    a = train(tiny(epochs=1), tmp_path / "a", quiet=True)
    b = train(tiny(epochs=1), tmp_path / "b", quiet=True)
    a.pop("seconds"), b.pop("seconds")
    assert a == b


def test_bf16_autocast_trains_on_cpu(tmp_path):
    metrics = train(tiny(epochs=1, precision="bf16"), tmp_path / "run", quiet=True)
    assert np.isfinite(metrics["test"]["rmse_last"])
    assert metrics["stability"]["skipped_steps"] == 0


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "grace_rul.cli", "train", "--preset", "tiny", "--threads", "1",
            "--deterministic", "--quiet", *args]  # fmt: skip


def test_sigkill_mid_epoch_then_resume_is_bit_identical(tmp_path):
    epochs = "6"
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    proc = subprocess.Popen(_cli("--epochs", epochs, "--out", str(killed)), env=env)
    history = killed / "history.csv"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if history.is_file() and len(rows(history)) >= 2:
            break
        time.sleep(0.02)
    time.sleep(0.3)  # into the third epoch
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "training finished before it could be killed"
    assert not (killed / "metrics.json").exists()
    subprocess.run(_cli("--epochs", epochs, "--out", str(killed), "--resume"), env=env, check=True)
    subprocess.run(_cli("--epochs", epochs, "--out", str(straight)), env=env, check=True)

    a, b = load(straight / "checkpoints" / "last.pt"), load(killed / "checkpoints" / "last.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(
        torch.equal(a["ema"]["shadow"][k], b["ema"]["shadow"][k]) for k in a["ema"]["shadow"]
    )

    def strip(path):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in rows(path)]

    assert strip(straight / "history.csv") == strip(killed / "history.csv")
    assert rows(straight / "gradient_stats.csv") == rows(killed / "gradient_stats.csv")
    ma = json.loads((straight / "metrics.json").read_text())
    mb = json.loads((killed / "metrics.json").read_text())
    assert ma["test"] == mb["test"]


def test_resume_refuses_other_settings_and_reports_missing_last(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--preset", "tiny", "--epochs", "1", "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    code = main(["train", "--preset", "tiny", "--dataset", "FD002", "--out", str(out), "--resume"])
    err = capsys.readouterr().err
    assert code == 2 and "data.dataset" in err
    (out / "checkpoints" / "last.pt").unlink()
    code = main(["train", "--preset", "tiny", "--out", str(out), "--resume", "--epochs", "2"])
    err = capsys.readouterr().err
    assert code == 2 and "last.pt" in err and "best.pt" in err


@pytest.mark.parametrize(
    "args, words",
    [
        (["--lr", "-0.1"], "train.lr"),
        (["--balancer", "nope"], "unknown balancer 'nope'"),
        (["--window", "400"], "longer than every training unit"),
        (["--balancer", "gaba", "--balancer-opt", "floor=0.7"], "floor"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, words):
    code = main(["train", "--preset", "tiny", "--out", str(tmp_path / "r"), "--quiet", *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and words in err[0] and err[0].startswith("grace: error:")


def test_non_empty_out_and_corrupt_data_dir(tmp_path, capsys):
    out = tmp_path / "r"
    out.mkdir()
    (out / "something").write_text("keep me")
    assert main(["train", "--preset", "tiny", "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (out / "something").read_text() == "keep me"
    data = tmp_path / "data"
    data.mkdir()
    assert (
        main(["train", "--preset", "tiny", "--data-dir", str(data), "--out", str(tmp_path / "x")])
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not found" in err[0]


@pytest.mark.parametrize("name", sorted(BALANCERS))
def test_every_balancer_trains_on_real_fd001(tmp_path, name):
    options = {"weights": [0.7, 0.3]} if name == "fixed" else {}
    cfg = resolve_config(
        "tiny",
        overrides={
            "train": {"epochs": 1, "threads": 1},
            "balancer": {"name": name, "options": options},
        },
    )
    metrics = train(cfg, tmp_path / name, quiet=True)
    assert np.isfinite(metrics["test"]["rmse_last"]) and metrics["balancer"] == name
    stats = rows(tmp_path / name / "gradient_stats.csv")[0]
    assert float(stats["gnorm_rul"]) > 0 and float(stats["gnorm_health"]) > 0  # logged for all
    assert float(stats["w_rul"]) > 0
    last = load(tmp_path / name / "checkpoints" / "last.pt")
    learnable = {"uncertainty": "log_var", "gradnorm": "task_weights"}
    if name in learnable:  # balancer parameters are in the optimiser and move
        assert not torch.allclose(
            last["balancer"][learnable[name]], torch.ones(2) * (name == "gradnorm")
        )
