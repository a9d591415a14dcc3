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
from torch.overrides import TorchFunctionMode

from conftest import QUIET, SHORT, tiny_config
from grace_rul import trainer
from grace_rul.backbones import build_model
from grace_rul.balancers import BALANCERS, balance_backward
from grace_rul.config import DEFAULT_PRESET
from grace_rul.data import load_dataset
from grace_rul.errors import GraceError
from grace_rul.losses import task_losses
from grace_rul.resolve import resolve_config
from grace_rul.stabilisers import GradClipper, ModelEma, seed_everything
from grace_rul.trainer import RUL_BIAS_WINDOWS, bias_windows, train, weight_decay_factor

tiny = tiny_config


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def components(path: Path) -> dict:
    return load(path)["components"]


def initial_weights(cfg) -> dict[str, torch.Tensor]:
    seed_everything(cfg.seed)
    data = load_dataset(cfg.data, cfg.seed)
    model = build_model(cfg.model, max_rul=cfg.data.max_rul)
    model.init_rul_bias(bias_windows(data.train.x), float(data.train.rul.mean()))
    return model.state_dict()


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
    spy(GradClipper, "clip", "clip")
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
    train(tiny(epochs=2), tmp_path / "run", execution=QUIET)

    # Per batch: clip -> optimiser step -> EMA update, never another order.
    batch_events = [e for e in events if e in ("clip", "step", "ema")]
    assert batch_events == ["clip", "step", "ema"] * (len(batch_events) // 3)
    # Per epoch: evaluate (weights swapped back), then the plateau scheduler once, and only
    # from the first epoch after warmup (tiny: 1 warmup epoch, so epoch index 1 only).
    epoch_events = [e for e in events if e in ("eval", "plateau")]
    assert epoch_events[:3] == ["eval", "eval", "plateau"]
    assert events.count("plateau") == 1
    assert restored[:2] == [True, True]


def test_end_to_end_default_preset_and_evaluate_reproduces(tmp_path, cli):
    out = tmp_path / "fd001"
    args = ["train", "--dataset", "FD001", "--epochs", "2"]  # no --preset: the default recipe
    done = cli(*args, "--out", out, "--quiet", "--threads", "2")
    assert done.code == 0
    printed = json.loads(done.out)
    assert printed["params"] > 0
    for name in (
        "config.yaml", "metrics.json", "history.csv", "gradient_stats.csv", "grad_norms.npy",
        "predictions.csv", "trajectories.csv", "events.log", "checkpoints/best.pt",
        "checkpoints/last.pt",
    ):  # fmt: skip
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["preset"] == DEFAULT_PRESET != "paper"
    assert set(metrics["test"]) >= {"rmse_last", "nasa_score", "mae", "health_accuracy"}
    assert set(metrics["intervals"]) == {"0.8", "0.9"}
    assert metrics["epochs_run"] == 2 and metrics["params"] == printed["params"]
    assert 0 < metrics["test"]["rmse_last"] < 60
    history = rows(out / "history.csv")
    assert len(history) == 2 and len(rows(out / "gradient_stats.csv")) == 2
    val = [float(r["val_rmse"]) for r in history]
    assert min(val[1:]) < val[0]  # validation improved over the first epoch
    predictions = rows(out / "predictions.csv")  # one row per FD001 test unit, in unit order
    assert [int(r["unit"]) for r in predictions] == list(range(1, 101))
    steps = sum(int(r["steps"]) for r in rows(out / "gradient_stats.csv"))
    assert np.load(out / "grad_norms.npy").shape == (steps,)
    best = load(out / "checkpoints" / "best.pt")
    assert {"model", "ema", "inference", "normalizer", "config"} <= set(best)
    assert "threads" not in best["config"]["train"] and "data_dir" not in best["config"]["data"]

    evaluated = cli("evaluate", "--model", out / "checkpoints" / "best.pt")
    assert evaluated.code == 0
    assert json.loads(evaluated.out)["test"] == metrics["test"]
    assert json.loads(evaluated.out)["intervals"] == metrics["intervals"]


# Tensor calls that make the host wait for a CUDA device.
HOST_READS = {"__bool__", "__int__", "__float__", "__index__", "__format__", "item", "tolist",
              "numpy", "cpu"}  # fmt: skip


def test_a_training_step_reads_the_device_once(tmp_path, monkeypatch):
    """The skip decision is the one host sync of a step; what is only reported (losses,
    weights, norms, clip statistics, spikes) is read back at the end of the epoch."""
    reads: list[str] = []
    in_batches = [False]

    class Reads(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            name = getattr(func, "__name__", "")
            if in_batches[0] and (name in HOST_READS or (name == "to" and "cpu" in args[1:])):
                reads.append(name)
            return func(*args, **(kwargs or {}))

    class Bar(trainer.tqdm):
        def __iter__(self):
            in_batches[0] = True
            yield from super().__iter__()
            in_batches[0] = False

    monkeypatch.setattr(trainer, "tqdm", Bar)
    cfg = resolve_config(  # equal: a balancer without host work of its own
        "tiny",
        overrides={"train": {"epochs": 1, "batch_size": 2048}, "balancer": {"name": "equal"},
                   "data": SHORT},
    )  # fmt: skip
    with Reads():
        train(cfg, tmp_path / "run", execution=QUIET)
    steps = int(rows(tmp_path / "run" / "gradient_stats.csv")[0]["steps"])
    assert steps > 1 and reads == ["__bool__"] * steps


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step")  # no step ran
def test_nan_loss_steps_are_skipped_and_leave_no_trace(tmp_path):
    cfg = tiny(epochs=1, max_bad_steps=10_000)
    metrics = train(
        cfg, tmp_path / "run", execution=QUIET, loss_fn=lambda *a: task_losses(*a) * float("nan")
    )
    steps = -(-int(0.8 * 14_070) // cfg.train.batch_size)
    assert metrics["stability"]["skipped_steps"] >= steps - 1
    assert metrics["stability"]["first_bad_step"]["epoch"] == 1
    assert "loss" in metrics["stability"]["first_bad_step"]["what"]
    last = components(tmp_path / "run" / "checkpoints" / "last.pt")
    init = initial_weights(cfg)
    assert all(torch.equal(last["model"][k], init[k]) for k in init)  # weights untouched
    assert last["optimizer"]["state"] == {}  # optimiser untouched
    ema_shadow = last["ema"]["shadow"]
    assert all(torch.equal(ema_shadow[k], init[k]) for k in ema_shadow)  # EMA untouched
    assert last["balancer"]["step"].item() == 0  # GABA state untouched


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step")  # no step ran
def test_inf_gradient_steps_are_skipped_and_leave_no_trace(tmp_path):
    def poisoned(balancer, losses, shared, heads, **kw):
        result = balance_backward(balancer, losses, shared, heads, **kw)
        shared[0].grad = torch.full_like(shared[0], float("inf"))
        return result

    cfg = tiny(epochs=1, max_bad_steps=10_000)
    metrics = train(cfg, tmp_path / "run", execution=QUIET, backward_fn=poisoned)
    assert metrics["stability"]["first_bad_step"]["what"] == "gradients"
    last = components(tmp_path / "run" / "checkpoints" / "last.pt")
    init = initial_weights(cfg)
    assert all(torch.equal(last["model"][k], init[k]) for k in init)
    assert last["optimizer"]["state"] == {}
    assert last["balancer"]["step"].item() == 0  # GABA's EMA step restored after the skip


def test_repeated_non_finite_steps_stop_with_one_line(tmp_path):
    with pytest.raises(GraceError) as caught:
        train(
            tiny(max_bad_steps=3),
            tmp_path / "r",
            execution=QUIET,
            loss_fn=lambda *a: task_losses(*a) * float("nan"),
        )
    message = str(caught.value)
    assert "consecutive" in message and "\n" not in message


def test_clipping_sees_the_model_parameters_only(tmp_path, monkeypatch):
    """Learnable balancer parameters (uncertainty's log-variances) are not in the clip norm."""
    clipped: list[set[int]] = []
    orig = GradClipper.clip

    def spy(self, params):
        params = list(params)
        clipped.append({id(p) for p in params})
        return orig(self, params)

    monkeypatch.setattr(GradClipper, "clip", spy)
    cfg = resolve_config(
        "tiny",
        overrides={"train": {"epochs": 1}, "balancer": {"name": "uncertainty"}, "data": SHORT},
    )
    train(cfg, tmp_path / "run", execution=QUIET)
    model = build_model(cfg.model)
    assert clipped and all(len(ids) == len(list(model.parameters())) for ids in clipped)
    log_var = components(tmp_path / "run" / "checkpoints" / "last.pt")["balancer"]["log_var"]
    assert not torch.equal(log_var, torch.zeros(2))  # still trained, just not clipped


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_rul_head_starts_at_the_mean_training_target(preset):
    cfg = resolve_config(preset)
    data = load_dataset(cfg.data, cfg.seed)
    mean = float(data.train.rul.mean())
    model = build_model(cfg.model, max_rul=cfg.data.max_rul)
    x = bias_windows(data.train.x)
    assert RUL_BIAS_WINDOWS <= len(x) < 2 * RUL_BIAS_WINDOWS
    model.init_rul_bias(x, mean)
    with torch.no_grad():
        after = float(model.eval()(x)[0].mean())
        held_out = float(model(data.val.x)[0].mean())
    assert after == pytest.approx(mean, abs=1e-3)
    assert abs(held_out - mean) < 15  # not fitted to those windows only
    assert 60 < mean < 110


def test_lr_warmup_and_weight_decay_schedule(tmp_path):
    assert weight_decay_factor(((100, 0.5), (200, 0.1)), 99) == 1.0
    assert weight_decay_factor(((100, 0.5), (200, 0.1)), 100) == 0.5
    assert weight_decay_factor(((100, 0.5), (200, 0.1)), 250) == 0.1
    # The schedule is a training setting applied by the trainer (milestones moved forward).
    cfg = resolve_config(
        "tiny",
        overrides={
            "train": {
                "epochs": 3,
                "warmup_epochs": 2,
                "weight_decay_schedule": [[1, 0.5], [2, 0.1]],
            },
            "balancer": {"name": "grace"},
            "data": SHORT,
        },
    )
    train(cfg, tmp_path / "run", execution=QUIET)
    history = rows(tmp_path / "run" / "history.csv")
    lr0 = cfg.train.lr
    lrs = [float(r["lr"]) for r in history]
    assert lrs == pytest.approx([lr0 * (0.1 + 0.9 * e / 2) for e in range(2)] + [lr0])
    wds = [float(r["weight_decay"]) for r in history]
    assert wds == pytest.approx([1e-4, 5e-5, 1e-5])


def test_same_seed_gives_identical_metrics(tmp_path):
    a = train(tiny(epochs=1), tmp_path / "a", execution=QUIET)
    b = train(tiny(epochs=1), tmp_path / "b", execution=QUIET)
    for timing in ("seconds", "cpu_seconds"):
        a.pop(timing), b.pop(timing)
    assert a == b


def test_bf16_autocast_trains_on_cpu(tmp_path):
    with pytest.warns(UserWarning, match="emulated") if not _bf16_native() else _no_warning():
        cfg = resolve_config(  # short windows: bf16 is emulated (slow) on CPUs without it
            "tiny", overrides={"train": {"epochs": 1, "precision": "bf16"}, "data": {"window": 10}}
        )
        metrics = train(cfg, tmp_path / "run", execution=QUIET)
    assert metrics["precision"] == "bf16"
    assert np.isfinite(metrics["test"]["rmse_last"])
    assert metrics["stability"]["skipped_steps"] == 0


def _bf16_native() -> bool:
    from grace_rul.stabilisers.precision import bf16_native

    return bf16_native("cpu")


@contextlib.contextmanager
def _no_warning():
    yield


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "grace_rul.cli", "train", "--preset", "tiny", "--threads", "1",
            "--set", "train.deterministic=true", "--set", "data.window=10", "--quiet",
            *args]  # fmt: skip


def test_sigkill_mid_epoch_then_resume_is_bit_identical(tmp_path):
    epochs = "4"
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

    a = components(straight / "checkpoints" / "last.pt")
    b = components(killed / "checkpoints" / "last.pt")
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


def test_resume_refuses_other_settings_and_reports_missing_last(tmp_path, cli):
    out = tmp_path / "run"
    assert cli("train", "--preset", "tiny", "--epochs", "1", "--out", out, "--quiet").code == 0
    # Execution settings (threads, device, data directory) are free to change on resume.
    differ = cli("train", "--preset", "tiny", "--dataset", "FD002", "--threads", "2",
                 "--out", out, "--resume")  # fmt: skip
    assert differ.code == 2 and "data.dataset" in differ.err and "threads" not in differ.err
    (out / "checkpoints" / "last.pt").unlink()
    missing = cli("train", "--preset", "tiny", "--out", out, "--resume", "--epochs", "2")
    assert missing.code == 2 and "last.pt" in missing.err and "best.pt" in missing.err


@pytest.mark.parametrize(
    "args, words",
    [
        (["--lr", "-0.1"], "train.lr"),
        (["--balancer", "nope"], "unknown balancer 'nope'"),
        (["--set", "data.window=400"], "longer than every training unit"),
        (["--balancer", "gaba", "--set", "balancer.options.floor=0.7"], "floor"),
        (["--set", "train.lrr=0.1"], "did you mean: train.lr"),
        (["--set", "train.epochs=many"], "'train.epochs' has an invalid value"),
        (["--set", "train.epochs"], "expects KEY=VALUE"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, cli, args, words):
    done = cli("train", "--preset", "tiny", "--out", tmp_path / "r", "--quiet", *args)
    assert done.code == 2 and len(done.err_lines) == 1 and words in done.err_lines[0]
    assert done.err_lines[0].startswith("grace: error:")


def test_non_empty_out_and_corrupt_data_dir(tmp_path, cli):
    out = tmp_path / "r"
    out.mkdir()
    (out / "something").write_text("keep me")
    assert cli("train", "--preset", "tiny", "--out", out).code == 2
    assert (out / "something").read_text() == "keep me"
    data = tmp_path / "data"
    data.mkdir()
    done = cli("train", "--preset", "tiny", "--data-dir", data, "--out", tmp_path / "x")
    assert done.code == 2 and len(done.err_lines) == 1 and "not found" in done.err_lines[0]


@pytest.mark.parametrize("name", sorted(BALANCERS))
def test_every_balancer_trains_on_real_fd001(tmp_path, name):
    options = {"weights": [0.7, 0.3]} if name == "fixed" else {}
    cfg = resolve_config(
        "tiny",
        overrides={
            "train": {"epochs": 1, "batch_size": 2048},  # 7 steps: enough to move every weight
            "balancer": {"name": name, "options": options},
            "data": SHORT,
        },
    )
    metrics = train(cfg, tmp_path / name, execution=QUIET)
    assert np.isfinite(metrics["test"]["rmse_last"]) and metrics["balancer"] == name
    stats = rows(tmp_path / name / "gradient_stats.csv")[0]
    assert float(stats["gnorm_rul"]) > 0 and float(stats["gnorm_health"]) > 0  # logged for all
    w = float(stats["w_rul"]), float(stats["w_health"])  # logged; MGDA may put 0 on RUL
    assert min(w) >= 0 and sum(w) > 0
    last = components(tmp_path / name / "checkpoints" / "last.pt")
    learnable = {"uncertainty": "log_var", "gradnorm": "task_weights"}
    if name in learnable:  # balancer parameters are in the optimiser and move
        assert not torch.allclose(
            last["balancer"][learnable[name]], torch.ones(2) * (name == "gradnorm")
        )
    if name == "famo":  # the post-step forward reached after_step: the logits moved
        assert int(last["balancer"]["adam_step"]) > 0
        assert not torch.equal(last["balancer"]["logits"], torch.zeros(2))


def test_famo_resume_between_epochs_is_bit_identical(tmp_path):
    """FAMO's extra post-step forward draws dropout masks and moves its buffers: both are in
    last.pt, so stopping after an epoch and resuming equals training straight through."""

    def cfg(epochs: int):
        return resolve_config(
            "tiny",
            overrides={
                "train": {"epochs": epochs, "batch_size": 2048},
                "model": {"dropout": 0.1},
                "balancer": {"name": "famo"},
                "data": SHORT,
            },
        )

    train(cfg(2), tmp_path / "straight", execution=QUIET)
    train(cfg(1), tmp_path / "resumed", execution=QUIET)
    train(cfg(2), tmp_path / "resumed", execution=QUIET, resume=True)
    a = components(tmp_path / "straight" / "checkpoints" / "last.pt")
    b = components(tmp_path / "resumed" / "checkpoints" / "last.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(torch.equal(a["balancer"][k], b["balancer"][k]) for k in a["balancer"])
    assert not torch.equal(a["balancer"]["logits"], torch.zeros(2))
