"""The GRACE training loop, readable top to bottom (SPEC §5).

Per batch:  forward -> inner losses -> non-finite loss check -> balancer (per-task
            gradients at most once, written into .grad) -> unscale (fp16) ->
            non-finite gradient check -> joint-norm clip (pre-clip norm recorded)
            -> AdamW step -> balancer.after_step -> weight-EMA update.
Per epoch:  LR warmup position -> adaptive weight decay -> batches -> evaluate with
            EMA weights swapped in (and back) -> ReduceLROnPlateau (after warmup)
            -> best checkpoint -> early stopping -> history + gradient statistics
            rows -> ``last.pt`` (everything an exact resume needs).
At the end the best weights are restored and the test set is scored once.
"""

from __future__ import annotations

import csv
import io
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from tqdm import tqdm

from grace_rul.balancers import balance_backward, build_balancer
from grace_rul.checkpoint import (
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    load_checkpoint,
)
from grace_rul.config import PROTOCOL_LABELS, Config, config_from_dict
from grace_rul.data import load_cmapss, read_cmapss, unit_windows
from grace_rul.errors import GraceError
from grace_rul.evaluation import score_split, test_metrics
from grace_rul.losses import TASKS, task_losses
from grace_rul.model import build_model, count_parameters, predict
from grace_rul.stabilisers import (
    GradClipper,
    ModelEma,
    NonFiniteGuard,
    Precision,
    SpikeDetector,
    rng_state,
    seed_everything,
    set_rng_state,
)

HISTORY_COLUMNS = [
    "epoch",
    "lr",
    "weight_decay",
    "train_loss",
    "loss_rul",
    "loss_health",
    "val_rmse",
    "val_rmse_last",
    "val_mae",
    "val_nasa_score",
    "val_health_accuracy",
    "test_rmse",
    "selection_score",
    "is_best",
    "seconds",
    "skipped_steps",
    "spikes",
]
STATS_COLUMNS = [
    "epoch",
    "steps",
    "grad_samples",
    "loss_rul",
    "loss_health",
    "gnorm_rul",
    "gnorm_health",
    "cos_rul_health",
    "raw_w_rul",
    "raw_w_health",
    "w_rul",
    "w_health",
    "smooth_w_rul",
    "smooth_w_health",
    "grad_norm_mean",
    "grad_norm_max",
    "grad_norm_p90",
    "clip_fraction",
    "clip_threshold",
]
RUN_FILES = (
    "config.yaml",
    "metrics.json",
    "history.csv",
    "gradient_stats.csv",
    "grad_norms.npy",
    "predictions.csv",
    "trajectories.csv",
    "events.log",
    "checkpoints",
)
# Settings that may differ on resume: where/how fast it runs, and how long (extending a run).
RESUME_FREE_KEYS = {"train.device", "train.threads", "data.data_dir", "train.epochs"}


