"""The GRACE training loop, readable top to bottom from :func:`train` (docs/design.md §5):
``_train`` runs the epochs, ``_train_epoch`` their batches, ``_end_epoch`` the rest.

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
output files, final scoring) lives in the helpers below it; the history and
gradient-statistics rows are built in :mod:`grace_rul.rundir` beside their columns. The
resumable state is the loop's own values (:class:`LoopState`) plus :class:`Components`,
whose fields all speak ``state_dict``/``load_state_dict``; ``last.pt`` is one loop over
its fields, so a new stateful component is saved by adding a field.
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
from torch.optim import lr_scheduler
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from grace_rul import __version__, cpu_model, rundir, source_commit
from grace_rul.backbones import build_model
from grace_rul.balancers import Balancer, StepGrads, balance_backward, build_balancer
from grace_rul.checkpoint import atomic_torch_save, load_checkpoint
from grace_rul.config import PROTOCOL_LABELS, Config, Execution, TrainConfig, config_diff
from grace_rul.data import CMAPSSData, load_dataset, read_dataset, unit_windows, window_rows
from grace_rul.errors import GraceError
from grace_rul.folds import train_folds
from grace_rul.inference.conformal import run_interval_metrics
from grace_rul.lock import DirLock
from grace_rul.losses import TASKS, task_losses
from grace_rul.model import DualTaskNet, count_parameters, predict
from grace_rul.resolve import EXTENDABLE_KEYS, check_resumable
from grace_rul.rundir import RunDir
from grace_rul.scoring import score_split, test_metrics
from grace_rul.stabilisers import (
    GradClipper,
    ModelEma,
    NonFiniteGuard,
    Precision,
    RngStreams,
    SpikeDetector,
    seed_everything,
    stream_seed,
)

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


@dataclass(kw_only=True)
class Components:
    """Every stateful component of a run. ``last.pt`` holds each one the run uses (the
    schedulers and the SWA average are ``None`` when not) as ``components[field name]``;
    the fields are in the order of that mapping."""

    model: DualTaskNet
    optimizer: torch.optim.AdamW
    plateau: lr_scheduler.ReduceLROnPlateau | None = None
    onecycle: lr_scheduler.OneCycleLR | None = None
    ema: ModelEma
    balancer: Balancer
    clipper: GradClipper
    guard: NonFiniteGuard
    spikes: SpikeDetector
    precision: Precision
    rng: RngStreams  # the data order
    warmup: lr_scheduler.LinearLR | None = None
    cosine: lr_scheduler.CosineAnnealingLR | None = None
    swa: AveragedModel | None = None

    def present(self) -> dict[str, Any]:
        """The components this run uses, by name."""
        named = ((f.name, getattr(self, f.name)) for f in fields(self))
        return {name: part for name, part in named if part is not None}

    def state_dict(self) -> dict[str, Any]:
        return {name: part.state_dict() for name, part in self.present().items()}

    def load_state_dict(self, states: dict[str, Any]) -> None:
        """Load every present component's state; a failure is a :class:`ComponentError`."""
        for name, part in self.present().items():
            try:
                part.load_state_dict(states[name])
            except Exception as exc:  # load_state_dict raises many types for a foreign state
                raise ComponentError(name, exc) from exc


class ComponentError(Exception):
    """A component refused its saved state: which one (``name``) and why (``error``)."""

    def __init__(self, name: str, error: Exception) -> None:
        super().__init__(f"{name}: {error}")
        self.name, self.error = name, error


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
        return train_folds(
            cfg, out_dir, train, execution=execution, resume=resume, overwrite=overwrite,
            score_test=score_test, on_epoch=on_epoch,
        )  # fmt: skip
    if not score_test and cfg.train.protocol == "paper":
        raise GraceError("train.protocol=paper selects on the test set: not without a test split")
    with DirLock("grace train") as lock:
        return _train(
            cfg, RunDir(out_dir), lock, execution or Execution(), resume, overwrite,
            loss_fn, backward_fn, score_test, on_epoch,
        )  # fmt: skip


