"""The GRACE training loop, readable top to bottom in :func:`train` (docs/design.md §5).

Per batch:  forward -> task losses -> balancer (per-task gradients at most once,
            written into .grad) -> unscale (fp16) -> non-finite check of the losses and
            gradients (the step's one host sync) -> joint-norm clip of the model's
            parameters (pre-clip norm recorded) -> AdamW step -> balancer.after_step (FAMO:
            with the same batch's losses after the step, one no-grad forward) -> weight EMA.
            What is only reported (losses, weights, norms) stays on the device.
Per epoch:  weight decay from the schedule -> batches -> the epoch's statistics read back
            once, loss spikes found among its steps -> evaluate with EMA weights
            swapped in (and back) -> LR warmup position -> ReduceLROnPlateau (once
            warmup is over) -> best checkpoint -> early stopping -> history and
            gradient-statistics rows -> ``last.pt`` (everything an exact resume needs).
At the end the best weights are restored and the test set is scored once.

LR schedules (``train.schedule``; epochs e counted from 0, W = ``train.warmup_epochs``,
E = ``train.epochs``, lr0 = ``train.lr``):

* ``plateau`` (default): epoch e < W trains at ``lr0 (0.1 + 0.9 e / W)`` (``LinearLR``
  stepped at the end of each warmup epoch), then ``ReduceLROnPlateau`` on the selection
  score, stepped once per epoch from the end of epoch W on.
* ``cosine``: the same warmup, then ``CosineAnnealingLR`` stepped once per epoch: epoch
  e >= W trains at ``min_lr + (lr0 - min_lr) (1 + cos(pi (e - W) / (E - W))) / 2``.
* ``onecycle``: ``OneCycleLR`` stepped after every applied optimiser step over
  ``E x batches per epoch`` steps (torch's defaults: 30 % cosine warm-up from lr0 / 25
  up to lr0, cosine annealing to lr0 / 25 / 1e4; momentum not cycled, so AdamW's betas
  stay ``train.betas``); ``train.warmup_epochs`` and ``min_lr`` are not used.

``cosine`` and ``onecycle`` are shaped by ``train.epochs``, so a resume cannot extend them.

Stochastic weight averaging (``train.swa_start`` = s > 0, ``torch.optim.swa_utils``):
from epoch s on (counted from 1, as in the logs) the live weights are snapshotted into an
``AveragedModel`` once per epoch, after its batches; its weights are the equal-weight mean
of the snapshots taken so far. From that epoch on the averaged weights replace the EMA
weights wherever the EMA's would be used: they are evaluated (validation, selection,
plateau, early stopping), saved as the best checkpoint's inference weights and scored
on the test set at the end (and exported by ``grace export``). Before epoch s everything
is as without SWA. The EMA keeps updating every step but is not evaluated once SWA has
started. The schedule is left as set (no SWA learning rate); none of the architectures
has BatchNorm, so no statistics need recomputing.

Everything that is not the loop itself (building the components, resume, the
output files, final scoring) lives in the helpers below it. The resumable state
is the loop's own values (:class:`LoopState`) plus a name -> component mapping
whose members all speak ``state_dict``/``load_state_dict``; ``last.pt`` is one
loop over that mapping, so a new stateful component is saved by adding it there.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from grace_rul import __version__, rundir, source_commit
from grace_rul.balancers import StepGrads, balance_backward, build_balancer
from grace_rul.checkpoint import atomic_torch_save, load_checkpoint
from grace_rul.config import Config, Execution, config_from_dict
from grace_rul.data import CMAPSSData, load_dataset, read_dataset, unit_windows, window_rows
from grace_rul.errors import GraceError
from grace_rul.evaluation import score_split, test_metrics
from grace_rul.inference.conformal import run_interval_metrics
from grace_rul.lock import DirLock
from grace_rul.losses import TASKS, task_losses
from grace_rul.metrics import PROTOCOL_LABELS
from grace_rul.model import DualTaskNet, build_model, count_parameters, predict
from grace_rul.rundir import RunDir
from grace_rul.stabilisers import (
    GradClipper,
    ModelEma,
    NonFiniteGuard,
    Precision,
    RngStreams,
    SpikeDetector,
    seed_everything,
)

# Settings a resume may change: extending a run to more epochs.
EXTENDABLE_KEYS = ("train.epochs",)
# About this many training windows, evenly strided over every unit, set the RUL head's bias.
RUL_BIAS_WINDOWS = 1024


def bias_windows(x: torch.Tensor) -> torch.Tensor:
    """An even stride through the training windows (every unit, early and late life)."""
    return x[:: max(1, len(x) // RUL_BIAS_WINDOWS)]


@dataclass
class LoopState:
    """The loop's own values; saved in ``last.pt`` beside the components' state."""

    epoch: int = 0  # the next epoch to run (0-based)
    step: int = 0  # applied optimiser steps
    best_score: float = float("inf")
    best_epoch: int = -1  # 0-based
    stale_epochs: int = 0
    stopped: bool = False
    seconds: float = 0.0  # wall time of training before this process started
    cpu_seconds: float = 0.0  # process CPU time (all threads) before this process started
    grad_norms: list[float] = field(default_factory=list)  # every applied step's pre-clip norm


def train(
    cfg: Config,
    out_dir: str | Path,
    *,
    execution: Execution | None = None,
    resume: bool = False,
    overwrite: bool = False,
    loss_fn: Callable = task_losses,
    backward_fn: Callable = balance_backward,
    score_test: bool = True,
    on_epoch: Callable[[int, float], None] | None = None,
) -> dict[str, Any]:
    """Train one run into ``out_dir`` and return its ``metrics.json`` content.

    ``resume`` continues exactly from ``out_dir/checkpoints/last.pt``. ``loss_fn`` and
    ``backward_fn`` are the two seams of the step (task losses; balanced backward),
    there for fault injection and experiments. With ``data.folds`` K >= 2 (and no
    ``data.fold``) the run is a K-fold cross-validation (:func:`grace_rul.folds.train_folds`).
    ``score_test=False`` builds no test split and scores none (tuning trials);
    ``on_epoch(epoch, selection_score)`` is called after every epoch's ``last.pt`` (a
    tuner's pruning hook: whatever it raises ends the run, resumable). Everything is
    validated (settings, data, network) before the first byte is written; from then on
    the run holds ``out_dir/.lock`` (:mod:`grace_rul.lock`), released however it ends.
    """
    if cfg.data.folds >= 2 and cfg.data.fold == 0:
        from grace_rul.folds import train_folds

        return train_folds(
            cfg, out_dir, execution=execution, resume=resume, overwrite=overwrite,
            score_test=score_test, on_epoch=on_epoch,
        )  # fmt: skip
    if not score_test and cfg.train.protocol == "paper":
        raise GraceError("train.protocol=paper selects on the test set: not without a test split")
    with DirLock("grace train") as lock:
        return _train(
            cfg, RunDir(out_dir), lock, execution or Execution(), resume, overwrite,
            loss_fn, backward_fn, score_test, on_epoch,
        )  # fmt: skip


def _train(
    cfg: Config,
    run: RunDir,
    lock: DirLock,
    exe: Execution,
    resume: bool,
    overwrite: bool,
    loss_fn: Callable,
    backward_fn: Callable,
    score_test: bool,
    on_epoch: Callable[[int, float], None] | None,
) -> dict[str, Any]:
    run.check(resume=resume, overwrite=overwrite)
    if resume:
        check_resumable(run, cfg)
    show_bar = (sys.stderr.isatty() if exe.progress is None else exe.progress) and not exe.quiet

    def log(msg: str) -> None:
        run.log(msg)
        if not exe.quiet:
            tqdm.write(msg, file=sys.stderr)

    device = _device(exe)
    seed_everything(cfg.seed, deterministic=cfg.train.deterministic)
    data = load_dataset(cfg.data, cfg.seed, exe.data_dir, with_test=score_test)
    parts = _build(cfg, data, device)
    lock.acquire(run.path)  # everything is valid: from here on this process owns the directory
    run.prepare(resume=resume, overwrite=overwrite)
    model: DualTaskNet = parts["model"]
    balancer, optimizer, ema = parts["balancer"], parts["optimizer"], parts["ema"]
    clipper, guard, spikes, precision = (
        parts["clipper"], parts["guard"], parts["spikes"], parts["precision"]
    )  # fmt: skip
    warmup, plateau, order = parts.get("warmup"), parts.get("plateau"), parts["rng"].generator
    cosine, onecycle, swa = parts.get("cosine"), parts.get("onecycle"), parts.get("swa")
    shared, heads = model.shared_parameters(), model.head_parameters()
    last_layer = model.last_shared_layer_params()
    all_params = list(model.parameters()) + list(balancer.parameters())
    balancer_state = _Snapshot(balancer)
    t = cfg.train
    x_train, rul_train, health_train = (
        data.train.x.to(device), data.train.rul.to(device), data.train.health.to(device)
    )  # fmt: skip
    n_batches = -(-len(x_train) // t.batch_size)

    state = _start(run, cfg, data, parts, device, resume, log)
    started, cpu_started = time.perf_counter(), time.process_time()
    val_rmse_shown = float("nan")

    while state.epoch < t.epochs and not state.stopped:
        epoch, epoch_start = state.epoch, time.perf_counter()
        epoch_lr = optimizer.param_groups[0]["lr"]  # set by the warmup at the end of the last epoch
        wd = t.weight_decay * weight_decay_factor(t.weight_decay_schedule, epoch)
        optimizer.param_groups[0]["weight_decay"] = wd
        model.train()
        stat = _EpochGradStats(len(TASKS), device)
        perm = torch.randperm(len(x_train), generator=order).to(device)
        bar = tqdm(
            range(n_batches), desc=f"epoch {epoch + 1}/{t.epochs}", leave=False,
            disable=not show_bar, file=sys.stderr, dynamic_ncols=True,
        )  # fmt: skip
        for b in bar:
            idx = perm[b * t.batch_size : (b + 1) * t.batch_size]
            optimizer.zero_grad(set_to_none=True)
            with precision.autocast():
                rul_pred, logits, z = model(x_train[idx])
            losses = loss_fn(rul_pred, logits, rul_train[idx], health_train[idx], cfg.data.max_rul)
            balancer_state.take()
            result = backward_fn(
                balancer, losses, shared, heads,
                representation=z, grad_source=cfg.balancer.grad_source,
                last_layer_params=last_layer, want_task_grads=state.step % t.grad_stats_every == 0,
                scale=precision.scale, check_finite=False,
            )  # fmt: skip
            precision.unscale_(optimizer)
            # The step's one host sync, after backward (as GradScaler): a non-finite loss or
            # gradient anywhere skips it. Backward on a bad loss is wasted work, but rare.
            if not guard.check_step(losses, all_params, also=result.finite):
                balancer_state.restore()  # a skipped step leaves no trace
                optimizer.zero_grad(set_to_none=True)
                what = _problem(losses)
                precision.skip(overflow=what == "gradients")  # fp16: shrink the loss scale
                _skip(guard, log, epoch, b, what)
                continue
            grad_norm = clipper.clip(model.parameters())
            precision.step(optimizer)
            precision.update()
            if onecycle is not None:
                onecycle.step()
            losses_after = None
            if balancer.needs_post_step_losses:  # FAMO: the same batch's losses after the step
                with torch.no_grad(), precision.autocast():
                    post = model(x_train[idx])
                losses_after = loss_fn(
                    post[0], post[1], rul_train[idx], health_train[idx], cfg.data.max_rul
                )
            balancer.after_step(losses_after=losses_after)
            ema.update(model)
            guard.record_good()
            state.step += 1

            stat.add(b, losses, result, grad_norm)
            if show_bar and b % 10 == 0:  # the postfix reads the device: not every batch
                lam = "/".join(f"{w:.2f}" for w in result.combination.weights.tolist())
                loss = float(losses.detach().sum())
                bar.set_postfix(loss=f"{loss:.3g}", lam=lam, val_rmse=f"{val_rmse_shown:.2f}")
        bar.close()

        # ---- the epoch's statistics come to the host once; loss spikes among its steps
        totals, grad_norms = stat.read()
        state.grad_norms += grad_norms
        for b, total in zip(stat.batches, totals):
            if spikes.update(total, epoch, b):
                log(
                    f"loss spike at epoch {epoch + 1} batch {b}: {total:.4g} "
                    f"> {t.spike_factor}x running level {spikes.level:.4g}"
                )
        if stat.steps:
            balancer.end_epoch(epoch, (stat.losses / stat.steps).float())

        # ---- evaluate with the EMA weights swapped in (and always swapped back), or from
        # train.swa_start on with the SWA average of the epochs' weights
        use_swa = swa is not None and epoch + 1 >= t.swa_start
        if use_swa:
            if epoch + 1 == t.swa_start:
                log(f"SWA from epoch {epoch + 1}: evaluating the average of the epochs' weights")
            swa.update_parameters(model)
        net = swa.module if use_swa else model
        with nullcontext() if use_swa else ema.swapped(model):
            val_all = score_split(net, data.val)[0]
            val_last = score_split(net, data.val_last)[0]
            test_now = score_split(net, data.test)[0] if t.protocol == "paper" else None
        val = val_last if t.select == "last" else val_all
        score = test_now["rmse"] if test_now is not None else val["rmse"]
        val_rmse_shown = val["rmse"]
        if warmup is not None and epoch < t.warmup_epochs:
            warmup.step()  # LR position of the next epoch: lr0 * (0.1 + 0.9 e / warmup)
        if epoch >= t.warmup_epochs:
            if plateau is not None:
                plateau.step(score)
            if cosine is not None:
                cosine.step()
        is_best = score < state.best_score
        if is_best:
            state.best_score, state.best_epoch, state.stale_epochs = score, epoch, 0
            record = {**val, "rmse_all": val_all["rmse"], "rmse_last": val_last["rmse"]}
            _save_best(run, model, ema, data, cfg, epoch, record, swa if use_swa else None)
        else:
            state.stale_epochs += 1

        clip_summary = clipper.epoch_summary()
        if clip_summary["hint"]:
            log(clip_summary["hint"])
        run.append_epoch(
            {
                "epoch": epoch + 1, "lr": epoch_lr, "weight_decay": wd,
                **stat.loss_row(), "val_rmse": val_all["rmse"], "val_rmse_last": val_last["rmse"],
                "val_mae": val["mae"], "val_nasa_score": val["nasa_score"],
                "val_health_accuracy": val["health_accuracy"],
                "test_rmse": test_now["rmse"] if test_now is not None else "",
                "selection_score": score, "is_best": int(is_best),
                "seconds": time.perf_counter() - epoch_start,
                "skipped_steps": guard.total_skipped, "spikes": len(spikes.spikes),
            },
            {"epoch": epoch + 1, **stat.row(), **clip_summary_row(clip_summary, t.clip)},
        )  # fmt: skip
        state.stopped = state.stale_epochs >= t.early_stop_patience
        state.epoch += 1
        elapsed = (time.perf_counter() - started, time.process_time() - cpu_started)
        _save_last(run, parts, cfg, state, *elapsed)
        if not exe.quiet:
            tqdm.write(
                f"epoch {epoch + 1}/{t.epochs}  loss {stat.mean_total():.4g}  "
                f"lambda {stat.row()['w_rul']:.3f}/{stat.row()['w_health']:.3f}  "
                f"val_rmse {val['rmse']:.3f}{'  *' if is_best else ''}",
                file=sys.stderr,
            )
        if state.stopped:
            log(
                f"early stopping after epoch {epoch + 1}: no improvement for "
                f"{t.early_stop_patience} epochs; restoring epoch {state.best_epoch + 1}"
            )
        if on_epoch is not None:
            on_epoch(epoch, state.best_score)

    state.seconds += time.perf_counter() - started
    state.cpu_seconds += time.process_time() - cpu_started
    metrics = _finish(run, cfg, data, parts, state, exe)
    if metrics["test"] is None:
        log(f"done: best epoch {state.best_epoch + 1}, validation {state.best_score:.3f}, no test")
    else:
        log(
            f"done: best epoch {state.best_epoch + 1}, test rmse_last "
            f"{metrics['test']['rmse_last']:.3f}, NASA score "
            f"{metrics['test']['nasa_score']:.1f} ({PROTOCOL_LABELS[t.protocol]})"
        )
    return metrics


def weight_decay_factor(schedule: Any, epoch: int) -> float:
    """Adaptive weight decay: the factor of the last milestone reached (0-based ``epoch``).

    GRACE's schedule ``[[100, 0.5], [200, 0.1]]`` gives x1 for epochs 0-99, x0.5 for
    100-199 and x0.1 from 200 on (factors of the base decay, not cumulative).
    """
    factor = 1.0
    for milestone, value in schedule:
        if epoch >= milestone:
            factor = value
    return factor


# --------------------------------------------------------------------------- components


def _device(exe: Execution) -> torch.device:
    if exe.threads > 0:
        torch.set_num_threads(exe.threads)
    if exe.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if exe.device == "cuda" and not torch.cuda.is_available():
        raise GraceError("device is cuda but no CUDA device is available")
    return torch.device(exe.device)


def _build(cfg: Config, data: CMAPSSData, device: torch.device) -> dict[str, Any]:
    """Every stateful component of a run, by the name its state has in ``last.pt``."""
    t = cfg.train
    model = build_model(
        cfg.model,
        n_features=len(data.feature_names),
        max_rul=cfg.data.max_rul,
        window=window_rows(cfg.data),
    )
    model.init_rul_bias(bias_windows(data.train.x), float(data.train.rul.mean()))
    model.to(device)
    balancer = build_balancer(cfg.balancer.name, cfg.balancer.options).to(device)
    groups = [{"params": list(model.parameters())}]
    if list(balancer.parameters()):  # learnable balancer parameters train with the model, no decay
        groups.append({"params": list(balancer.parameters()), "weight_decay": 0.0})
    # fused: one kernel for every parameter (CPU and CUDA); ~5x faster than the per-tensor loop
    optimizer = torch.optim.AdamW(
        groups, lr=t.lr, betas=tuple(t.betas), weight_decay=t.weight_decay, fused=True
    )
    sched = torch.optim.lr_scheduler
    parts: dict[str, Any] = {"model": model, "optimizer": optimizer}
    if t.schedule == "plateau":
        parts["plateau"] = sched.ReduceLROnPlateau(
            optimizer, "min", factor=t.plateau_factor, patience=t.plateau_patience, min_lr=t.min_lr
        )
    elif t.schedule == "onecycle":
        steps = t.epochs * -(-len(data.train) // t.batch_size)
        parts["onecycle"] = sched.OneCycleLR(
            optimizer, max_lr=t.lr, total_steps=steps, cycle_momentum=False
        )
    parts.update({
        "ema": ModelEma(model, decay=t.ema_decay, warmup=t.ema_warmup),
        "balancer": balancer,
        "clipper": GradClipper(max_norm=t.clip, mode=t.clip_mode),
        "guard": NonFiniteGuard(max_consecutive=t.max_bad_steps),
        "spikes": SpikeDetector(factor=t.spike_factor),
        "precision": Precision(t.precision, device),
        "rng": RngStreams(torch.Generator().manual_seed(cfg.seed)),  # data order
    })  # fmt: skip
    if t.warmup_epochs > 0 and t.schedule != "onecycle":
        parts["warmup"] = sched.LinearLR(optimizer, 0.1, 1.0, total_iters=t.warmup_epochs)
    if t.schedule == "cosine":
        # Built after the warmup and stepped only after it: its recursive form continues
        # from lr0, where the warmup ends.
        parts["cosine"] = sched.CosineAnnealingLR(
            optimizer, T_max=max(t.epochs - t.warmup_epochs, 1), eta_min=t.min_lr
        )
    if t.swa_start > 0:
        parts["swa"] = torch.optim.swa_utils.AveragedModel(model)
    return parts


def _start(run: RunDir, cfg: Config, data, parts, device, resume: bool, log) -> LoopState:
    """The loop state of a new run (config and table headers written) or of a resumed one."""
    if resume:
        state = _restore(run, parts, cfg)
        log(f"resumed from {run.last} at epoch {state.epoch + 1}")
        return state
    run.start(cfg.to_dict())
    log(
        f"{cfg.data.dataset}: {len(data.train)} train / {len(data.val)} val windows, "
        f"{len(data.test) if data.test is not None else 'no'} test units; "
        f"model '{cfg.preset}' with "
        f"{count_parameters(parts['model']):,} parameters; balancer {cfg.balancer.name}; "
        f"device {device.type}; precision {parts['precision'].mode}"
    )
    return LoopState()


def _save_last(
    run: RunDir, parts: dict[str, Any], cfg: Config, state: LoopState, wall: float, cpu: float
) -> None:
    """``last.pt``: every component's state, the loop's values (times so far) and the config."""
    times = {"seconds": state.seconds + wall, "cpu_seconds": state.cpu_seconds + cpu}
    atomic_torch_save(
        {
            "components": {name: part.state_dict() for name, part in parts.items()},
            "loop": asdict(replace(state, **times)),
            "config": cfg.to_dict(),
            "config_hash": config_hash(cfg),
        },
        run.last,
    )


def config_hash(cfg: Config) -> str:
    """SHA-256 of the run's settings, less those a resume may change (``last.pt`` carries it)."""
    settings = cfg.to_dict()
    for key in EXTENDABLE_KEYS:
        *parents, leaf = key.split(".")
        node = settings
        for part in parents:
            node = node[part]
        node.pop(leaf, None)
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _restore(run: RunDir, parts: dict[str, Any], cfg: Config) -> LoopState:
    """Load ``last.pt`` into the components; cut the tables back to its epoch."""
    saved = load_checkpoint(run.last)
    components = saved.get("components")
    if not isinstance(components, dict) or set(components) != set(parts) or "loop" not in saved:
        raise GraceError(f"checkpoint {run.last} is not a resumable last.pt of this run")
    _check_last_config(run, saved, cfg)
    loop = saved["loop"]
    # Keys of an older LoopState may be missing (they take their defaults); unknown keys may not.
    if (
        not isinstance(loop, dict)
        or "epoch" not in loop
        or set(loop) - {f.name for f in fields(LoopState)}
    ):
        raise GraceError(f"checkpoint {run.last} is not a resumable last.pt (bad loop state)")
    where = "loop"
    try:
        state = LoopState(**loop)
        _check_loop_types(state)
        for where, part in parts.items():
            part.load_state_dict(components[where])
    except Exception as exc:  # load_state_dict raises many types for a foreign or damaged state
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise GraceError(f"checkpoint {run.last} does not fit this run ({where}: {first})") from (
            None
        )
    run.truncate_epochs(state.epoch)
    return state


