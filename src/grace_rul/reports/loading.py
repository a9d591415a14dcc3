"""Read run directories and sweep directories for the report.

Run directories are read through :class:`grace_rul.rundir.RunDir` and sweep directories
through :mod:`grace_rul.experiments`. ``metrics.json`` is required (its presence means a
run finished); every other file is optional here: a missing or unreadable one becomes a
note and its figure is skipped, so a report can always be written for a finished run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from grace_rul.errors import GraceError
from grace_rul.experiments.grid import GRID_FILE, RESULTS_FILE, RUNS_DIR, read_grid
from grace_rul.experiments.summary import (
    Summary,
    collect_results,
    result_row,
    results_frame,
    summarise,
)
from grace_rul.rundir import (
    CONFIG,
    EVENTS,
    GRAD_NORMS,
    GRAD_STATS,
    HISTORY,
    METRICS,
    PREDICTIONS,
    TRAJECTORIES,
    RunDir,
    read_csv,
)

NO_RUN_HINT = f"expected {METRICS} + {HISTORY} (a run dir) or {RUNS_DIR}/*/{METRICS} (a sweep dir)"


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
    events: list[str] = field(default_factory=list)  # events.log lines
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
    """The finished cells of a sweep directory, its summary and its optional tables."""

    path: Path
    runs: list[RunData]
    summary: Summary | None = None  # from the cells (the same object that writes summary.md)
    results: pd.DataFrame | None = None  # SWEEP_DIR/results.csv
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
    run = RunDir(path)
    return run.is_finished() and (run / HISTORY).is_file()


def sweep_cells(path: Path) -> list[Path]:
    """Finished cells of a sweep: ``runs/*/`` directories holding ``metrics.json``."""
    runs = path / RUNS_DIR
    if not runs.is_dir():
        return []
    return sorted(d for d in runs.iterdir() if d.is_dir() and RunDir(d).is_finished())


def _why(name: str, exc: GraceError) -> str:
    """RunDir's one-line message without the file name it starts with (notes add it back)."""
    text = str(exc)
    return text[len(name) + 1 :] if text.startswith(f"{name} ") else text


def load_run(path: str | Path) -> RunData:
    """Load one run directory; only ``metrics.json`` must exist and parse."""
    rundir = RunDir(path)
    run = RunData(path=rundir.path, metrics=rundir.read_metrics())
    problems = run.problems

    if (rundir / CONFIG).is_file():
        try:
            run.config = rundir.read_config()
        except GraceError as exc:
            problems[CONFIG] = str(exc)
    else:
        problems[CONFIG] = "not found"

    def table(name: str) -> pd.DataFrame | None:
        try:
            return rundir.read_table(name)
        except GraceError as exc:
            problems[name] = _why(name, exc)
            return None

    run.history = table(HISTORY)
    run.grad_stats = table(GRAD_STATS)
    run.predictions = table(PREDICTIONS)
    run.trajectories = table(TRAJECTORIES)
    try:
        run.grad_norms = rundir.read_grad_norms()
    except GraceError as exc:
        problems[GRAD_NORMS] = _why(GRAD_NORMS, exc)
    try:
        run.events = rundir.read_events()
    except GraceError as exc:
        problems[EVENTS] = _why(EVENTS, exc)
    return run


def load_sweep(path: str | Path) -> SweepData:
    """Load every finished cell under ``runs/``, summarise the sweep, and read results.csv
    and sweep.yaml.

    With a ``sweep.yaml`` the summary is that of ``grace table`` (every grid cell, failed
    and pending ones counted); without one (cells copied together by hand) it is computed
    from the finished cells alone.
    """
    path = Path(path)
    sweep = SweepData(path=path, runs=[load_run(d) for d in sweep_cells(path)])
    results: pd.DataFrame | None = None
    if (path / GRID_FILE).is_file():
        try:
            sweep.spec = read_grid(path).to_dict()
            results = collect_results(path, write=False)
        except GraceError as exc:
            sweep.notes.append(str(exc))
    if results is None:
        results = results_frame(
            [
                {"dataset": r.dataset, "balancer": r.balancer, "seed": r.seed}
                | result_row(r.metrics, "val")
                for r in sweep.runs
            ]
        )
    sweep.summary = summarise(results) if len(results) else None
    if (path / RESULTS_FILE).is_file():
        try:
            sweep.results = read_csv(path / RESULTS_FILE, ("dataset", "balancer", "seed"))
        except GraceError as exc:
            sweep.notes.append(f"{RESULTS_FILE}: {_why(RESULTS_FILE, exc)}")
    return sweep


def finite(x: Any) -> float | None:
    """``x`` as a float when it is a finite number, else ``None``."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None