@dataclass
class _Loop:
    """What every epoch of one run reads: its settings, components, data, seams and output."""

    cfg: Config
    run: RunDir
    components: Components
    data: CMAPSSData
    device: torch.device
    loss_fn: Callable
    backward_fn: Callable
    log: Callable[[str], None]
    quiet: bool
    show_bar: bool
    started: float = field(default_factory=time.perf_counter)  # this process's training clocks
    cpu_started: float = field(default_factory=time.process_time)
    val_rmse_shown: float = float("nan")  # the progress bar's, from the last evaluation
    # Set from the above: the training split on the device, the parameter groups of the step.
    x: torch.Tensor = field(init=False)
    rul: torch.Tensor = field(init=False)
    health: torch.Tensor = field(init=False)
    shared: list[torch.nn.Parameter] = field(init=False)
    heads: list[list[torch.nn.Parameter]] = field(init=False)
    last_layer: int = field(init=False)  # trailing entries of `shared` in the last layer
    all_params: list[torch.nn.Parameter] = field(init=False)
    balancer_state: _Snapshot = field(init=False)  # put back when a step is skipped

    def __post_init__(self) -> None:
        model, train_split = self.components.model, self.data.train
        self.x, self.rul, self.health = (
            train_split.x.to(self.device), train_split.rul.to(self.device),
            train_split.health.to(self.device),
        )  # fmt: skip
        self.shared, self.heads = model.shared_parameters(), model.head_parameters()
        self.last_layer = model.last_shared_layer_params()
        self.all_params = list(model.parameters()) + list(self.components.balancer.parameters())
        self.balancer_state = _Snapshot(self.components.balancer)

    def batch_losses(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The task losses of the training windows ``idx`` and their shared representation."""
        with self.components.precision.autocast():
            rul_pred, logits, z = self.components.model(self.x[idx])
        max_rul = self.cfg.data.max_rul
        return self.loss_fn(rul_pred, logits, self.rul[idx], self.health[idx], max_rul), z

    def elapsed(self) -> tuple[float, float]:
        """Wall and CPU seconds this process has trained."""
        return time.perf_counter() - self.started, time.process_time() - self.cpu_started


def _train(
    cfg: Config,
    run: RunDir,
    lock: DirLock,
    execution: Execution,
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
    progress = sys.stderr.isatty() if execution.progress is None else execution.progress

    def log(msg: str) -> None:
        run.log(msg)
        if not execution.quiet:
            tqdm.write(msg, file=sys.stderr)

    device = _device(execution)
    seed_everything(stream_seed(cfg.seed, cfg.data.fold), deterministic=cfg.train.deterministic)
    data = load_dataset(cfg.data, cfg.seed, execution.data_dir, with_test=score_test)
    components = _build(cfg, data, device)
    lock.acquire(run.path)  # everything is valid: from here on this process owns the directory
    run.prepare(resume=resume, overwrite=overwrite)
    state = _start(run, cfg, data, components, device, resume, log)
    loop = _Loop(
        cfg, run, components, data, device, loss_fn, backward_fn, log,
        quiet=execution.quiet, show_bar=progress and not execution.quiet,
    )  # fmt: skip

    train_cfg = cfg.train
    while state.epoch < train_cfg.epochs and not state.stopped:
        epoch, began = state.epoch, time.perf_counter()
        lr = components.optimizer.param_groups[0][
            "lr"
        ]  # set by the warmup at the end of the last epoch
        weight_decay = train_cfg.weight_decay * weight_decay_factor(
            train_cfg.weight_decay_schedule, epoch
        )
        components.optimizer.param_groups[0]["weight_decay"] = weight_decay
        grad_stats = _train_epoch(loop, state)
        _end_epoch(loop, state, grad_stats, lr, weight_decay, began)
        if on_epoch is not None:
            on_epoch(epoch, state.best_score)

    wall, cpu = loop.elapsed()
    state.seconds += wall
    state.cpu_seconds += cpu
    metrics = _finish(run, cfg, data, components, state, execution)
    if metrics["test"] is None:
        log(f"done: best epoch {state.best_epoch + 1}, validation {state.best_score:.3f}, no test")
    else:
        log(
            f"done: best epoch {state.best_epoch + 1}, test rmse_last "
            f"{metrics['test']['rmse_last']:.3f}, NASA score "
            f"{metrics['test']['nasa_score']:.1f} ({PROTOCOL_LABELS[train_cfg.protocol]})"
        )
    return metrics


def _train_epoch(loop: _Loop, state: LoopState) -> _EpochGradStats:
    """One epoch's batches, in a fresh order; what they report stays on the device."""
    train_cfg, components, epoch = loop.cfg.train, loop.components, state.epoch
    model, optimizer, balancer, precision = (
        components.model, components.optimizer, components.balancer, components.precision
    )  # fmt: skip
    model.train()
    grad_stats = _EpochGradStats(len(TASKS), loop.device)
    order = torch.randperm(len(loop.x), generator=components.rng.generator).to(loop.device)
    n_batches = -(-len(loop.x) // train_cfg.batch_size)
    bar = tqdm(
        range(n_batches), desc=f"epoch {epoch + 1}/{train_cfg.epochs}", leave=False,
        disable=not loop.show_bar, file=sys.stderr, dynamic_ncols=True,
    )  # fmt: skip
    for batch in bar:
        idx = order[batch * train_cfg.batch_size : (batch + 1) * train_cfg.batch_size]
        optimizer.zero_grad(set_to_none=True)
        losses, z = loop.batch_losses(idx)
        loop.balancer_state.take()
        grads = loop.backward_fn(
            balancer, losses, loop.shared, loop.heads,
            representation=z, grad_source=loop.cfg.balancer.grad_source,
            last_layer_params=loop.last_layer, scale=precision.scale,
            want_task_grads=state.step % train_cfg.grad_stats_every == 0,
        )  # fmt: skip
        precision.unscale_(optimizer)
        # The step's one host sync, after backward (as GradScaler): a non-finite loss or
        # gradient anywhere skips it. Backward on a bad loss is wasted work, but rare.
        if not components.guard.check_step(losses, loop.all_params, also=grads.finite):
            loop.balancer_state.restore()  # a skipped step leaves no trace
            optimizer.zero_grad(set_to_none=True)
            what = _problem(losses)
            precision.skip(overflow=what == "gradients")  # fp16: shrink the loss scale
            _skip(components.guard, loop.log, epoch, batch, what)
            continue
        grad_norm = components.clipper.clip(model.parameters())
        precision.step(optimizer)
        precision.update()
        if components.onecycle is not None:
            components.onecycle.step()
        losses_after = None
        if balancer.needs_post_step_losses:  # FAMO: the same batch's losses after the step
            with torch.no_grad():
                losses_after, _ = loop.batch_losses(idx)
        balancer.after_step(losses_after=losses_after)
        components.ema.update(model)
        components.guard.record_good()
        state.step += 1

        grad_stats.add(batch, losses, grads, grad_norm)
        if loop.show_bar and batch % 10 == 0:  # the postfix reads the device: not every batch
            lam = "/".join(f"{w:.2f}" for w in grads.combination.weights.tolist())
            loss = f"{float(losses.detach().sum()):.3g}"
            bar.set_postfix(loss=loss, lam=lam, val_rmse=f"{loop.val_rmse_shown:.2f}")
    bar.close()
    return grad_stats


def _end_epoch(
    loop: _Loop,
    state: LoopState,
    grad_stats: _EpochGradStats,
    lr: float,
    weight_decay: float,
    began: float,
) -> None:
    """After an epoch's batches: statistics, spikes, evaluation, schedules, best checkpoint,
    early stopping, the tables' rows and ``last.pt`` (``lr``, ``weight_decay``: the epoch's;
    ``began``: its ``perf_counter`` start)."""
    cfg, run, components, log, epoch = loop.cfg, loop.run, loop.components, loop.log, state.epoch
    train_cfg = cfg.train
    # ---- the epoch's statistics come to the host once; loss spikes among its steps
    totals, grad_norms = grad_stats.read()
    state.grad_norms += grad_norms
    for batch, total in zip(grad_stats.batches, totals):
        if components.spikes.update(total, epoch, batch):
            log(
                f"loss spike at epoch {epoch + 1} batch {batch}: {total:.4g} "
                f"> {train_cfg.spike_factor}x running level {components.spikes.level:.4g}"
            )
    if grad_stats.steps:
        components.balancer.end_epoch(epoch, (grad_stats.losses / grad_stats.steps).float())

    val_all, val_last, test_now, swa = _evaluate(loop, epoch)
    val = val_last if train_cfg.select == "last" else val_all
    score = test_now["rmse"] if test_now is not None else val["rmse"]
    loop.val_rmse_shown = val["rmse"]
    _step_schedules(components, train_cfg, epoch, score)
    is_best = score < state.best_score
    if is_best:
        state.best_score, state.best_epoch, state.stale_epochs = score, epoch, 0
        record = {**val, "rmse_all": val_all["rmse"], "rmse_last": val_last["rmse"]}
        _save_best(run, components.model, components.ema, loop.data, cfg, epoch, record, swa)
    else:
        state.stale_epochs += 1

    clip_summary = components.clipper.epoch_summary()
    if clip_summary["hint"]:
        log(clip_summary["hint"])
    means = grad_stats.task_means()
    run.append_epoch(
        rundir.history_row(
            epoch=epoch + 1, lr=lr, weight_decay=weight_decay, task_losses=means["loss"],
            val_all=val_all, val_last=val_last, val=val, test=test_now, score=score,
            is_best=is_best, seconds=time.perf_counter() - began,
            skipped_steps=components.guard.total_skipped, spikes=len(components.spikes.spikes),
        ),
        rundir.stats_row(
            epoch=epoch + 1, steps=grad_stats.steps, grad_samples=grad_stats.samples,
            task_means=means, cosine=grad_stats.mean_cosine(), clip=clip_summary,
            clip_threshold=train_cfg.clip,
        ),
    )  # fmt: skip
    state.stopped = state.stale_epochs >= train_cfg.early_stop_patience
    state.epoch += 1
    _save_last(run, components, cfg, state, *loop.elapsed())
    if not loop.quiet:
        tqdm.write(
            f"epoch {epoch + 1}/{train_cfg.epochs}  loss {grad_stats.mean_total():.4g}  "
            f"lambda {means['w'][0]:.3f}/{means['w'][1]:.3f}  "
            f"val_rmse {val['rmse']:.3f}{'  *' if is_best else ''}",
            file=sys.stderr,
        )
    if state.stopped:
        log(
            f"early stopping after epoch {epoch + 1}: no improvement for "
            f"{train_cfg.early_stop_patience} epochs; restoring epoch {state.best_epoch + 1}"
        )


def _evaluate(loop: _Loop, epoch: int) -> tuple[dict, dict, dict | None, AveragedModel | None]:
    """Validation (all windows, last windows) and, under ``protocol=paper``, test scores of
    the EMA weights swapped in (and always swapped back), or from ``train.swa_start`` on of
    the SWA average of the epochs' weights (then returned with the scores)."""
    components, train_cfg = loop.components, loop.cfg.train
    swa = (
        components.swa if components.swa is not None and epoch + 1 >= train_cfg.swa_start else None
    )
    if swa is not None:
        if epoch + 1 == train_cfg.swa_start:
            loop.log(f"SWA from epoch {epoch + 1}: evaluating the average of the epochs' weights")
        swa.update_parameters(components.model)
    net = swa.module if swa is not None else components.model
    with nullcontext() if swa is not None else components.ema.swapped(components.model):
        val_all = score_split(net, loop.data.val)[0]
        val_last = score_split(net, loop.data.val_last)[0]
        test_now = score_split(net, loop.data.test)[0] if train_cfg.protocol == "paper" else None
    return val_all, val_last, test_now, swa


def _step_schedules(
    components: Components, train_cfg: TrainConfig, epoch: int, score: float
) -> None:
    """The once-per-epoch LR schedules, after the epoch's evaluation."""
    if components.warmup is not None and epoch < train_cfg.warmup_epochs:
        components.warmup.step()  # LR position of the next epoch: lr0 * (0.1 + 0.9 e / warmup)
    if epoch >= train_cfg.warmup_epochs:
        if components.plateau is not None:
            components.plateau.step(score)
        if components.cosine is not None:
            components.cosine.step()


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


def _device(execution: Execution) -> torch.device:
    if execution.threads > 0:
        torch.set_num_threads(execution.threads)
    if execution.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if execution.device == "cuda" and not torch.cuda.is_available():
        raise GraceError("device is cuda but no CUDA device is available")
    return torch.device(execution.device)


def _build(cfg: Config, data: CMAPSSData, device: torch.device) -> Components:
    """Every stateful component of a run (the schedulers built in the order they chain in)."""
    train_cfg = cfg.train
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
    # fused: one kernel for every parameter (CPU and CUDA); timed in benchmarks/bench_optimizer.py
    optimizer = torch.optim.AdamW(
        groups,
        lr=train_cfg.lr,
        betas=tuple(train_cfg.betas),
        weight_decay=train_cfg.weight_decay,
        fused=True,
    )
    schedules: dict[str, Any] = {}
    if train_cfg.schedule == "plateau":
        schedules["plateau"] = lr_scheduler.ReduceLROnPlateau(
            optimizer, "min", factor=train_cfg.plateau_factor, patience=train_cfg.plateau_patience,
            min_lr=train_cfg.min_lr,
        )  # fmt: skip
    elif train_cfg.schedule == "onecycle":
        steps = train_cfg.epochs * -(-len(data.train) // train_cfg.batch_size)
        schedules["onecycle"] = lr_scheduler.OneCycleLR(
            optimizer, max_lr=train_cfg.lr, total_steps=steps, cycle_momentum=False
        )
    if train_cfg.warmup_epochs > 0 and train_cfg.schedule != "onecycle":
        schedules["warmup"] = lr_scheduler.LinearLR(
            optimizer, 0.1, 1.0, total_iters=train_cfg.warmup_epochs
        )
    if train_cfg.schedule == "cosine":
        # Built after the warmup and stepped only after it: its recursive form continues
        # from lr0, where the warmup ends.
        schedules["cosine"] = lr_scheduler.CosineAnnealingLR(
            optimizer,
            T_max=max(train_cfg.epochs - train_cfg.warmup_epochs, 1),
            eta_min=train_cfg.min_lr,
        )
    return Components(
        model=model,
        optimizer=optimizer,
        ema=ModelEma(model, decay=train_cfg.ema_decay, warmup=train_cfg.ema_warmup),
        balancer=balancer,
        clipper=GradClipper(max_norm=train_cfg.clip, mode=train_cfg.clip_mode),
        guard=NonFiniteGuard(max_consecutive=train_cfg.max_bad_steps),
        spikes=SpikeDetector(factor=train_cfg.spike_factor),
        precision=Precision(train_cfg.precision, device),
        rng=RngStreams(torch.Generator().manual_seed(stream_seed(cfg.seed, cfg.data.fold))),
        swa=AveragedModel(model) if train_cfg.swa_start > 0 else None,
        **schedules,
    )


def _start(
    run: RunDir, cfg: Config, data, components: Components, device, resume: bool, log
) -> LoopState:
    """The loop state of a new run (config and table headers written) or of a resumed one."""
    if resume:
        state = _restore(run, components, cfg)
        log(f"resumed from {run.last} at epoch {state.epoch + 1}")
        return state
    run.start(cfg.to_dict())
    log(
        f"{cfg.data.dataset}: {len(data.train)} train / {len(data.val)} val windows, "
        f"{len(data.test) if data.test is not None else 'no'} test units; "
        f"model '{cfg.preset}' with "
        f"{count_parameters(components.model):,} parameters; balancer {cfg.balancer.name}; "
        f"device {device.type}; precision {components.precision.mode}"
    )
    return LoopState()


def _save_last(
    run: RunDir, components: Components, cfg: Config, state: LoopState, wall: float, cpu: float
) -> None:
    """``last.pt``: every component's state, the loop's values (times so far) and the config."""
    times = {"seconds": state.seconds + wall, "cpu_seconds": state.cpu_seconds + cpu}
    atomic_torch_save(
        {
            "components": components.state_dict(),
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


def _restore(run: RunDir, components: Components, cfg: Config) -> LoopState:
    """Load ``last.pt`` into the components; cut the tables back to its epoch."""
    saved = load_checkpoint(run.last)
    states = saved.get("components")
    names = set(components.present())
    if not isinstance(states, dict) or set(states) != names or "loop" not in saved:
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
        components.load_state_dict(states)
    except Exception as exc:  # load_state_dict raises many types for a foreign or damaged state
        if isinstance(exc, ComponentError):
            where, exc = exc.name, exc.error
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
    diff = config_diff(old, cfg.to_dict()) if isinstance(old, dict) else ["config"]
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
    run: RunDir, cfg: Config, data, components: Components, state: LoopState, execution: Execution
) -> dict[str, Any]:
    """Restore the best weights (model + EMA), score the test set once, write the outputs.

    A fold of a cross-validation also writes its out-of-fold predictions (``oof.csv``:
    the truncated-validation cuts of its held-out units); a run without a test split
    writes no test predictions, trajectories or test metrics.
    """
    model, ema, guard = components.model, components.ema, components.guard
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
            trajectories = _trajectories(model, cfg, data, execution.data_dir)
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
        "precision": components.precision.mode,
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
        "cpu": cpu_model(),
        "stability": {
            "skipped_steps": guard.total_skipped,
            "first_bad_step": dict(zip(("epoch", "batch", "what"), first_bad))
            if first_bad
            else None,
            "spikes": len(components.spikes.spikes),
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
        views = sums.split([self.k] * 5 + [1])
        self.losses, self.weights, self.raw, self.smooth, self.norms, self.cos = views

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

    def task_means(self) -> dict[str, list[Any]]:
        """Per task (in ``TASKS`` order), the epoch's means: ``loss``, ``gnorm`` (the sampled
        task-gradient norm, ``""`` without samples), ``raw_w``, ``w`` and ``smooth_w`` (``""``
        when the balancer smooths none), the names of the statistics columns."""
        n, s = max(self.steps, 1), self.samples
        return {
            "loss": [float(v / n) for v in self.losses],
            "gnorm": [float(v / s) if s else "" for v in self.norms],
            "raw_w": [float(v / n) for v in self.raw],
            "w": [float(v / n) for v in self.weights],
            "smooth_w": [float(v / n) if self.has_smooth else "" for v in self.smooth],
        }

    def mean_cosine(self) -> float | str:
        """The mean cosine between the task gradients, ``""`` without samples."""
        return float(self.cos) / self.samples if self.samples else ""