def _check_last_config(run: RunDir, saved: dict[str, Any], cfg: Config) -> None:
    """Refuse a ``last.pt`` of another run: its config hash (or config) must be this run's."""
    if saved.get("config_hash") == config_hash(cfg):
        return
    old = saved.get("config")
    diff = _config_diff(old, cfg.to_dict()) if isinstance(old, dict) else ["config"]
    diff = [k for k in diff if k not in EXTENDABLE_KEYS]
    if "config_hash" in saved and not diff:
        diff = ["config_hash"]  # the stored config was edited after the hash was taken
    if diff:
        raise GraceError(
            f"cannot resume {run.path}: {run.last} belongs to another run; "
            f"settings differ: {', '.join(diff[:8])}{' ...' if len(diff) > 8 else ''}"
        )


def _check_loop_types(state: LoopState) -> None:
    """The loop values of a ``last.pt`` have the types the loop uses."""
    ints = ("epoch", "step", "best_epoch", "stale_epochs")
    floats = ("best_score", "seconds", "cpu_seconds")
    ok = all(type(getattr(state, k)) is int for k in ints)
    ok = ok and all(isinstance(getattr(state, k), (int, float)) for k in floats)
    ok = ok and isinstance(state.stopped, bool) and isinstance(state.grad_norms, list)
    if not ok or state.epoch < 0:
        raise TypeError("loop values have the wrong types")


