"""K-fold cross-validation over whole engines, and the fold ensemble it delivers.

``grace train --folds K --out DIR`` (= ``--set data.folds=K``) deals the training units
into K seeded folds of whole engines, stratified by life length
(:func:`grace_rul.data.windows.fold_units`), and trains K complete runs: fold ``f`` trains
on the other K-1 folds and selects its epoch on its own fold's truncated-validation
score, exactly as a single run does on its hold-out. Every training engine is validated
once, by the one model that never saw it. Each fold's initialisation, batch order and
dropout are seeded from the run seed and ``f`` (:func:`grace_rul.stabilisers.stream_seed`),
so the fold ensemble averages K different models, not K copies of one start.

``DIR`` holds:

=================  ==================================================================
``config.yaml``    the run's config (``data.folds = K``, ``data.fold = 0``)
``fold1/`` ...     one complete run directory per fold (``data.fold = f``); resumable
``oof.csv``        every fold's out-of-fold predictions: unit, cut, true, predicted, fold
``model/``         the K fold models as one model directory (CV+ intervals); only when
                   the test split is scored
``metrics.json``   ``cv`` (the CV score and its spread), the fold ensemble's test
                   metrics (scored once) and each fold model's; written last
=================  ==================================================================

The **CV score** is the RMSE over all out-of-fold cuts of all training engines (the
truncated last-window score of each fold, pooled); ``cv.fold_rmse`` and ``cv.std`` give
its spread over folds. A killed fold run resumes from its ``last.pt``; finished folds are
kept.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from grace_rul import __version__, cpu_model, rundir, source_commit
from grace_rul.config import PROTOCOL_LABELS, Config, Execution
from grace_rul.errors import GraceError
from grace_rul.io import atomic_write_text
from grace_rul.lock import LOCK_FILE, DirLock
from grace_rul.resolve import check_resumable
from grace_rul.rundir import MODEL_DIR, RunDir, fold_dir


def fold_config(cfg: Config, fold: int) -> Config:
    """The config of one fold's run: ``cfg`` with ``data.fold`` set."""
    return replace(cfg, data=replace(cfg.data, fold=fold))


def count_units(cfg: Config, data_dir: str | None = None) -> int:
    """How many training units the dataset of ``cfg`` has (read before anything is written)."""
    from grace_rul.data import read_dataset

    return int(read_dataset(cfg.data, data_dir).train["unit"].nunique())


def train_folds(
    cfg: Config,
    out_dir: str | Path,
    train_one: Callable[..., dict[str, Any]],
    *,
    execution: Execution | None = None,
    resume: bool = False,
    overwrite: bool = False,
    score_test: bool = True,
    on_epoch: Callable[[int, float], None] | None = None,
) -> dict[str, Any]:
    """Train the K fold runs of ``cfg`` into ``out_dir``; return its ``metrics.json``.

    ``train_one`` trains one fold's run (:func:`grace_rul.trainer.train`, which calls this
    for ``data.folds`` >= 2: passed in, so this module does not import the trainer).

    ``on_epoch(step, score)`` sees every fold's epochs on one axis (``step`` =
    ``(fold - 1) * train.epochs + epoch``, ``score`` the fold's best selection score so
    far): a tuner's pruning hook. ``score_test=False`` (tuning trials) builds no test
    split, scores none and writes no model directory.
    """
    execution = execution or Execution()
    k = cfg.data.folds
    n_units = count_units(cfg, execution.data_dir)
    if k > n_units:
        raise GraceError(
            f"data.folds={k} is more than the {n_units} training units of {cfg.data.dataset}"
        )
    root = RunDir(out_dir)
    with DirLock("grace train") as lock:
        if resume:
            root.check(resume=True, overwrite=False)
            check_resumable(root, cfg)
        else:
            _check_root(root, overwrite)
        lock.acquire(root.path)  # valid: from here on this process owns the directory
        if not resume:
            _clear_root(root)
        atomic_write_text(root / rundir.CONFIG, cfg.to_yaml())
        return _train_folds(cfg, root, train_one, execution, score_test, on_epoch)


def _train_folds(
    cfg: Config,
    root: RunDir,
    train_one: Callable[..., dict[str, Any]],
    execution: Execution,
    score_test: bool,
    on_epoch: Callable[[int, float], None] | None,
) -> dict[str, Any]:
    k = cfg.data.folds

    fold_metrics: list[dict[str, Any]] = []
    for f in range(1, k + 1):
        sub = RunDir(fold_dir(root.path, f))
        hook = None
        if on_epoch is not None:
            hook = _fold_hook(on_epoch, (f - 1) * cfg.train.epochs)
        if sub.is_finished():
            fold_metrics.append(sub.read_metrics())
            continue
        again = sub.last.is_file()
        if not again and sub.path.exists():
            shutil.rmtree(sub.path)  # killed in its first epoch: nothing to keep
        fold_metrics.append(
            train_one(
                fold_config(cfg, f),
                sub.path,
                execution=execution,
                resume=again,
                score_test=score_test,
                on_epoch=hook,
            )  # fmt: skip
        )
    oof = pd.concat([sub_oof(root.path, f) for f in range(1, k + 1)], ignore_index=True)
    root.write_table(rundir.OOF, rundir.OOF_COLUMNS, oof.itertuples(index=False))
    metrics = _metrics(cfg, oof, fold_metrics)
    if score_test:
        metrics.update(_fold_ensemble(root.path, k, execution.data_dir))
    root.write_metrics(metrics)
    return metrics