def train(
    cfg: Config,
    out_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """Train one run into ``out_dir`` and return its ``metrics.json`` content.

    ``resume`` continues exactly from ``out_dir/checkpoints/last.pt``; ``progress``
    shows a bar per epoch (default: when stderr is a terminal); ``quiet`` also
    silences event lines on stderr (they still go to ``events.log``).
    """
    out = Path(out_dir)
    _prepare_out_dir(out, cfg, resume=resume, overwrite=overwrite)
    show_bar = (sys.stderr.isatty() if progress is None else progress) and not quiet
    t = cfg.train

    def log(msg: str) -> None:
        with open(out / "events.log", "a") as f:
            f.write(msg + "\n")
        if not quiet:
            tqdm.write(msg, file=sys.stderr)

    # ---- setup: threads, seeds, data, model, balancer, optimiser, schedules, stabilisers
    if t.threads > 0:
        torch.set_num_threads(t.threads)
    device = torch.device(
        "cuda"
        if t.device == "auto" and torch.cuda.is_available()
        else ("cpu" if t.device == "auto" else t.device)
    )
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GraceError("train.device is cuda but no CUDA device is available")
    seed_everything(cfg.seed, deterministic=t.deterministic)
    data = load_cmapss(cfg.data, cfg.seed)
    x_train, rul_train, health_train = (
        data.train.x.to(device),
        data.train.rul.to(device),
        data.train.health.to(device),
    )
    model = build_model(
        cfg.model,
        n_features=len(data.feature_names),
        max_rul=cfg.data.max_rul,
        rul_mean=float(data.train.rul.mean()),
    )
    model.to(device)
    n_params = count_parameters(model)
    balancer = build_balancer(cfg.balancer.name, cfg.balancer.options).to(device)
    groups = [{"params": list(model.parameters())}]
    if list(balancer.parameters()):  # learnable balancer parameters train with the model, no decay
        groups.append({"params": list(balancer.parameters()), "weight_decay": 0.0})
    optimizer = torch.optim.AdamW(
        groups, lr=t.lr, betas=tuple(t.betas), weight_decay=t.weight_decay
    )
    warmup = (
        torch.optim.lr_scheduler.LinearLR(optimizer, 0.1, 1.0, total_iters=t.warmup_epochs)
        if t.warmup_epochs > 0
        else None
    )
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=t.plateau_factor, patience=t.plateau_patience, min_lr=t.min_lr
    )
    ema = ModelEma(model, decay=t.ema_decay, warmup=t.ema_warmup)
    clipper = GradClipper(max_norm=t.clip, mode=t.clip_mode)
    guard = NonFiniteGuard(max_consecutive=t.max_bad_steps)
    spikes = SpikeDetector(factor=t.spike_factor)
    precision = Precision(t.precision, device)
    order = torch.Generator().manual_seed(cfg.seed)  # data order, checkpointed for resume
    shared, heads = model.shared_parameters(), model.head_parameters()
    all_params = list(model.parameters()) + list(balancer.parameters())
    last_layer = model.last_shared_layer_params()

    start_epoch, step, stale_epochs, stopped = 0, 0, 0, False
    best_score, best_epoch = float("inf"), -1
    all_norms: list[float] = []
    seconds_before = 0.0
    if resume:
        state = _load_last(out)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if warmup is not None:
            warmup.load_state_dict(state["warmup"])
        plateau.load_state_dict(state["plateau"])
        ema.load_state_dict(state["ema"])
        balancer.load_state_dict(state["balancer"])
        clipper.load_state_dict(state["clipper"])
        guard.load_state_dict(state["guard"])
        spikes.load_state_dict(state["spikes"])
        precision.load_state_dict(state["precision"])
        set_rng_state(state["rng"], generator=order)
        start_epoch, step = state["epoch"] + 1, state["step"]
        best_score, best_epoch, stale_epochs = (
            state["best_score"],
            state["best_epoch"],
            state["stale_epochs"],
        )
        stopped = state["stopped"]
        all_norms, seconds_before = list(state["grad_norms"]), state["seconds"]
        _truncate_csv(out / "history.csv", state["epoch"])
        _truncate_csv(out / "gradient_stats.csv", state["epoch"])
        log(f"resumed from {out / 'checkpoints' / 'last.pt'} at epoch {start_epoch}")
    else:
        atomic_write_text(out / "config.yaml", cfg.to_yaml())
        _write_header(out / "history.csv", HISTORY_COLUMNS)
        _write_header(out / "gradient_stats.csv", STATS_COLUMNS)
        log(
            f"{cfg.data.dataset}: {len(data.train)} train / {len(data.val)} val windows, "
            f"{len(data.test)} test units; model '{cfg.preset}' with {n_params:,} parameters; "
            f"balancer {cfg.balancer.name}; device {device.type}; precision {precision.mode}"
        )
    started = time.perf_counter()
    base_wd = t.weight_decay
    n_batches = (len(x_train) + t.batch_size - 1) // t.batch_size
    val_rmse_shown = float("nan")

    for epoch in range(start_epoch, t.epochs if not stopped else start_epoch):
        epoch_start = time.perf_counter()
        epoch_lr = optimizer.param_groups[0]["lr"]  # set by the warmup at the end of the last epoch
        wd = base_wd * weight_decay_factor(balancer.weight_decay_schedule, epoch)
        optimizer.param_groups[0]["weight_decay"] = wd

        model.train()
        sums = torch.zeros(len(TASKS), dtype=torch.float64)
        stat = _EpochGradStats(len(TASKS))
        perm = torch.randperm(len(x_train), generator=order).to(device)
        bar = tqdm(
            range(n_batches),
            desc=f"epoch {epoch + 1}/{t.epochs}",
            leave=False,
            disable=not show_bar,
            file=sys.stderr,
            dynamic_ncols=True,
        )
        for b in bar:
            idx = perm[b * t.batch_size : (b + 1) * t.batch_size]
            optimizer.zero_grad(set_to_none=True)
            with precision.autocast():
                rul_pred, logits, z = model(x_train[idx])
            losses = task_losses(
                rul_pred, logits, rul_train[idx], health_train[idx], cfg.data.max_rul
            )
            if not guard.check_loss(losses):
                bad = [n for n, v in zip(TASKS, losses.tolist()) if not np.isfinite(v)]
                _skip(guard, log, epoch, b, "loss " + "+".join(bad))
                continue
            balancer_state = {k: v.detach().clone() for k, v in balancer.state_dict().items()}
            result = balance_backward(
                balancer,
                losses,
                shared,
                heads,
                representation=z,
                grad_source=cfg.balancer.grad_source,
                last_layer_params=last_layer,
                want_task_grads=step % t.grad_stats_every == 0,
                scale=precision.scale,
            )
            precision.unscale_(optimizer)
            if not result.finite or not guard.check_grads(all_params):
                balancer.load_state_dict(balancer_state)  # a skipped step leaves no trace
                optimizer.zero_grad(set_to_none=True)
                precision.backoff()  # fp16: shrink the loss scale after an overflow
                _skip(guard, log, epoch, b, "gradients")
                continue
            norm = clipper.clip(all_params)
            all_norms.append(norm)
            precision.step(optimizer)
            precision.update()
            balancer.after_step()
            ema.update(model)
            guard.record_good()
            step += 1

            loss_values = losses.detach().double().cpu()
            sums += loss_values
            stat.add(loss_values, result)
            if spikes.update(float(loss_values.sum()), epoch, b):
                log(
                    f"loss spike at epoch {epoch + 1} batch {b}: {float(loss_values.sum()):.4g} "
                    f"> {t.spike_factor}x running level {spikes.level:.4g}"
                )
            if show_bar:
                w = result.combination.weights.tolist()
                bar.set_postfix(
                    loss=f"{float(loss_values.sum()):.3g}",
                    lam="/".join(f"{x:.2f}" for x in w),
                    val_rmse=f"{val_rmse_shown:.2f}",
                )
        bar.close()
        good_steps = stat.steps
        if good_steps:
            balancer.end_epoch(epoch, (sums / good_steps).float())

        # ---- evaluate with the EMA weights swapped in (and always swapped back)
        with ema.swapped(model):
            val_all, _, _ = score_split(model, data.val)
            val_last, _, _ = score_split(model, data.val_last)
            test_now = score_split(model, data.test)[0] if t.protocol == "paper" else None
        val = val_last if t.select == "last" else val_all
        score = test_now["rmse"] if test_now is not None else val["rmse"]
        val_rmse_shown = val["rmse"]
        if warmup is not None and epoch < t.warmup_epochs:
            warmup.step()  # LR position of the next epoch: lr0 * (0.1 + 0.9 e / warmup)
        if epoch + 1 >= t.warmup_epochs:
            plateau.step(score)
        is_best = score < best_score
        if is_best:
            best_score, best_epoch, stale_epochs = score, epoch, 0
            val_record = {**val, "rmse_all": val_all["rmse"], "rmse_last": val_last["rmse"]}
            _save_best(out, model, ema, data, cfg, epoch, val_record)
        else:
            stale_epochs += 1

        clip_summary = clipper.epoch_summary()
        if clip_summary["hint"]:
            log(clip_summary["hint"])
        mean_losses = (sums / max(good_steps, 1)).tolist()
        stats_row = stat.row()
        _append_row(
            out / "history.csv",
            HISTORY_COLUMNS,
            {
                "epoch": epoch + 1,
                "lr": epoch_lr,
                "weight_decay": wd,
                "train_loss": sum(mean_losses),
                "loss_rul": mean_losses[0],
                "loss_health": mean_losses[1],
                "val_rmse": val_all["rmse"],
                "val_rmse_last": val_last["rmse"],
                "val_mae": val["mae"],
                "val_nasa_score": val["nasa_score"],
                "val_health_accuracy": val["health_accuracy"],
                "test_rmse": test_now["rmse"] if test_now is not None else "",
                "selection_score": score,
                "is_best": int(is_best),
                "seconds": time.perf_counter() - epoch_start,
                "skipped_steps": guard.total_skipped,
                "spikes": len(spikes.spikes),
            },
        )
        _append_row(
            out / "gradient_stats.csv",
            STATS_COLUMNS,
            {
                "epoch": epoch + 1,
                "steps": good_steps,
                **stats_row,
                **clip_summary_row(clip_summary, t.clip),
            },
        )
        stopped = stale_epochs >= t.early_stop_patience
        atomic_torch_save(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "warmup": warmup.state_dict() if warmup is not None else None,
                "plateau": plateau.state_dict(),
                "ema": ema.state_dict(),
                "balancer": balancer.state_dict(),
                "clipper": clipper.state_dict(),
                "guard": guard.state_dict(),
                "spikes": spikes.state_dict(),
                "precision": precision.state_dict(),
                "rng": rng_state(generator=order),
                "epoch": epoch,
                "step": step,
                "best_score": best_score,
                "best_epoch": best_epoch,
                "stale_epochs": stale_epochs,
                "stopped": stopped,
                "grad_norms": all_norms,
                "seconds": seconds_before + time.perf_counter() - started,
                "config": cfg.to_dict(),
            },
            out / "checkpoints" / "last.pt",
        )
        if not quiet:
            tqdm.write(
                f"epoch {epoch + 1}/{t.epochs}  loss {sum(mean_losses):.4g}  "
                f"lambda {stats_row['w_rul']:.3f}/{stats_row['w_health']:.3f}  "
                f"val_rmse {val['rmse']:.3f}{'  *' if is_best else ''}",
                file=sys.stderr,
            )
        if stopped:
            log(
                f"early stopping after epoch {epoch + 1}: no improvement for "
                f"{t.early_stop_patience} epochs; restoring epoch {best_epoch + 1}"
            )
            break

    # ---- restore the best weights (model + EMA) and score the test set once
    best = load_checkpoint(out / "checkpoints" / "best.pt")
    model.load_state_dict(best["model"])
    ema.load_state_dict(best["ema"])
    with ema.swapped(model):
        test, rul_pred, health_pred = score_split(model, data.test)
        trajectories = _trajectories(model, cfg, data)
    _write_predictions(out / "predictions.csv", data.test, rul_pred, health_pred)
    _write_rows(out / "trajectories.csv", ["unit", "cycle", "true_rul", "pred_rul"], trajectories)
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(all_norms, dtype=np.float32))
    atomic_write_bytes(out / "grad_norms.npy", buffer.getvalue())
    history = _read_csv(out / "history.csv")
    metrics = {
        "dataset": cfg.data.dataset,
        "balancer": cfg.balancer.name,
        "seed": cfg.seed,
        "preset": cfg.preset,
        "protocol": t.protocol,
        "protocol_label": PROTOCOL_LABELS[t.protocol],
        "select": t.select,
        "precision": precision.mode,
        "val": {k: v for k, v in best["metrics"].items() if k != "confusion"},
        "test": test_metrics(test),
        "best_epoch": best_epoch + 1,
        "epochs_run": len(history),
        "params": n_params,
        "seconds": round(seconds_before + time.perf_counter() - started, 2),
        "stability": {
            "skipped_steps": guard.total_skipped,
            "first_bad_step": (
                dict(zip(("epoch", "batch", "what"), guard.first_bad)) if guard.first_bad else None
            ),
            "spikes": len(spikes.spikes),
        },
    }
    atomic_write_json(out / "metrics.json", metrics)
    log(
        f"done: best epoch {best_epoch + 1}, test rmse_last {metrics['test']['rmse_last']:.3f}, "
        f"NASA score {metrics['test']['nasa_score']:.1f} ({PROTOCOL_LABELS[t.protocol]})"
    )
    return metrics