def check_resumable(run: RunDir, cfg: Config) -> None:
    """Refuse to resume with settings that differ from the saved run (naming the keys)."""
    try:
        old = config_from_dict(run.read_config())
    except GraceError as exc:
        raise GraceError(f"cannot resume: {exc}") from None
    extendable = EXTENDABLE_KEYS if cfg.train.schedule == "plateau" else ()
    diff = [k for k in _config_diff(old.to_dict(), cfg.to_dict()) if k not in extendable]
    if diff:
        raise GraceError(
            f"cannot resume {run.path}: settings differ from the saved run: {', '.join(diff)}"
        )


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


# --------------------------------------------------------------------------- outputs


def _save_best(
    run: RunDir, model, ema: ModelEma, data, cfg: Config, epoch: int, val: dict, swa=None
) -> None:
    """``best.pt``; its inference weights are the EMA's, or the SWA average once it is used."""
    inference = ema.averaged_state_dict(model) if swa is None else _copy(swa.module.state_dict())
    atomic_torch_save(
        {
            "model": model.state_dict(),
            "ema": ema.state_dict(),
            "inference": inference,
            "inference_weights": "ema" if swa is None else "swa",
            "normalizer": data.normalizer.to_dict(),
            "feature_names": list(data.feature_names),
            "config": cfg.to_dict(),
            "epoch": epoch,
            "metrics": val,
        },
        run.best,
    )


