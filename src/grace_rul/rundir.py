"""The run directory: every file a training run writes, with its name, schema, writer and reader.

``grace train --out DIR`` fills one directory; the trainer writes it, and evaluation,
sweeps, tables and reports read it, all through :class:`RunDir`::

    config.yaml            the resolved run config (what the run *is*; no execution settings)
    metrics.json           written last: its presence means the run finished
    history.csv            one row per epoch (HISTORY_COLUMNS)
    gradient_stats.csv     one row per epoch (STATS_COLUMNS)
    grad_norms.npy         every applied step's pre-clip gradient norm (float32)
    predictions.csv        test-unit predictions (PREDICTION_COLUMNS)
    trajectories.csv       full-life predictions of two test units (TRAJECTORY_COLUMNS)
    events.log             hints, spikes, skipped steps, early stopping
    checkpoints/best.pt    the selected weights (model, EMA, inference weights, normaliser, config)
    checkpoints/last.pt    everything an exact resume needs, rewritten every epoch

Every whole-file write is atomic (:mod:`grace_rul.checkpoint`); the two CSVs grow by one
appended row per epoch and are cut back to the checkpointed epoch on resume.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from grace_rul.errors import GraceError
from grace_rul.io import atomic_write_bytes, atomic_write_json, atomic_write_text, load_yaml_text
from grace_rul.lock import LOCK_FILE
from grace_rul.losses import TASKS

CONFIG = "config.yaml"
METRICS = "metrics.json"
HISTORY = "history.csv"
GRAD_STATS = "gradient_stats.csv"
GRAD_NORMS = "grad_norms.npy"
PREDICTIONS = "predictions.csv"
TRAJECTORIES = "trajectories.csv"
OOF = "oof.csv"  # out-of-fold predictions of a cross-validation fold (and of all folds)
EVENTS = "events.log"
CHECKPOINTS = "checkpoints"
BEST = f"{CHECKPOINTS}/best.pt"
LAST = f"{CHECKPOINTS}/last.pt"
MODEL_DIR = "model"  # the fold ensemble of a cross-validation directory
FILES = (
    CONFIG, METRICS, HISTORY, GRAD_STATS, GRAD_NORMS, PREDICTIONS, TRAJECTORIES, OOF, EVENTS,
)  # fmt: skip

HISTORY_COLUMNS = (
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
)
STATS_COLUMNS = (
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
)


def history_row(
    *,
    epoch: int,
    lr: float,
    weight_decay: float,
    task_losses: Sequence[float],
    val_all: dict[str, Any],
    val_last: dict[str, Any],
    val: dict[str, Any],
    test: dict[str, Any] | None,
    score: float,
    is_best: bool,
    seconds: float,
    skipped_steps: int,
    spikes: int,
) -> dict[str, Any]:
    """One epoch's ``history.csv`` row: ``epoch`` counted from 1, ``task_losses`` the mean
    training loss of each task, ``val_all``/``val_last`` the scores of all and of the last
    validation windows, ``val`` the selected one of them, ``test`` the epoch's test scores
    (``protocol=paper`` only), ``score`` the selection score; counts so far."""
    return {
        "epoch": epoch, "lr": lr, "weight_decay": weight_decay,
        "train_loss": sum(task_losses),
        **{f"loss_{task}": loss for task, loss in zip(TASKS, task_losses)},
        "val_rmse": val_all["rmse"], "val_rmse_last": val_last["rmse"],
        "val_mae": val["mae"], "val_nasa_score": val["nasa_score"],
        "val_health_accuracy": val["health_accuracy"],
        "test_rmse": test["rmse"] if test is not None else "",
        "selection_score": score, "is_best": int(is_best), "seconds": seconds,
        "skipped_steps": skipped_steps, "spikes": spikes,
    }  # fmt: skip


def stats_row(
    *,
    epoch: int,
    steps: int,
    grad_samples: int,
    task_means: dict[str, Sequence[Any]],
    cosine: float | str,
    clip: dict[str, Any],
    clip_threshold: float,
) -> dict[str, Any]:
    """One epoch's ``gradient_stats.csv`` row: ``task_means`` maps a statistic (``loss``,
    ``gnorm``, ``raw_w``, ``w``, ``smooth_w``) to its per-task means in ``TASKS`` order;
    ``clip`` is the clipper's epoch summary."""
    row: dict[str, Any] = {"epoch": epoch, "steps": steps, "grad_samples": grad_samples}
    for name, values in task_means.items():
        row.update({f"{name}_{task}": v for task, v in zip(TASKS, values)})
    row["cos_rul_health"] = cosine
    row.update({
        "grad_norm_mean": clip["mean"], "grad_norm_max": clip["max"],
        "grad_norm_p90": clip["p90"], "clip_fraction": clip["fraction"],
        "clip_threshold": clip_threshold,
    })  # fmt: skip
    return row