def weight_decay_factor(schedule: tuple[tuple[int, float], ...], epoch: int) -> float:
    """Adaptive weight decay: the factor of the last milestone reached (0-based ``epoch``).

    GRACE's schedule ``((100, 0.5), (200, 0.1))`` gives x1 for epochs 0-99, x0.5 for
    100-199 and x0.1 from 200 on (factors of the base decay, not cumulative).
    """
    factor = 1.0
    for milestone, value in schedule:
        if epoch >= milestone:
            factor = value
    return factor


class _EpochGradStats:
    """Per-epoch means of task losses, task-gradient norms, cosines and weights."""

    def __init__(self, k: int) -> None:
        self.steps, self.samples = 0, 0
        self.weights = torch.zeros(k, dtype=torch.float64)
        self.raw = torch.zeros(k, dtype=torch.float64)
        self.smooth = torch.zeros(k, dtype=torch.float64)
        self.has_smooth = False
        self.losses = torch.zeros(k, dtype=torch.float64)
        self.norms = torch.zeros(k, dtype=torch.float64)
        self.cos = 0.0

    def add(self, losses: torch.Tensor, result) -> None:
        comb = result.combination
        self.steps += 1
        self.losses += losses
        self.weights += comb.weights.detach().double().cpu()
        self.raw += (comb.raw if comb.raw is not None else comb.weights).detach().double().cpu()
        if comb.smoothed is not None:
            self.has_smooth = True
            self.smooth += comb.smoothed.detach().double().cpu()
        if result.task_norms is not None:
            self.samples += 1
            self.norms += result.task_norms.detach().double().cpu()
            self.cos += result.cosine

    def row(self) -> dict[str, Any]:
        n, s = max(self.steps, 1), self.samples
        row: dict[str, Any] = {"grad_samples": s}
        for i, task in enumerate(TASKS):
            row[f"loss_{task}"] = float(self.losses[i] / n)
            row[f"gnorm_{task}"] = float(self.norms[i] / s) if s else ""
            row[f"raw_w_{task}"] = float(self.raw[i] / n)
            row[f"w_{task}"] = float(self.weights[i] / n)
            row[f"smooth_w_{task}"] = float(self.smooth[i] / n) if self.has_smooth else ""
        row["cos_rul_health"] = self.cos / s if s else ""
        return row


