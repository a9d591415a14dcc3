"""Read run directories and sweep directories (notes/RUNDIR.md) for the report.

``metrics.json`` is required (its presence means a run finished); every other file
is optional here: a missing or unreadable one becomes a note and its figure is
skipped, so a report can always be written for a finished run.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from grace_rul.errors import GraceError

NO_RUN_HINT = "expected metrics.json + history.csv (a run dir) or runs/*/metrics.json (a sweep dir)"


@dataclass
class RunData:
    """Everything a report needs from one run directory; optional parts may be ``None``."""

    path: Path
    metrics: dict[str, Any]
    config: dict[str, Any] | None = None
    history: pd.DataFrame | None = None
    grad_stats: pd.DataFrame | None = None
    grad_norms: np.ndarray | None = None
    predictions: pd.DataFrame | None = None
    trajectories: pd.DataFrame | None = None
    problems: dict[str, str] = field(default_factory=dict)  # file name -> what is wrong with it

    @property
    def notes(self) -> list[str]:
        return [f"{name}: {why}" for name, why in self.problems.items()]

    def why_missing(self, name: str) -> str:
        """The reason an optional file's figure cannot be drawn."""
        return f"{name} {self.problems.get(name, 'not available')}"

    @property
    def dataset(self) -> str:
        return str(self.metrics.get("dataset") or _get(self.config, "data", "dataset") or "?")

    @property
    def balancer(self) -> str:
        return str(self.metrics.get("balancer") or _get(self.config, "balancer", "name") or "?")

    @property
    def seed(self) -> Any:
        seed = self.metrics.get("seed")
        return seed if seed is not None else _get(self.config, "seed")

    @property
    def test(self) -> dict[str, Any]:
        test = self.metrics.get("test")
        return test if isinstance(test, dict) else {}


@dataclass
class SweepData:
    """The finished cells of a sweep directory plus its optional tables."""

    path: Path
    runs: list[RunData]
    results: pd.DataFrame | None = None  # SWEEP_DIR/results.csv
    summary_md: str | None = None  # SWEEP_DIR/summary.md
    spec: dict[str, Any] | None = None  # SWEEP_DIR/sweep.yaml
    notes: list[str] = field(default_factory=list)


def _get(d: dict[str, Any] | None, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def is_run_dir(path: Path) -> bool:
    """A finished run: ``metrics.json`` and ``history.csv`` side by side."""
    return (path / "metrics.json").is_file() and (path / "history.csv").is_file()


def sweep_cells(path: Path) -> list[Path]:
    """Finished cells of a sweep: ``runs/*/`` directories holding ``metrics.json``."""
    runs = path / "runs"
    if not runs.is_dir():
        return []
    return sorted(d for d in runs.iterdir() if d.is_dir() and (d / "metrics.json").is_file())


def _read_csv(
    path: Path, problems: dict[str, str], required: tuple[str, ...]
) -> pd.DataFrame | None:
    if not path.is_file():
        problems[path.name] = "not found"
        return None
    try:
        df = pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError, OSError) as e:
        problems[path.name] = f"could not be read ({type(e).__name__}: {e})"
        return None
    missing = [c for c in required if c not in df.columns]
    if missing:
        problems[path.name] = f"lacks column(s) {', '.join(missing)}"
        return None
    if df.empty:
        problems[path.name] = "has no rows"
        return None
    return df


def load_metrics(path: Path) -> dict[str, Any]:
    """Parse a ``metrics.json``; a broken file is a :class:`GraceError` naming it."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise GraceError(f"cannot read {path}: {e}") from e
    if not isinstance(data, dict):
        raise GraceError(f"{path} must hold a JSON object")
    return data


def load_run(path: str | Path) -> RunData:
    """Load one run directory; only ``metrics.json`` must exist and parse."""
    path = Path(path)
    run = RunData(path=path, metrics=load_metrics(path / "metrics.json"))
    problems = run.problems

    cfg_path = path / "config.yaml"
    if cfg_path.is_file():
        try:
            cfg = yaml.safe_load(cfg_path.read_text())
            run.config = cfg if isinstance(cfg, dict) else None
        except (OSError, yaml.YAMLError) as e:
            problems["config.yaml"] = f"could not be read ({e})"
    else:
        problems["config.yaml"] = "not found"

    run.history = _read_csv(path / "history.csv", problems, ("epoch", "train_loss", "val_rmse"))
    run.grad_stats = _read_csv(path / "gradient_stats.csv", problems, ("epoch",))
    run.predictions = _read_csv(
        path / "predictions.csv", problems, ("unit", "true_rul", "pred_rul")
    )
    run.trajectories = _read_csv(
        path / "trajectories.csv", problems, ("unit", "cycle", "true_rul", "pred_rul")
    )

    norms_path = path / "grad_norms.npy"
    if norms_path.is_file():
        try:
            arr = np.load(norms_path, allow_pickle=False)
            run.grad_norms = np.asarray(arr, dtype=np.float64).ravel()
        except (OSError, ValueError) as e:
            problems["grad_norms.npy"] = f"could not be read ({e})"
    else:
        problems["grad_norms.npy"] = "not found"
    return run


def load_sweep(path: str | Path) -> SweepData:
    """Load every finished cell under ``runs/`` plus results.csv / summary.md / sweep.yaml."""
    path = Path(path)
    sweep = SweepData(path=path, runs=[load_run(d) for d in sweep_cells(path)])
    results = path / "results.csv"
    if results.is_file():
        problems: dict[str, str] = {}
        sweep.results = _read_csv(results, problems, ("dataset", "balancer", "seed"))
        sweep.notes += [f"{name}: {why}" for name, why in problems.items()]
    summary = path / "summary.md"
    if summary.is_file():
        try:
            sweep.summary_md = summary.read_text()
        except (OSError, UnicodeDecodeError) as e:
            sweep.notes.append(f"summary.md could not be read ({e})")
    spec = path / "sweep.yaml"
    if spec.is_file():
        try:
            data = yaml.safe_load(spec.read_text())
            sweep.spec = data if isinstance(data, dict) else None
        except (OSError, yaml.YAMLError) as e:
            sweep.notes.append(f"sweep.yaml could not be read ({e})")
    return sweep


def finite(x: Any) -> float | None:
    """``x`` as a float when it is a finite number, else ``None``."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None