PREDICTION_COLUMNS = ("unit", "true_rul", "pred_rul", "true_health", "pred_health")
TRAJECTORY_COLUMNS = ("unit", "cycle", "true_rul", "pred_rul")
# unit, the cycle a validation unit is cut after, true (capped) RUL there, prediction, fold
OOF_COLUMNS = ("unit", "cut", "true", "predicted", "fold")
# The columns a reader needs in each table.
REQUIRED = {
    HISTORY: ("epoch", "train_loss", "val_rmse"),
    GRAD_STATS: ("epoch",),
    PREDICTIONS: ("unit", "true_rul", "pred_rul"),
    TRAJECTORIES: TRAJECTORY_COLUMNS,
    OOF: OOF_COLUMNS,
}


def fold_dir(root: str | Path, fold: int) -> Path:
    """The run directory of 1-based ``fold`` inside a cross-validation directory."""
    return Path(root) / f"fold{fold}"


def is_fold_root(path: str | Path) -> bool:
    """True when ``path`` is a cross-validation directory (its config has data.folds >= 2)."""
    p = Path(path)
    if not (p / CONFIG).is_file():
        return False
    try:
        data = RunDir(p).read_config().get("data") or {}
    except GraceError:
        return False
    return isinstance(data, dict) and int(data.get("folds") or 0) >= 2 and not data.get("fold")