def _finish(
    run: RunDir, cfg: Config, data, parts: dict[str, Any], state: LoopState, exe: Execution
) -> dict[str, Any]:
    """Restore the best weights (model + EMA), score the test set once, write the outputs.

    A fold of a cross-validation also writes its out-of-fold predictions (``oof.csv``:
    the truncated-validation cuts of its held-out units); a run without a test split
    writes no test predictions, trajectories or test metrics.
    """
    model, ema, guard = parts["model"], parts["ema"], parts["guard"]
    best = load_checkpoint(run.best)
    model.load_state_dict(best["model"])
    ema.load_state_dict(best["ema"])
    test = intervals = None
    swa_best = best.get("inference_weights") == "swa"
    if swa_best:  # the SWA average was the evaluated model: score it, not the EMA
        model.load_state_dict(best["inference"])
    with nullcontext() if swa_best else ema.swapped(model):
        if cfg.data.fold >= 1:
            oof, _ = predict(model, data.val_last.x)
            rows = rundir.oof_rows(data.val_last, oof, cfg.data.fold)
            run.write_table(rundir.OOF, rundir.OOF_COLUMNS, rows)
        if data.test is not None:
            test, rul_pred, health_pred = score_split(model, data.test)
            intervals = run_interval_metrics(model, data, cfg.seed)
            trajectories = _trajectories(model, cfg, data, exe.data_dir)
    if data.test is not None:
        run.write_table(
            rundir.PREDICTIONS,
            rundir.PREDICTION_COLUMNS,
            zip(
                data.test.unit.tolist(),
                data.test.rul.tolist(),
                rul_pred.tolist(),
                data.test.health.tolist(),
                health_pred.tolist(),
            ),
        )
        run.write_table(rundir.TRAJECTORIES, rundir.TRAJECTORY_COLUMNS, trajectories)
    run.write_grad_norms(state.grad_norms)
    first_bad = guard.first_bad
    metrics = {
        "dataset": cfg.data.dataset,
        "balancer": cfg.balancer.name,
        "seed": cfg.seed,
        "preset": cfg.preset,
        "protocol": cfg.train.protocol,
        "protocol_label": PROTOCOL_LABELS[cfg.train.protocol],
        "select": cfg.train.select,
        "precision": parts["precision"].mode,
        "val": {k: v for k, v in best["metrics"].items() if k != "confusion"},
        "test": test_metrics(test) if test is not None else None,
        "test_split": data.test_split if test is not None else "none (not built)",
        "intervals": intervals,
        "best_epoch": state.best_epoch + 1,
        "epochs_run": run.epochs_written(),
        "params": count_parameters(model),
        "seconds": round(state.seconds, 2),
        "cpu_seconds": round(state.cpu_seconds, 2),
        "threads": torch.get_num_threads(),
        "stability": {
            "skipped_steps": guard.total_skipped,
            "first_bad_step": dict(zip(("epoch", "batch", "what"), first_bad))
            if first_bad
            else None,
            "spikes": len(parts["spikes"].spikes),
        },
        "version": __version__,
        "commit": source_commit(),
    }
    run.write_metrics(metrics)
    return metrics


