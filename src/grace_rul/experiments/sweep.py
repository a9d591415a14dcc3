"""Grids of runs: datasets x balancers x seeds, each cell an ordinary run directory.

``run_sweep`` is idempotent: re-running the same command skips finished cells,
resumes interrupted ones from ``checkpoints/last.pt``, wipes and re-runs cells whose
files are unreadable, retries a failing cell once and then records it in
``failures.json`` while the other cells finish. It ends by writing the tables.
It holds the sweep directory's lock (:mod:`grace_rul.experiments.lock`) while it writes,
so a second sweep on the same directory is refused.
"""

from __future__ import annotations

import copy
import difflib
import shutil
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from tqdm import tqdm

from grace_rul.config import Execution, config_keys, dataset_name, merge_overrides, nested
from grace_rul.errors import GraceError
from grace_rul.experiments.executors import CellExecutor, ExecutorSpec, make_executor
from grace_rul.experiments.grid import (
    AXES,
    GRID_FILE,
    LOCK_FILE,
    LOG_FILE,
    RUNS_DIR,
    Cell,
    CellInspection,
    CellState,
    Grid,
    cell_dir,
    format_value,
    inspect_cell,
    read_failures,
    read_grid,
    write_failures,
    write_grid,
)
from grace_rul.experiments.lock import sweep_lock
from grace_rul.experiments.summary import Summary, write_tables
from grace_rul.resolve import config_from_dict, resolve_config

# Settings the grid axes own; a sweep's overrides may not set them.
AXIS_KEYS = {("data", "dataset"): "datasets", ("balancer", "name"): "balancers", ("seed",): "seeds"}
MAX_ATTEMPTS = 2  # a failing cell is retried once


@dataclass
class CellTask:
    """What a worker needs to run one cell: where, with which config, and how to start."""

    name: str
    run_dir: str
    config: dict[str, Any]
    action: str  # train | resume | rerun (wipe the directory first)
    execution: dict[str, Any] = field(default_factory=dict)  # an Execution's fields


def run_cell(task: CellTask) -> dict[str, Any]:
    """Train one cell (in a worker process or Ray task); never raises, returns an outcome dict."""
    started = time.perf_counter()
    try:
        from grace_rul.trainer import train

        path = Path(task.run_dir)
        if task.action == "rerun":
            _wipe(path)
        metrics = train(
            config_from_dict(task.config),
            path,
            execution=Execution(**task.execution),
            resume=task.action == "resume",
        )
        return {
            "ok": True,
            "name": task.name,
            "rmse_last": metrics["test"]["rmse_last"],
            "seconds": time.perf_counter() - started,
        }
    except Exception as exc:  # reported to the sweep, which retries or records it
        error = str(exc) if isinstance(exc, GraceError) else f"{type(exc).__name__}: {exc}"
        return {
            "ok": False,
            "name": task.name,
            "error": error,
            "traceback": traceback.format_exc(),
            "seconds": time.perf_counter() - started,
        }


# What a sweep does with a cell in each state (a finished cell, absent here, is skipped).
ACTIONS = {
    CellState.MISSING: "train",
    CellState.INTERRUPTED: "resume",
    CellState.CORRUPT: "rerun",
    CellState.INCOMPLETE: "rerun",
}


@dataclass(frozen=True)
class CellPlan:
    """What the sweep finds in one cell's run dir and does with it.

    ``action`` is ``train``, ``resume``, ``rerun`` (wipe the directory first) or None for a
    finished cell (skipped).
    """

    cell: Cell
    path: Path
    inspection: CellInspection

    @property
    def action(self) -> str | None:
        return ACTIONS.get(self.inspection.status)

    @property
    def note(self) -> str | None:
        """The sweep.log line for a cell resumed or re-run, None for the others."""
        state, reason = self.inspection.status, self.inspection.reason
        if self.action == "resume":
            return f"{self.cell.name}: {state} ({reason}); resuming"
        if self.action == "rerun":
            return f"{self.cell.name}: {state} ({reason}); wiping and re-running"
        return None


def plan_cell(sweep_dir: Path, cell: Cell) -> CellPlan:
    """Inspect ``cell``'s run dir under ``sweep_dir`` (reads only) and say what to do with it."""
    path = cell_dir(sweep_dir, cell)
    return CellPlan(cell, path, inspect_cell(path))