def clip_summary_row(summary: dict[str, float], threshold: float) -> dict[str, Any]:
    """The clipping columns of a gradient-statistics row."""
    return {
        "grad_norm_mean": summary["mean"],
        "grad_norm_max": summary["max"],
        "grad_norm_p90": summary["p90"],
        "clip_fraction": summary["fraction"],
        "clip_threshold": threshold,
    }


def _skip(guard: NonFiniteGuard, log, epoch: int, batch: int, what: str) -> None:
    first = guard.first_bad is None
    guard.record_bad(epoch + 1, batch, what)  # raises TrainingDiverged after too many in a row
    if first:
        log(f"non-finite {what} at epoch {epoch + 1} batch {batch}: step skipped")


def _trajectories(model, cfg: Config, data) -> list[list[Any]]:
    """Full-life predictions of the two test units with the longest records."""
    raw = read_cmapss(cfg.data.dataset, cfg.data.data_dir)
    lengths = raw.test.groupby("unit")["cycle"].max().sort_values(ascending=False)
    rows: list[list[Any]] = []
    for unit in lengths.index[:2]:
        split = unit_windows(raw, data.normalizer, cfg.data, int(unit), split="test")
        pred, _ = predict(model, split.x)
        rows += [
            [int(unit), int(c), float(y), float(p)]
            for c, y, p in zip(split.cycle.tolist(), split.rul.tolist(), pred.tolist())
        ]
    return rows