class RunDir:
    """One run directory: the paths of its files, their writers and their readers."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @property
    def best(self) -> Path:
        return self.path / BEST

    @property
    def last(self) -> Path:
        return self.path / LAST

    def is_finished(self) -> bool:
        """A finished run has ``metrics.json`` (written last, atomically)."""
        return (self.path / METRICS).is_file()

    # ------------------------------------------------------------------ writing

    def check(self, *, resume: bool, overwrite: bool) -> None:
        """Refuse a directory that cannot take this run, writing nothing (see :meth:`prepare`)."""
        out = self.path
        if resume:
            if not (out / CONFIG).is_file():
                raise GraceError(
                    f"cannot resume: {out / CONFIG} not found (is {out} a GRACE run directory?)"
                )
            return
        if out.exists() and not out.is_dir():
            raise GraceError(f"--out {out} exists and is not a directory")
        if not overwrite and not self._reusable():
            raise GraceError(
                f"--out {out} is not empty (use --overwrite to replace a run, --resume to continue)"
            )

    def _reusable(self) -> bool:
        """Empty, or only a run's own files and no finished epoch (a refused or killed start)."""
        if not self.path.is_dir():
            return True
        names = {p.name for p in self.path.iterdir()} - {LOCK_FILE}
        if not names <= {*FILES, CHECKPOINTS}:
            return False
        return not (self.last.exists() or (self.path / METRICS).exists() or self.best.exists())

    def prepare(self, *, resume: bool, overwrite: bool) -> None:
        """Create the directory for a new run, or check it holds one to resume.

        A non-empty directory is refused unless ``overwrite`` (which deletes only the
        files listed above) or ``resume``; one that holds only a run's files and no
        finished epoch (a start that was refused or killed) is reused. The lock file
        (:mod:`grace_rul.lock`) does not count.
        """
        self.check(resume=resume, overwrite=overwrite)
        out = self.path
        if resume:
            return
        if out.is_dir():
            shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)
            for name in FILES:
                (out / name).unlink(missing_ok=True)
        try:
            (out / CHECKPOINTS).mkdir(parents=True, exist_ok=True)
            probe = out / ".write-test"
            probe.write_text("")
            probe.unlink()
        except OSError as exc:
            raise GraceError(f"--out {out} is not writable ({exc.strerror})") from None

    def start(self, config: dict[str, Any]) -> None:
        """Write ``config.yaml`` and empty tables for a new run."""
        atomic_write_text(self.path / CONFIG, yaml.safe_dump(config, sort_keys=False))
        atomic_write_text(self.path / HISTORY, ",".join(HISTORY_COLUMNS) + "\n")
        atomic_write_text(self.path / GRAD_STATS, ",".join(STATS_COLUMNS) + "\n")

    def log(self, message: str) -> None:
        """Append one line to ``events.log``."""
        with open(self.path / EVENTS, "a") as f:
            f.write(message + "\n")

    def append_epoch(self, history: dict[str, Any], stats: dict[str, Any]) -> None:
        """Append one epoch's row to ``history.csv`` and to ``gradient_stats.csv``."""
        for name, columns, row in (
            (HISTORY, HISTORY_COLUMNS, history),
            (GRAD_STATS, STATS_COLUMNS, stats),
        ):
            with open(self.path / name, "a", newline="") as f:
                csv.DictWriter(f, columns).writerow(row)

    def truncate_epochs(self, last_epoch: int) -> None:
        """Drop table rows after 1-based epoch ``last_epoch`` (a kill between row and last.pt)."""
        for name in (HISTORY, GRAD_STATS):
            path = self.path / name
            with open(path, newline="") as f:
                reader = csv.reader(f)
                header = next(reader)
                kept = [r for r in reader if r and int(r[0]) <= last_epoch]
            buf = io.StringIO()
            csv.writer(buf, lineterminator="\n").writerows([header, *kept])
            atomic_write_text(path, buf.getvalue())

    def write_table(self, name: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        """Write a whole CSV table atomically (predictions, trajectories)."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(rows)
        atomic_write_text(self.path / name, buf.getvalue())

    def write_grad_norms(self, norms: Sequence[float]) -> None:
        buf = io.BytesIO()
        np.save(buf, np.asarray(norms, dtype=np.float32))
        atomic_write_bytes(self.path / GRAD_NORMS, buf.getvalue())

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        atomic_write_json(self.path / METRICS, metrics)

    # ------------------------------------------------------------------ reading

    def read_metrics(self) -> dict[str, Any]:
        """``metrics.json`` as a dict; a missing or broken file is a ``GraceError`` naming it."""
        missing = f"{self.path} is not a finished run: {METRICS} not found"
        return self._read_mapping(METRICS, json.loads, missing)

    def read_config(self) -> dict[str, Any]:
        """``config.yaml`` as a nested dict; a missing or broken file is a ``GraceError``."""
        missing = f"{self.path / CONFIG} not found (is {self.path} a GRACE run directory?)"
        return self._read_mapping(CONFIG, lambda text: load_yaml_text(text, CONFIG), missing)

    def _read_mapping(self, name: str, parse: Any, missing: str) -> dict[str, Any]:
        path = self.path / name
        try:
            data = parse(path.read_text())
        except FileNotFoundError:
            raise GraceError(missing) from None
        except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as exc:
            raise GraceError(f"cannot read {path}: {str(exc).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise GraceError(f"{path} must hold a mapping")
        return data

    def read_table(self, name: str) -> pd.DataFrame:
        """One CSV table of the run; ``GraceError`` if missing, unreadable, short of columns
        or empty."""
        return read_csv(self.path / name, REQUIRED.get(name, ()))

    def read_grad_norms(self) -> np.ndarray:
        path = self.path / GRAD_NORMS
        if not path.is_file():
            raise GraceError(f"{GRAD_NORMS} not found")
        try:
            return np.asarray(np.load(path, allow_pickle=False), dtype=np.float64).ravel()
        except (OSError, ValueError) as exc:
            raise GraceError(f"{GRAD_NORMS} could not be read ({exc})") from None

    def read_events(self) -> list[str]:
        """The lines of ``events.log`` (none when it is missing); unreadable is a ``GraceError``."""
        path = self.path / EVENTS
        if not path.is_file():
            return []
        try:
            return path.read_text(errors="replace").splitlines()
        except OSError as exc:
            raise GraceError(f"{EVENTS} could not be read ({exc})") from None

    def epochs_written(self) -> int:
        """Rows in ``history.csv`` (0 when it is missing)."""
        path = self.path / HISTORY
        if not path.is_file():
            return 0
        with open(path, newline="") as f:
            return max(sum(1 for _ in f) - 1, 0)


def oof_rows(cuts: Any, predicted: Any, fold: int) -> list[list[Any]]:
    """``oof.csv`` rows of one fold: its validation cuts (a ``Split``) and their predictions."""
    return [
        [int(u), int(c), float(y), float(p), int(fold)]
        for u, c, y, p in zip(
            cuts.unit.tolist(), cuts.cycle.tolist(), cuts.rul.tolist(), predicted.tolist()
        )
    ]


def read_csv(path: str | Path, required: Sequence[str] = ()) -> pd.DataFrame:
    """A CSV table with at least one row and the ``required`` columns.

    A missing, unreadable, short or empty file is a ``GraceError`` whose one-line message
    starts with the file's name (``history.csv not found``, ``… lacks column(s) …``).
    """
    path = Path(path)
    name = path.name
    if not path.is_file():
        raise GraceError(f"{name} not found")
    try:
        df = pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError, OSError) as e:
        raise GraceError(f"{name} could not be read ({type(e).__name__}: {e})") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise GraceError(f"{name} lacks column(s) {', '.join(missing)}")
    if df.empty:
        raise GraceError(f"{name} has no rows")
    return df