def plan_cells(grid: Grid, sweep_dir: Path) -> list[CellPlan]:
    """The plan for every cell of ``grid``, in grid order; starts nothing and writes nothing."""
    return [plan_cell(sweep_dir, cell) for cell in grid.cells()]


def _wipe(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@dataclass
class SweepResult:
    """What one ``run_sweep`` call did, and the tables it wrote."""

    sweep_dir: Path
    grid: Grid
    cells: list[str]
    skipped: list[str] = field(default_factory=list)  # already finished
    trained: list[str] = field(default_factory=list)  # trained from scratch
    resumed: list[str] = field(default_factory=list)  # continued from last.pt
    rerun: list[str] = field(default_factory=list)  # corrupt/incomplete: wiped and re-run
    retried: list[str] = field(default_factory=list)  # failed once, tried again
    failed: dict[str, str] = field(default_factory=dict)  # name -> error after the retry
    seconds: float = 0.0
    results: pd.DataFrame | None = None
    summary: Summary | None = None

    @property
    def ok(self) -> bool:
        return not self.failed

    def add(self, plan: CellPlan) -> None:
        """List ``plan``'s cell under what this call does with it (skipped when finished)."""
        lists = {
            None: self.skipped,
            "train": self.trained,
            "resume": self.resumed,
            "rerun": self.rerun,
        }
        lists[plan.action].append(plan.cell.name)


def _check_overrides(overrides: dict[str, Any] | None) -> dict[str, Any]:
    """Copy ``overrides`` without None values, refusing the keys the grid axes own."""
    out = merge_overrides(copy.deepcopy(overrides or {}))
    for path, axis in AXIS_KEYS.items():
        node: Any = out
        for key in path[:-1]:
            node = node.get(key, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict) and path[-1] in node:
            raise GraceError(
                f"overrides may not set {'.'.join(path)}: it is a sweep axis (use {axis})"
            )
    if "preset" in out:
        raise GraceError("overrides may not set preset: pass preset= (--preset)")
    return out


def _check_axes(
    datasets: list[str], balancers: list[str], seeds: list[int]
) -> tuple[list, list, list]:
    for axis, values in (("datasets", datasets), ("balancers", balancers), ("seeds", seeds)):
        if not values:
            raise GraceError(f"a sweep needs at least one value in {axis}")
        if len(set(values)) != len(values):
            raise GraceError(f"{axis} lists a value twice: {list(values)}")
    out_seeds = []
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise GraceError(f"seeds must be non-negative integers (got {s!r})")
        out_seeds.append(int(s))
    return [dataset_name(d) for d in datasets], [str(b) for b in balancers], out_seeds


def split_values(text: str) -> list[str]:
    """Split ``V1,V2,...`` on the commas outside brackets (``[1, 0],[0.5, 0.5]`` is two)."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts]


def parse_vary(texts: list[str]) -> dict[str, list[Any]]:
    """``["train.clip=0,1", ...]`` -> ``{"train.clip": [0, 1], ...}``; values parsed as ``--set``.

    Refused with one line: no ``=``, an empty or unparsable value, a value listed twice, a key
    given twice. Whether the key exists and the values pass validation is
    :func:`check_vary`'s job.
    """
    vary: dict[str, list[Any]] = {}
    for text in texts:
        key, sep, rest = text.partition("=")
        key = key.strip()
        if not sep or not key or not rest.strip():
            raise GraceError(f"--vary expects KEY=V1,V2,... (got '{text}')")
        if key in vary:
            raise GraceError(f"--vary {key} is given twice: list all its values in one --vary")
        values = []
        for raw in split_values(rest):
            if not raw:
                raise GraceError(f"--vary {text}: an empty value")
            try:
                values.append(yaml.safe_load(raw))
            except yaml.YAMLError:
                raise GraceError(f"--vary {key}: cannot parse the value '{raw}'") from None
        shown = [format_value(v) for v in values]
        if len(set(shown)) != len(shown):
            raise GraceError(f"--vary {key} lists a value twice: {rest}")
        vary[key] = values
    return vary


def _has_key(overrides: dict[str, Any], dotted: str) -> bool:
    node: Any = overrides
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def check_vary(
    vary: dict[str, list[Any]], preset: str | None, shared: dict[str, Any]
) -> dict[str, list[Any]]:
    """Refuse, in one line, a ``--vary`` axis that cannot run: an unknown key (with the
    nearest names), a key a grid axis or ``--set`` owns, or a value failing validation.
    Returns the axes with each value coerced to the key's type (``0`` -> ``0.0``)."""
    known = config_keys()
    owned = {".".join(path): axis for path, axis in AXIS_KEYS.items()}
    out: dict[str, list[Any]] = {}
    for key, values in vary.items():
        if key in owned:
            raise GraceError(f"--vary {key}: it is a sweep axis already (use --{owned[key]})")
        if key == "preset":
            raise GraceError("--vary preset: not a setting (run one sweep per preset)")
        in_dict = any(key.startswith(k + ".") for k in known if k.endswith(".options"))
        if key not in known and not in_dict:
            near = difflib.get_close_matches(key, known, n=4, cutoff=0.6)
            hint = f"did you mean: {', '.join(near)}" if near else "see config.yaml of a run"
            raise GraceError(f"--vary: unknown config key '{key}' ({hint})")
        if _has_key(shared, key):
            raise GraceError(f"--vary {key}: also set by --set/--config; give it in one place")
        coerced = []
        for value in values:
            try:
                cfg = resolve_config(preset, None, merge_overrides(shared, nested([(key, value)])))
            except GraceError as exc:
                raise GraceError(f"--vary {key}={value}: {exc}") from None
            node: Any = cfg.to_dict()
            for part in key.split("."):
                node = node[part]
            coerced.append(node)
        out[key] = coerced
    return out


def cell_overrides(grid: Grid, cell: Cell) -> dict[str, Any]:
    """The override dict that turns the grid's preset into this cell's config."""
    o = copy.deepcopy(grid.overrides)
    for key, value in cell.settings:
        o = merge_overrides(o, nested([(key, value)]))
    o.setdefault("data", {})["dataset"] = cell.dataset
    o.setdefault("balancer", {})["name"] = cell.balancer
    o["seed"] = cell.seed
    return o


class _Log:
    """Appends to SWEEP_DIR/sweep.log and, with a progress bar, echoes above it."""

    def __init__(self, path: Path, echo: bool) -> None:
        self.path, self.echo = path, echo

    def __call__(self, msg: str) -> None:
        with open(self.path, "a") as f:
            f.write(f"{datetime.now().isoformat(timespec='seconds')} {msg}\n")
        if self.echo:
            tqdm.write(msg, file=sys.stderr)


def run_sweep(
    out_dir: str | Path,
    datasets: list[str],
    balancers: list[str],
    seeds: list[int],
    *,
    preset: str | None = None,
    overrides: dict[str, Any] | None = None,
    execution: Execution | None = None,
    executor: ExecutorSpec | None = None,
    extend: bool = False,
    progress: bool = True,
    vary: dict[str, list[Any]] | None = None,
) -> SweepResult:
    """Train every cell of datasets x balancers x seeds into ``out_dir/runs/`` and tabulate.

    ``overrides`` are nested config overrides shared by all cells (e.g.
    ``{"train": {"epochs": 5, "protocol": "val"}}``); they may not set the axes.
    ``execution`` is how each cell runs; its ``threads`` (when > 0) fixes the torch
    threads per cell, otherwise ``executor`` (default: a local pool of one worker) shares
    out the cores (:meth:`ExecutorSpec.threads`). Cells never show progress bars or event lines.
    A directory holding another grid is refused unless ``extend`` (then the axes are
    the union; preset, overrides, protocol and ``vary`` must still match).
    ``vary`` adds axes beside datasets, balancers and seeds: dotted config key -> values
    (``{"train.clip": [0, 1]}``; :func:`parse_vary` reads ``--vary`` texts); every cell
    takes one value of each, and its name ends in them (``...-s42-clip=0``).

    The local pool spawns processes: a script calling this must guard its entry point
    with ``if __name__ == "__main__":`` (the ``grace`` command does).
    """
    started = time.perf_counter()
    sweep_dir = Path(out_dir).resolve()  # absolute: Ray tasks may run elsewhere
    grid = _requested_grid(datasets, balancers, seeds, preset, overrides, vary)
    on_disk = _grid_on_disk(sweep_dir)
    grid = _merge_with_disk(sweep_dir, grid, on_disk, extend)
    executor = executor or ExecutorSpec()
    execution = execution or Execution()
    threads = executor.threads(execution.threads)
    cell_exec = asdict(replace(execution, threads=threads, progress=False, quiet=True))
    cells = grid.cells()
    configs = {
        c.name: resolve_config(grid.preset, None, cell_overrides(grid, c)).to_dict() for c in cells
    }  # every cell validated before anything is written

    with sweep_lock(sweep_dir):  # held until the tables are written; refused if taken
        if _grid_on_disk(sweep_dir) != on_disk:  # another sweep ran in between
            raise GraceError(f"{sweep_dir} changed while this sweep started; run it again")
        (sweep_dir / RUNS_DIR).mkdir(parents=True, exist_ok=True)
        write_grid(sweep_dir, grid)
        log = _Log(sweep_dir / LOG_FILE, echo=progress)
        log(_describe(sweep_dir, grid, executor.kind))
        result = SweepResult(sweep_dir=sweep_dir, grid=grid, cells=[c.name for c in cells])
        todo = _tasks(plan_cells(grid, sweep_dir), result, log, configs, cell_exec)
        keep = configs.keys() - set(result.skipped)  # a finished cell's old failure is over
        failures = {k: v for k, v in read_failures(sweep_dir).items() if k in keep}
        write_failures(sweep_dir, failures)

        bar = tqdm(total=len(cells), initial=len(result.skipped), desc="sweep", unit="cell",
                   disable=not progress, file=sys.stderr, dynamic_ncols=True)  # fmt: skip
        with bar:
            try:
                if todo:
                    with make_executor(executor, threads) as ex:
                        _execute(ex, todo, result, failures, log, bar, sweep_dir)
            except KeyboardInterrupt:
                log("interrupted: run the same command again to resume")
                raise
        _finish(result, started, log)
    return result


def _tasks(
    plans: list[CellPlan],
    result: SweepResult,
    log: _Log,
    configs: dict[str, dict[str, Any]],
    execution: dict[str, Any],
) -> list[tuple[Cell, CellTask]]:
    """File each planned cell in ``result`` and sweep.log; the tasks of those to run."""
    for plan in plans:
        result.add(plan)
        if plan.note:
            log(plan.note)
    if result.skipped:
        log(f"{len(result.skipped)} cells already finished: skipped")
    return [
        (p.cell, CellTask(p.cell.name, str(p.path), configs[p.cell.name], p.action, execution))
        for p in plans
        if p.action is not None
    ]


def _finish(result: SweepResult, started: float, log: _Log) -> None:
    """Write the tables into ``result`` and the sweep.log line that ends the invocation."""
    result.results, result.summary = write_tables(result.sweep_dir)
    result.seconds = time.perf_counter() - started
    done = int((result.results["status"] == CellState.DONE).sum())
    log(
        f"sweep finished in {result.seconds:.1f}s: {done}/{len(result.cells)} cells done, "
        f"{len(result.failed)} failed; tables in {result.sweep_dir}"
    )


def _requested_grid(
    datasets: list[str],
    balancers: list[str],
    seeds: list[int],
    preset: str | None,
    overrides: dict[str, Any] | None,
    vary: dict[str, list[Any]] | None,
) -> Grid:
    """The grid a run_sweep call asks for, every setting checked (one-line GraceErrors)."""
    datasets, balancers, seeds = _check_axes(list(datasets), list(balancers), list(seeds))
    shared = _check_overrides(overrides)
    # balancer options are shared by the whole balancers axis: validate them with each one
    per_balancer = [merge_overrides(shared, {"balancer": {"name": b}}) for b in balancers]
    for other in per_balancer[1:]:
        resolve_config(preset, None, other)
    base = resolve_config(preset, None, per_balancer[0])
    settings = base.to_dict()
    for path in AXIS_KEYS:  # what the axes set differs by cell
        node = settings
        for key in path[:-1]:
            node = node[key]
        node.pop(path[-1], None)
    return Grid(
        datasets,
        balancers,
        seeds,
        preset=base.preset,
        overrides=shared,
        protocol=base.train.protocol,
        vary=check_vary(dict(vary or {}), base.preset, per_balancer[0]),
        settings=settings,
    )


def _merge_with_disk(sweep_dir: Path, grid: Grid, on_disk: Grid | None, extend: bool) -> Grid:
    """The grid to run in ``sweep_dir``: the recorded one when they match, the union with
    ``extend``; a different sweep, or a directory that is no sweep, is refused."""
    if on_disk is None:
        if sweep_dir.is_dir() and any(
            p.name not in (RUNS_DIR, LOCK_FILE) for p in sweep_dir.iterdir()
        ):
            raise GraceError(f"{sweep_dir} exists and is not a sweep directory (no {GRID_FILE})")
        return grid
    diff = grid.differences(on_disk)
    if not diff:  # keep the recorded order; record the settings if an older sweep had none
        return on_disk if on_disk.settings else replace(on_disk, settings=grid.settings)
    axes_only = set(diff) <= set(AXES)
    if not extend or not axes_only:
        hint = " (use --extend to add to it)" if axes_only else " (use another --out)"
        raise GraceError(f"{sweep_dir} holds a different sweep: {'; '.join(diff.values())}{hint}")
    return grid.union(on_disk)


def _describe(sweep_dir: Path, grid: Grid, executor: str) -> str:
    """The first sweep.log line of an invocation: the grid's shape and settings."""
    return (
        f"sweep {sweep_dir}: {len(grid.cells())} cells ({len(grid.datasets)} datasets x "
        f"{len(grid.balancers)} balancers x {len(grid.seeds)} seeds"
        + "".join(f" x {len(v)} {k}" for k, v in grid.vary.items())
        + f"), preset {grid.preset}, "
        f"protocol {grid.protocol}, executor {executor}"
    )


def _grid_on_disk(sweep_dir: Path) -> Grid | None:
    """The grid recorded in ``sweep_dir``, or None for a new sweep."""
    return read_grid(sweep_dir) if (sweep_dir / GRID_FILE).exists() else None


def _execute(
    ex: CellExecutor,
    todo: list[tuple[Cell, CellTask]],
    result: SweepResult,
    failures: dict[str, dict[str, Any]],
    log: _Log,
    bar: tqdm,
    sweep_dir: Path,
) -> None:
    """Submit every task; retry each failure once (re-planned: it may resume); record the rest."""
    inflight: dict[Any, tuple[Cell, CellTask, int]] = {}
    for cell, task in todo:
        inflight[ex.submit(run_cell, task)] = (cell, task, 1)
    n_failed = 0

    def show() -> None:
        bar.set_postfix(
            done=bar.n - n_failed, running=min(len(inflight), ex.slots), failed=n_failed
        )

    show()
    while inflight:
        for handle, outcome in ex.wait(list(inflight)):
            cell, task, attempt = inflight.pop(handle)
            if outcome.get("ok"):
                log(
                    f"{cell.name}: done in {outcome['seconds']:.1f}s "
                    f"(test rmse_last {outcome['rmse_last']:.3f})"
                )
                failures.pop(cell.name, None)
                write_failures(sweep_dir, failures)
                bar.update(1)
            elif attempt < MAX_ATTEMPTS:
                log(f"{cell.name}: failed ({outcome['error']}); retrying once")
                result.retried.append(cell.name)
                again = plan_cell(sweep_dir, cell)  # it may resume now
                if again.note:
                    log(again.note)
                if again.action is None:  # finished after all (metrics written, then it died)
                    bar.update(1)
                    continue
                retry = replace(task, action=again.action)
                inflight[ex.submit(run_cell, retry)] = (cell, retry, attempt + 1)
            else:
                log(f"{cell.name}: failed again ({outcome['error']}); recorded in failures.json")
                failures[cell.name] = {
                    "dataset": cell.dataset,
                    "balancer": cell.balancer,
                    "seed": cell.seed,
                    **({"variant": cell.variant} if cell.settings else {}),
                    "attempts": attempt,
                    "error": outcome["error"],
                    "traceback": outcome.get("traceback", ""),
                    "when": datetime.now().isoformat(timespec="seconds"),
                }
                write_failures(sweep_dir, failures)
                result.failed[cell.name] = outcome["error"]
                n_failed += 1
                bar.update(1)
            show()