def _save_best(out: Path, model, ema: ModelEma, data, cfg: Config, epoch: int, val: dict) -> None:
    atomic_torch_save(
        {
            "model": model.state_dict(),
            "ema": ema.state_dict(),
            "inference": ema.averaged_state_dict(model),
            "normalizer": data.normalizer.to_dict(),
            "feature_names": list(data.feature_names),
            "config": cfg.to_dict(),
            "epoch": epoch,
            "metrics": val,
        },
        out / "checkpoints" / "best.pt",
    )


def _load_last(out: Path) -> dict[str, Any]:
    path = out / "checkpoints" / "last.pt"
    state = load_checkpoint(path)
    needed = {"model", "optimizer", "plateau", "ema", "balancer", "rng", "epoch"}
    if not needed <= set(state):
        raise GraceError(
            f"checkpoint {path} is not a resumable last.pt (missing {sorted(needed - set(state))})"
        )
    return state


def _prepare_out_dir(out: Path, cfg: Config, *, resume: bool, overwrite: bool) -> None:
    """Create/validate the run directory; refuse to mix runs or resume with other settings."""
    if resume:
        saved = out / "config.yaml"
        if not saved.is_file():
            raise GraceError(f"cannot resume: {saved} not found (is {out} a GRACE run directory?)")
        try:
            old = config_from_dict(yaml.safe_load(saved.read_text()))
        except (yaml.YAMLError, TypeError, AttributeError):
            raise GraceError(f"cannot resume: {saved} is not a valid config") from None
        diff = sorted(
            k for k in _config_diff(old.to_dict(), cfg.to_dict()) if k not in RESUME_FREE_KEYS
        )
        if diff:
            raise GraceError(
                f"cannot resume {out}: settings differ from the saved run: {', '.join(diff)}"
            )
        return
    if out.exists() and not out.is_dir():
        raise GraceError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise GraceError(
                f"--out {out} is not empty (use --overwrite to replace a run, --resume to continue)"
            )
        for name in RUN_FILES:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    try:
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise GraceError(f"--out {out} is not writable ({exc.strerror})") from None


