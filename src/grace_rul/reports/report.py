"""``write_report``: PNG figures plus one self-contained HTML page for a run or a sweep."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd
import yaml

from grace_rul.errors import GraceError
from grace_rul.experiments.grid import GRID_FILE, RESULTS_FILE
from grace_rul.io import atomic_write_bytes, atomic_write_text
from grace_rul.reports import figures as F
from grace_rul.reports import page as P
from grace_rul.reports import studies as S
from grace_rul.reports.loading import (
    NO_RUN_HINT,
    RunData,
    SweepData,
    is_run_dir,
    load_run,
    load_sweep,
    sweep_cells,
)
from grace_rul.rundir import CONFIG, EVENTS, HISTORY, METRICS, is_fold_root

HTML_NAME = "report.html"
# Every PNG name a report can write; stale ones from an earlier report are removed.
_FIGURE_NAMES = (
    "training_curves",
    "task_weights",
    "grad_norms",
    "predictions",
    "trajectories",
    "confusion",
    "box_rmse",
    "box_nasa",
    *S.FIGURE_NAMES,
)


def _draw(
    builders: list[tuple[str, Callable[[], F.Rendered]]], out: Path
) -> tuple[list[str], set[str]]:
    """Draw each figure, write its PNG, return the HTML blocks and the names written."""
    blocks, written = [], set()
    for title, build in builders:
        try:
            rendered = build()
        except F.Skip as skip:
            blocks.append(P.skipped_html(title, str(skip)))
            continue
        png = rendered.png_bytes()
        atomic_write_bytes(out / f"{rendered.name}.png", png)
        written.add(rendered.name)
        blocks.append(P.figure_html(rendered.title, rendered.subtitle, png))
    return blocks, written


def _run_page(run: RunData, out: Path) -> tuple[str, set[str]]:
    builders: list[tuple[str, Callable[[], F.Rendered]]] = [
        (F.TITLE_CURVES, lambda: F.training_curves(run)),
        (F.TITLE_WEIGHTS, lambda: F.task_weights(run)),
        (F.TITLE_GRAD_NORMS, lambda: F.grad_norm_histogram(run)),
        (F.TITLE_PREDICTIONS, lambda: F.predictions_plot(run)),
        (F.TITLE_TRAJECTORIES, lambda: F.trajectories_plot(run)),
        (F.TITLE_CONFUSION, lambda: F.confusion_plot(run)),
    ]
    blocks, written = _draw(builders, out)
    m = run.metrics
    heading = f"{run.dataset} · {run.balancer} · seed {run.seed}"
    body = [
        f'<h1>GRACE run report</h1><p class="sub">{P.esc(heading)} · preset '
        f"{P.esc(m.get('preset', '?'))} · <code>{P.esc(run.path.resolve())}</code></p>",
        P.protocol_banner([m.get("protocol")], [m.get("protocol_label")]),
        P.run_metrics_html(run),
        "<h2>Figures</h2>",
        *blocks,
        P.notes_html(run.notes),
    ]
    if run.config:
        cfg = yaml.safe_dump(run.config, sort_keys=False)
        body.append(f"<details><summary>{CONFIG}</summary><pre>{P.esc(cfg)}</pre></details>")
    if run.events:
        lines = run.events[-60:]
        body.append(
            f"<details><summary>{EVENTS} (last {len(lines)} lines)</summary>"
            f"<pre>{P.esc(chr(10).join(lines))}</pre></details>"
        )
    return P.document(f"GRACE run report — {heading}", "\n".join(body)), written


def _unfinished(sweep: SweepData, cells: pd.DataFrame) -> pd.DataFrame | None:
    """results.csv rows without a finished cell (failed, pending or interrupted)."""
    res = sweep.results
    if res is None:
        return None
    done = {(str(d), str(b), str(s)) for d, b, s in zip(cells.dataset, cells.balancer, cells.seed)}
    keep = [
        (str(d), str(b), str(s)) not in done
        for d, b, s in zip(res["dataset"], res["balancer"], res["seed"])
    ]
    return res.loc[keep]


def _sweep_page(sweep: SweepData, out: Path) -> tuple[str, set[str]]:
    cells = F.cells_table(sweep.runs)
    builders: list[tuple[str, Callable[[], F.Rendered]]] = [
        (F.TITLE_BOX_RMSE, lambda: F.metric_boxplot(cells, "rmse_last")),
        (F.TITLE_BOX_NASA, lambda: F.metric_boxplot(cells, "nasa_score")),
        (F.TITLE_WEIGHTS_SWEEP, lambda: F.sweep_task_weights(sweep.runs)),
    ]
    if sweep.summary is not None:
        stats = sweep.summary.stats
        builders.append((F.TITLE_CD, lambda: F.cd_diagram(stats)))
    blocks, written = _draw(builders, out)
    datasets = ", ".join(sorted(cells["dataset"].astype(str).unique()))
    balancers = ", ".join(sorted(cells["balancer"].astype(str).unique()))
    body = [
        "<h1>GRACE sweep report</h1>"
        f'<p class="sub">{len(cells)} finished run(s) · subsets {P.esc(datasets)} · '
        f"balancers {P.esc(balancers)} · <code>{P.esc(sweep.path.resolve())}</code></p>",
        P.protocol_banner(
            [r.metrics.get("protocol") for r in sweep.runs],
            [r.metrics.get("protocol_label") for r in sweep.runs],
        ),
        "<h2>Summary</h2>",
    ]
    if sweep.summary is not None:
        body.append(
            '<p class="sub">Computed from the finished cells: mean ± sample std over seeds.</p>'
            + sweep.summary.to_html()
        )
    body += ["<h2>Figures</h2>", *blocks, "<h2>Runs</h2>"]
    formats = {
        "rmse_last": P.fmt,
        "nasa_score": lambda v: P.fmt(v, 1),
        "mae": P.fmt,
        "health_accuracy": P.pct,
        "best_epoch": P.fmt,
        "epochs_run": P.fmt,
    }
    body.append(P.table_html(cells, formats))
    unfinished = _unfinished(sweep, cells)
    if sweep.results is not None and "status" in sweep.results.columns:
        counts = sweep.results["status"].astype(str).value_counts()
        text = ", ".join(f"{k}: {v}" for k, v in counts.items())
        body.append(f"<p>{RESULTS_FILE} status: {P.esc(text)}</p>")
    if unfinished is not None and not unfinished.empty:
        body.append(
            f"<h3>{len(unfinished)} row(s) in {RESULTS_FILE} without a finished run dir</h3>"
            + P.table_html(unfinished)
        )
    notes = list(sweep.notes)
    for run in sweep.runs:
        notes += [f"{run.path.name}: {n}" for n in run.notes]
    body.append(P.notes_html(notes))
    if sweep.spec:
        spec = yaml.safe_dump(sweep.spec, sort_keys=False)
        body.append(f"<details><summary>{GRID_FILE}</summary><pre>{P.esc(spec)}</pre></details>")
    return P.document(f"GRACE sweep report — {sweep.path.name}", "\n".join(body)), written


def write_report(path: str | Path, out: Path | None = None) -> Path:
    """Write figures (PNG) and one self-contained ``report.html`` for a run or sweep dir.

    ``path`` is a run dir (metrics.json + history.csv), a cross-validation dir
    (``grace train --folds``), a ``grace tune`` study dir or a sweep dir
    (runs/*/metrics.json); ``out`` defaults to ``path/report``. Returns the HTML path.
    Optional files that are missing only drop their figure (with a note on the page).
    """
    path = Path(path)
    if not path.exists():
        raise GraceError(f"no such directory: {path}")
    if not path.is_dir():
        raise GraceError(f"not a directory: {path} (give a run dir or a sweep dir)")
    if S.is_study_dir(path):
        kind = "study"
    elif is_fold_root(path) and (path / METRICS).is_file():
        kind = "folds"
    elif is_run_dir(path):
        kind = "run"
    elif sweep_cells(path):
        kind = "sweep"
    elif (path / HISTORY).is_file():
        raise GraceError(f"run in {path} has not finished: {HISTORY} is there but {METRICS} is not")
    else:
        raise GraceError(f"no run found in {path}: {NO_RUN_HINT}")

    out = Path(out) if out is not None else path / "report"
    if out.exists() and not out.is_dir():
        raise GraceError(f"report output {out} exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise GraceError(f"cannot create report directory {out}: {e}") from e

    if kind == "study":
        text, written = S.study_page(path, lambda b: _draw(b, out))
    elif kind == "folds":
        text, written = S.folds_page(path, lambda b: _draw(b, out))
    elif kind == "run":
        text, written = _run_page(load_run(path), out)
    else:
        text, written = _sweep_page(load_sweep(path), out)
    for name in _FIGURE_NAMES:
        if name not in written:
            (out / f"{name}.png").unlink(missing_ok=True)
    html_path = out / HTML_NAME
    atomic_write_text(html_path, text)
    return html_path
