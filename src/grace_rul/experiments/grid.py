"""The sweep grid (``sweep.yaml``), its cells, and what state each cell's run dir is in.

A sweep directory holds::

    sweep.yaml       the grid: datasets, balancers, seeds, vary, preset, overrides, protocol
    runs/{dataset}-{balancer}-s{seed}[-{key}={value}...]/   one ordinary run dir per cell
    failures.json    cells that failed twice, with their error
    sweep.log        what each invocation did (skipped, resumed, wiped, failed)
    results.csv, summary.md, summary.csv   the tables (grace_rul.experiments.summary)
    .lock            held by the running ``grace sweep`` (grace_rul.experiments.lock)

A cell's run directory is read only through :class:`grace_rul.rundir.RunDir`.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import yaml

from grace_rul.config import config_diff
from grace_rul.errors import GraceError
from grace_rul.io import atomic_write_json, atomic_write_text, read_yaml_file
from grace_rul.rundir import CONFIG, LAST, METRICS, RunDir, is_fold_root

GRID_FILE = "sweep.yaml"
FAILURES_FILE = "failures.json"
LOG_FILE = "sweep.log"
RESULTS_FILE = "results.csv"
SUMMARY_MD_FILE = "summary.md"
SUMMARY_CSV_FILE = "summary.csv"
LOCK_FILE = ".lock"
RUNS_DIR = "runs"
AXES = ("datasets", "balancers", "seeds")


@dataclass(frozen=True)
class Cell:
    """One point of the grid: a dataset, a balancer, a seed and one value per ``--vary`` axis.

    ``settings`` holds ``(dotted config key, value)`` pairs in the grid's axis order; they
    name the cell after its seed (``FD002-gaba-s42-clip=0-ema_decay=0``).
    """

    dataset: str
    balancer: str
    seed: int
    settings: tuple[tuple[str, Any], ...] = ()

    @property
    def variant(self) -> str:
        """The ``--vary`` values as ``key=value`` words (short keys), ``""`` without axes."""
        return variant_label(self.settings)

    @property
    def name(self) -> str:
        # A dataset file names its cells by its file name (no directories in a cell name).
        base = f"{Path(self.dataset).stem}-{self.balancer}-s{self.seed}"
        return f"{base}-{self.variant.replace(' ', '-')}" if self.settings else base


_SAFE = re.compile(r"[^A-Za-z0-9._+=-]+")


def format_value(value: Any) -> str:
    """A ``--vary`` value as filesystem-safe text: ``0``, ``0.999``, ``true``, ``1_0``."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, (list, tuple)):
        text = "_".join(format_value(v) for v in value)
    elif isinstance(value, float):
        text = str(int(value)) if value.is_integer() else repr(value)
    else:
        text = str(value)
    return _SAFE.sub("_", text).strip("_") or "_"


def short_keys(keys: list[str]) -> dict[str, str]:
    """Dotted key -> the shortest unique trailing part (``train.clip`` -> ``clip``)."""
    out: dict[str, str] = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            tail = ".".join(parts[-n:])
            if sum(1 for k in keys if k == tail or k.endswith("." + tail)) == 1:
                out[key] = tail
                break
        else:
            out[key] = key
    return out


def variant_label(settings: tuple[tuple[str, Any], ...] | list[tuple[str, Any]]) -> str:
    """``clip=0 ema_decay=0`` for ``(("train.clip", 0.0), ("train.ema_decay", 0.0))``."""
    short = short_keys([k for k, _ in settings])
    return " ".join(f"{short[k]}={format_value(v)}" for k, v in settings)