def _trajectories(model, cfg: Config, data, data_dir: str | None) -> list[list[Any]]:
    """Full-life predictions of the two test units with the longest records."""
    raw = read_dataset(cfg.data, data_dir)
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


def _copy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in state.items()}


def _problem(losses: torch.Tensor) -> str:
    """What made a skipped step non-finite: the named losses, or else the gradients."""
    bad = [n for n, v in zip(TASKS, losses.tolist()) if not np.isfinite(v)]
    return "loss " + "+".join(bad) if bad else "gradients"


def _skip(guard: NonFiniteGuard, log, epoch: int, batch: int, what: str) -> None:
    first = guard.first_bad is None
    guard.record_bad(epoch + 1, batch, what)  # raises TrainingDiverged after too many in a row
    if first:
        log(f"non-finite {what} at epoch {epoch + 1} batch {batch}: step skipped")


# --------------------------------------------------------------------------- statistics


class _Snapshot:
    """A module's state before a step, put back when the step is skipped.

    The state is copied (one fused copy) into the tensors kept from the last step; they are
    cloned afresh only when the state's layout changes (DB-MTL sizes a buffer on its first
    step). A balancer without state costs nothing.
    """

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module
        self.saved: dict[str, torch.Tensor] = {}
        self.layout: list[tuple] = []

    def take(self) -> None:
        live = self.module.state_dict()
        layout = [(k, v.shape, v.dtype, v.device) for k, v in live.items()]
        if layout != self.layout:
            self.saved, self.layout = {k: v.clone() for k, v in live.items()}, layout
        elif live:
            torch._foreach_copy_(list(self.saved.values()), list(live.values()))

    def restore(self) -> None:
        self.module.load_state_dict(self.saved)