def _check_root(root: RunDir, overwrite: bool) -> None:
    """Refuse a directory that cannot take a new cross-validation, writing nothing."""
    out = root.path
    if out.exists() and not out.is_dir():
        raise GraceError(f"--out {out} exists and is not a directory")
    names = {p.name for p in out.iterdir()} - {LOCK_FILE} if out.is_dir() else set()
    if names and not overwrite:
        raise GraceError(
            f"--out {out} is not empty (use --overwrite to replace a run, --resume to continue)"
        )


def _clear_root(root: RunDir) -> None:
    """Remove an earlier cross-validation's folds, model and files (``--overwrite``)."""
    out = root.path
    for child in out.iterdir():
        if child.is_dir() and (child.name.startswith("fold") or child.name == MODEL_DIR):
            shutil.rmtree(child)
    for name in rundir.FILES:
        (out / name).unlink(missing_ok=True)


def _fold_hook(on_epoch: Callable[[int, float], None], offset: int) -> Callable[[int, float], None]:
    def hook(epoch: int, score: float) -> None:
        on_epoch(offset + epoch, score)

    return hook


def sub_oof(root: str | Path, fold: int) -> pd.DataFrame:
    """The out-of-fold predictions of one finished fold run."""
    return RunDir(fold_dir(root, fold)).read_table(rundir.OOF)[list(rundir.OOF_COLUMNS)]


def cv_score(oof: pd.DataFrame) -> dict[str, Any]:
    """The CV score of out-of-fold predictions: pooled RMSE, and per-fold RMSE with its spread."""
    err = oof["predicted"].to_numpy(np.float64) - oof["true"].to_numpy(np.float64)
    per_fold = [
        float(np.sqrt(np.mean((g["predicted"] - g["true"]).to_numpy(np.float64) ** 2)))
        for _, g in oof.groupby("fold", sort=True)
    ]
    return {
        "rmse": float(np.sqrt(np.mean(err**2))),
        "fold_rmse": per_fold,
        "fold_mean": float(np.mean(per_fold)),
        "std": float(np.std(per_fold, ddof=1)) if len(per_fold) > 1 else 0.0,
        "units": int(oof["unit"].nunique()),
        "cuts": len(oof),
    }


def _metrics(cfg: Config, oof: pd.DataFrame, folds: list[dict[str, Any]]) -> dict[str, Any]:
    cv = cv_score(oof)
    return {
        "kind": "folds",
        "dataset": cfg.data.dataset,
        "balancer": cfg.balancer.name,
        "seed": cfg.seed,
        "preset": cfg.preset,
        "protocol": cfg.train.protocol,
        "protocol_label": PROTOCOL_LABELS[cfg.train.protocol],
        "select": cfg.train.select,
        "folds": cfg.data.folds,
        "cv": cv,
        "val": {"rmse": cv["rmse"], "rmse_last": cv["rmse"]},
        "test": None,
        "test_split": "none (not built)",
        "fold_runs": [
            {
                "fold": i + 1,
                "val_rmse": m["val"]["rmse"],
                "best_epoch": m["best_epoch"],
                "epochs_run": m["epochs_run"],
                "test": m.get("test"),
            }
            for i, m in enumerate(folds)
        ],
        "best_epoch": None,
        "epochs_run": int(sum(m["epochs_run"] for m in folds)),
        "params": folds[0]["params"],
        "precision": folds[0]["precision"],
        "seconds": round(sum(m["seconds"] for m in folds), 2),
        "cpu_seconds": round(sum(m["cpu_seconds"] for m in folds), 2),
        "cpu_seconds_per_model": round(sum(m["cpu_seconds"] for m in folds) / len(folds), 2),
        "cpu": cpu_model(),
        "version": __version__,
        "commit": source_commit(),
    }


def _fold_ensemble(root: Path, k: int, data_dir: str | None) -> dict[str, Any]:
    """Combine the fold runs into ``root/model`` (CV+ intervals) and score it on the test set."""
    from grace_rul.inference.evaluate import score_model
    from grace_rul.inference.modelfile import save_model
    from grace_rul.inference.runs import model_from_runs

    model = model_from_runs(
        [fold_dir(root, f) for f in range(1, k + 1)], require_finished=True, data_dir=data_dir
    )
    scored = score_model(model, data_dir=data_dir)
    model.metrics = {"kind": "folds", **scored}
    save_model(model, root / MODEL_DIR, overwrite=True)
    return {
        "test": scored["test"],
        "test_split": scored.get("test_split", "test units, last window"),
        "intervals": scored.get("intervals"),
        "ensemble": f"mean of the {k} fold models; intervals {model.calibration.method}",
    }