@dataclass
class Grid:
    """What a sweep directory trains: the three axes plus the settings shared by all cells."""

    datasets: list[str]
    balancers: list[str]
    seeds: list[int]
    preset: str
    overrides: dict[str, Any] = field(default_factory=dict)
    protocol: str = "val"
    vary: dict[str, list[Any]] = field(default_factory=dict)  # extra axes: key -> values
    # The resolved config every cell starts from (preset + overrides, axes left out), so a
    # restart sees when a preset's values or GRACE's defaults moved under finished cells.
    # Empty for sweeps written before it was recorded.
    settings: dict[str, Any] = field(default_factory=dict)

    def combinations(self) -> list[tuple[tuple[str, Any], ...]]:
        """Every combination of the ``vary`` axes (one empty combination without axes)."""
        keys = list(self.vary)
        return [tuple(zip(keys, values)) for values in itertools.product(*self.vary.values())]

    def cells(self) -> list[Cell]:
        return [
            Cell(d, b, s, combo)
            for d in self.datasets
            for b in self.balancers
            for combo in self.combinations()
            for s in self.seeds
        ]

    def to_dict(self) -> dict[str, Any]:
        """The ``sweep.yaml`` content; ``vary`` only when there are extra axes (so grids
        without them read and write exactly as before)."""
        d = asdict(self)
        for key in ("vary", "settings"):
            if not d[key]:
                del d[key]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Grid:
        try:
            return cls(
                datasets=[str(x) for x in d["datasets"]],
                balancers=[str(x) for x in d["balancers"]],
                seeds=[int(x) for x in d["seeds"]],
                preset=str(d["preset"]),
                overrides=dict(d.get("overrides") or {}),
                protocol=str(d.get("protocol", "val")),
                vary={str(k): list(v) for k, v in (d.get("vary") or {}).items()},
                settings=dict(d.get("settings") or {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise GraceError(
                f"{GRID_FILE} is not a valid sweep grid ({type(exc).__name__}: {exc})"
            ) from None

    def differences(self, other: Grid) -> dict[str, str]:
        """What differs from ``other`` (the grid on disk): field name -> human-readable text."""
        out: dict[str, str] = {}
        for axis in AXES:
            mine, theirs = getattr(self, axis), getattr(other, axis)
            if set(mine) != set(theirs):
                added = [x for x in mine if x not in theirs]
                missing = [x for x in theirs if x not in mine]
                parts = [f"new: {_show(added)}"] if added else []
                if missing:
                    parts.append(f"not requested: {_show(missing)}")
                out[axis] = (
                    f"{axis} {_show(mine)} vs {_show(theirs)} in {GRID_FILE} ({'; '.join(parts)})"
                )
        for key in ("preset", "protocol", "overrides", "vary"):
            if getattr(self, key) != getattr(other, key):
                out[key] = f"{key} {getattr(self, key)!r} vs {getattr(other, key)!r} in {GRID_FILE}"
        if self.settings and other.settings and "preset" not in out and "overrides" not in out:
            keys = config_diff(other.settings, self.settings)
            if keys:
                out["settings"] = (
                    f"the settings of preset {self.preset!r} differ from those its cells were "
                    f"trained with ({', '.join(keys)}; the preset or GRACE changed)"
                )
        return out

    def union(self, other: Grid) -> Grid:
        """The grid with ``other``'s axis values first, then this one's new values."""
        merged = {
            a: list(getattr(other, a)) + [x for x in getattr(self, a) if x not in getattr(other, a)]
            for a in AXES
        }
        return Grid(
            **merged,
            preset=self.preset,
            overrides=self.overrides,
            protocol=self.protocol,
            vary=self.vary,
            settings=self.settings or other.settings,
        )


def _show(values: list[Any]) -> str:
    return "[" + ", ".join(str(v) for v in values) + "]"


def read_grid(sweep_dir: str | Path) -> Grid:
    """The grid recorded in ``sweep_dir/sweep.yaml``; a missing or broken file is a GraceError."""
    path = Path(sweep_dir) / GRID_FILE
    if not path.is_file():
        raise GraceError(f"{sweep_dir} is not a sweep directory ({GRID_FILE} not found)")
    data = read_yaml_file(path)  # bounded: an alias bomb is refused
    if not isinstance(data, dict):
        raise GraceError(f"{path} must hold a mapping")
    return Grid.from_dict(data)


def write_grid(sweep_dir: str | Path, grid: Grid) -> None:
    atomic_write_text(Path(sweep_dir) / GRID_FILE, yaml.safe_dump(grid.to_dict(), sort_keys=False))


def cell_dir(sweep_dir: str | Path, cell: Cell) -> Path:
    return Path(sweep_dir) / RUNS_DIR / cell.name


# ---- the state of one cell's run directory


class CellState(str, Enum):
    """The state of one cell, as ``sweep.log``, ``results.csv`` and the summary spell it.

    A cell's run dir is in one of the first five (:func:`inspect_cell`); the results table
    also says ``failed`` (recorded in failures.json) and ``pending`` (missing or incomplete).
    """

    DONE = "done"
    MISSING = "missing"
    INTERRUPTED = "interrupted"
    CORRUPT = "corrupt"
    INCOMPLETE = "incomplete"
    FAILED = "failed"
    PENDING = "pending"

    # Printed as its value (``done``), as the plain strings it replaces were.
    __str__ = str.__str__
    __format__ = str.__format__


@dataclass
class CellInspection:
    """What is in a cell's run dir: its ``status`` and why."""

    status: CellState
    reason: str = ""
    metrics: dict[str, Any] | None = None


def read_metrics(run: RunDir) -> dict[str, Any]:
    """A finished cell's metrics (:meth:`RunDir.read_metrics`) that also hold a numeric
    test.rmse_last; ``ValueError`` with a short reason otherwise (it goes into sweep.log)."""
    try:
        data = run.read_metrics()
    except GraceError as exc:
        # sweep.log keeps its short form: the type of the JSON/OS error behind RunDir's
        # message (which names the full path); a file that parses is not a JSON object.
        cause = exc.__context__
        if cause is None:
            raise ValueError(f"{METRICS} is not a JSON object") from None
        raise ValueError(f"unreadable {METRICS} ({type(cause).__name__})") from None
    if not isinstance(data.get("test"), dict):
        raise ValueError(f"{METRICS} has no 'test' section")
    if not isinstance(data["test"].get("rmse_last"), (int, float)):
        raise ValueError(f"{METRICS} has no test.rmse_last")
    return data


def inspect_cell(path: Path, *, check_checkpoint: bool = True) -> CellInspection:
    """Classify a cell's run dir.

    ``done``: metrics.json valid (with test.rmse_last). ``missing``: no dir or an empty one.
    ``interrupted``: no metrics.json, a loadable checkpoints/last.pt and a config.yaml -> resume.
    ``corrupt``: metrics.json, last.pt or config.yaml unreadable -> wipe and re-run.
    ``incomplete``: files but no metrics.json and no last.pt (killed in its first epoch) -> wipe.
    With ``check_checkpoint=False`` last.pt is only tested for existence (cheap; for tables).
    """
    if path.exists() and not path.is_dir():
        return CellInspection(CellState.CORRUPT, f"{path.name} is a file, not a run directory")
    if not path.is_dir() or not any(path.iterdir()):
        return CellInspection(CellState.MISSING)
    run = RunDir(path)
    if (run / METRICS).exists():
        try:
            return CellInspection(CellState.DONE, metrics=read_metrics(run))
        except ValueError as exc:
            return CellInspection(CellState.CORRUPT, str(exc))
    if not run.last.exists():
        if is_fold_root(path):  # a cross-validation: its finished folds are kept
            return CellInspection(CellState.INTERRUPTED, "cross-validation folds unfinished")
        return CellInspection(CellState.INCOMPLETE, f"no {METRICS} and no {LAST}")
    if not check_checkpoint:
        return CellInspection(CellState.INTERRUPTED, f"{LAST} present")
    try:
        saved = run.read_config()
    except GraceError:
        saved = {}
    if "train" not in saved:
        # The trainer needs config.yaml to resume.
        return CellInspection(CellState.CORRUPT, f"{CONFIG} missing or unreadable")
    from grace_rul.checkpoint import load_checkpoint  # torch: only when there is a checkpoint

    try:
        state = load_checkpoint(run.last)
    except GraceError as exc:
        return CellInspection(CellState.CORRUPT, f"unreadable {LAST} ({exc})")
    if not isinstance(state.get("loop"), dict) or "epoch" not in state["loop"]:
        return CellInspection(CellState.CORRUPT, f"{LAST} is not a resumable checkpoint")
    epoch = int(state["loop"]["epoch"])
    return CellInspection(CellState.INTERRUPTED, f"{LAST} after epoch {epoch}")


# ---- failures.json: cells that failed twice in the latest attempt


def read_failures(sweep_dir: str | Path) -> dict[str, dict[str, Any]]:
    path = Path(sweep_dir) / FAILURES_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def write_failures(sweep_dir: str | Path, failures: dict[str, dict[str, Any]]) -> None:
    path = Path(sweep_dir) / FAILURES_FILE
    if failures:
        atomic_write_json(path, failures)
    elif path.exists():
        os.remove(path)