class _EpochGradStats:
    """Per-epoch means of task losses, task-gradient norms, cosines and weights.

    ``add`` leaves everything on the training device (float64 sums, per-step values in
    lists); ``read`` brings it to the host in one transfer at the end of the epoch.
    """

    def __init__(self, k: int, device: torch.device) -> None:
        self.k, self.steps, self.samples, self.has_smooth = k, 0, 0, False
        self.batches: list[int] = []  # the batch index of every applied step
        self._step_losses: list[torch.Tensor] = []
        self._grad_norms: list[torch.Tensor] = []
        # One buffer: losses, weights, raw, smooth, norms (K each), then the cosine sum.
        self._sums = torch.zeros(5 * k + 1, dtype=torch.float64, device=device)
        self._views(self._sums)

    def _views(self, sums: torch.Tensor) -> None:
        parts = sums.split([self.k] * 5 + [1])
        self.losses, self.weights, self.raw, self.smooth, self.norms, self.cos = parts

    def add(
        self, batch: int, losses: torch.Tensor, result: StepGrads, grad_norm: torch.Tensor
    ) -> None:
        comb, device = result.combination, self._sums.device
        losses = losses.detach().to(self._sums)
        self.steps += 1
        self.batches.append(batch)
        self._step_losses.append(losses)
        self._grad_norms.append(grad_norm)
        self.losses += losses
        self.weights += comb.weights.detach().to(device)
        self.raw += (comb.raw if comb.raw is not None else comb.weights).detach().to(device)
        if comb.smoothed is not None:
            self.has_smooth = True
            self.smooth += comb.smoothed.detach().to(device)
        if result.task_norms is not None:
            self.samples += 1
            self.norms += result.task_norms.detach().to(device)
            self.cos += result.cosine.to(device)

    def read(self) -> tuple[list[float], list[float]]:
        """Bring the sums to the host (the epoch's one transfer); return each applied step's
        total loss (L_rul + L_health, as the spike detector sees it) and pre-clip norm."""
        per_step = []
        if self.steps:
            per_step = [torch.stack(self._step_losses).flatten(), torch.stack(self._grad_norms)]
        host = torch.cat([self._sums, *(v.to(self._sums) for v in per_step)]).cpu()
        self._views(host[: self._sums.numel()])
        per_step_host = host[self._sums.numel() :]
        n = self.steps * self.k
        totals = [float(row.sum()) for row in per_step_host[:n].view(self.steps, self.k)]
        return totals, per_step_host[n:].tolist()

    def mean_total(self) -> float:
        return float(self.losses.sum() / max(self.steps, 1))

    def loss_row(self) -> dict[str, Any]:
        """The loss columns of a history row."""
        mean = (self.losses / max(self.steps, 1)).tolist()
        return {"train_loss": sum(mean), **{f"loss_{t}": v for t, v in zip(TASKS, mean)}}

    def row(self) -> dict[str, Any]:
        n, s = max(self.steps, 1), self.samples
        row: dict[str, Any] = {"steps": self.steps, "grad_samples": s}
        for i, task in enumerate(TASKS):
            row[f"loss_{task}"] = float(self.losses[i] / n)
            row[f"gnorm_{task}"] = float(self.norms[i] / s) if s else ""
            row[f"raw_w_{task}"] = float(self.raw[i] / n)
            row[f"w_{task}"] = float(self.weights[i] / n)
            row[f"smooth_w_{task}"] = float(self.smooth[i] / n) if self.has_smooth else ""
        row["cos_rul_health"] = float(self.cos) / s if s else ""
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