def _config_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    keys = []
    for k in sorted(set(a) | set(b)):
        name = f"{prefix}{k}"
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict) and not name.endswith("options"):
            keys += _config_diff(va, vb, name + ".")
        elif va != vb:
            keys.append(name)
    return keys


def _write_header(path: Path, columns: list[str]) -> None:
    atomic_write_text(path, ",".join(columns) + "\n")


def _append_row(path: Path, columns: list[str], row: dict[str, Any]) -> None:
    with open(path, "a", newline="") as f:
        csv.DictWriter(f, columns).writerow(row)
        f.flush()


def _write_rows(path: Path, columns: list[str], rows: list[list[Any]]) -> None:
    lines = [",".join(columns)] + [",".join(str(v) for v in r) for r in rows]
    atomic_write_text(path, "\n".join(lines) + "\n")


def _write_predictions(path: Path, split, rul_pred: np.ndarray, health_pred: np.ndarray) -> None:
    rows = [
        [int(u), float(y), float(p), int(h), int(hp)]
        for u, y, p, h, hp in zip(
            split.unit.tolist(),
            split.rul.tolist(),
            rul_pred.tolist(),
            split.health.tolist(),
            health_pred.tolist(),
        )
    ]
    _write_rows(path, ["unit", "true_rul", "pred_rul", "true_health", "pred_health"], rows)


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _truncate_csv(path: Path, last_epoch: int) -> None:
    """Drop rows written after the checkpointed epoch (a kill between the row and last.pt)."""
    rows = _read_csv(path)
    with open(path, newline="") as f:
        header = f.readline().strip().split(",")
    kept = [r for r in rows if int(r["epoch"]) <= last_epoch + 1]
    lines = [",".join(header)] + [",".join(r[c] for c in header) for r in kept]
    atomic_write_text(path, "\n".join(lines) + "\n")
