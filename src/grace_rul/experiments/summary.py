"""Result tables of a sweep: one row per cell, and balancers x subsets summaries.

One :class:`Summary` renders every format: Markdown (``summary.md``, ``grace table``),
CSV (``summary.csv``), LaTeX (``grace table --format latex``) and HTML (the sweep report).
Summary conventions (used by every format):

- a table cell is ``mean ± std (n=k)`` over the seeds that finished; std is the
  sample standard deviation (ddof=1). With a single seed the spread is unknown
  and shown as ``n/a`` (empty in CSV), never as a misleading ``0.00``;
- failed or unfinished cells are left out of the statistics (``n`` says how many
  seeds are behind each number); a combination with no finished seed shows ``—``;
- the best (lowest mean) value of each subset column is in bold; entries whose means
  print the same at the precision shown (2 decimals RMSE, 1 NASA) are all bold;
- every table states its protocol: ``validation-selected`` (checkpoint chosen on
  validation units) or ``test-selected (optimistic)`` (the write-up's protocol).
"""

from __future__ import annotations

import html
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from grace_rul.config import PROTOCOL_LABELS
from grace_rul.errors import GraceError
from grace_rul.experiments.grid import (
    RESULTS_FILE,
    SUMMARY_CSV_FILE,
    SUMMARY_MD_FILE,
    CellState,
    cell_dir,
    inspect_cell,
    read_failures,
    read_grid,
    short_keys,
)
from grace_rul.io import atomic_write_text

RESULT_COLUMNS = [
    "dataset",
    "balancer",
    "variant",
    "seed",
    "status",
    "rmse_last",
    "nasa_score",
    "mae",
    "health_accuracy",
    "best_epoch",
    "epochs_run",
    "seconds",
    "protocol",
    "error",
    "cv_rmse",
]
SUMMARY_COLUMNS = [
    "balancer",
    "dataset",
    "n",
    "rmse_mean",
    "rmse_std",
    "nasa_mean",
    "nasa_std",
    "best_rmse",
    "best_nasa",
    "rmse_text",
    "nasa_text",
    "protocol",
]
FORMATS = ("markdown", "latex", "csv")  # grace table; HTML is Summary.to_html (the report)
# The test metrics every results table shows: (key, column in results, heading, decimals)
TABLE_METRICS = (
    ("rmse", "rmse_last", "Test RMSE (last window)", 2),
    ("nasa", "nasa_score", "NASA score", 1),
)
# Cross-validated cells (data.folds >= 2) also show their CV score, beside the test score.
CV_METRIC = ("cv", "cv_rmse", "CV score (out-of-fold RMSE, validation)", 2)
DECIMALS = {key: decimals for key, _, _, decimals in (*TABLE_METRICS, CV_METRIC)}


def collect_results(sweep_dir: str | Path, *, write: bool = True) -> pd.DataFrame:
    """One row per grid cell with its status and test metrics; written to ``results.csv``.

    ``status`` is ``done``, ``failed`` (see failures.json / the ``error`` column),
    ``interrupted`` (has last.pt, re-run the sweep to resume), ``corrupt`` or ``pending``.
    """
    sweep_dir = Path(sweep_dir)
    grid = read_grid(sweep_dir)
    failures = read_failures(sweep_dir)
    rows: list[dict[str, Any]] = []
    short = short_keys(list(grid.vary))
    for cell in grid.cells():
        state = inspect_cell(cell_dir(sweep_dir, cell), check_checkpoint=False)
        row: dict[str, Any] = {
            "dataset": cell.dataset,
            "balancer": cell.balancer,
            "variant": cell.variant,
            "seed": cell.seed,
            "protocol": grid.protocol,
            **{short[k]: v for k, v in cell.settings},
        }
        if state.status == CellState.DONE:
            row.update(result_row(state.metrics or {}, grid.protocol))
        elif cell.name in failures:
            row.update(status=CellState.FAILED, error=failures[cell.name].get("error", ""))
        elif state.status in (CellState.MISSING, CellState.INCOMPLETE):
            row.update(status=CellState.PENDING)
        else:
            row.update(status=state.status)
        rows.append(row)
    df = results_frame(rows, extra=[short[k] for k in grid.vary])
    df["seed"] = df["seed"].astype(int)
    if write:
        atomic_write_text(sweep_dir / RESULTS_FILE, df.to_csv(index=False))
    return df


def result_row(metrics: dict[str, Any], protocol: str) -> dict[str, Any]:
    """The result columns of one finished run's metrics (``protocol`` when they name none)."""
    test = metrics.get("test") if isinstance(metrics.get("test"), dict) else {}
    return {
        "status": CellState.DONE,
        "rmse_last": test.get("rmse_last"),
        "nasa_score": test.get("nasa_score"),
        "mae": test.get("mae"),
        "health_accuracy": test.get("health_accuracy"),
        "best_epoch": metrics.get("best_epoch"),
        "epochs_run": metrics.get("epochs_run"),
        "seconds": metrics.get("seconds"),
        "protocol": metrics.get("protocol", protocol),
        "cv_rmse": (metrics.get("cv") or {}).get("rmse"),
    }


def results_frame(rows: list[dict[str, Any]], extra: list[str] | None = None) -> pd.DataFrame:
    """Result rows (dataset, balancer, seed, status, ...) as a table of ``RESULT_COLUMNS``,
    then one column per ``--vary`` axis (``extra``, short key names)."""
    df = pd.DataFrame(rows, columns=RESULT_COLUMNS + list(extra or []))
    df["variant"] = df["variant"].astype(object).where(df["variant"].notna(), "")
    for col in ("rmse_last", "nasa_score", "mae", "health_accuracy", "seconds", "cv_rmse"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    for col in ("best_epoch", "epochs_run"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("Int64")
    df["error"] = df["error"].astype(object).where(df["error"].notna(), "")
    return df


def protocol_label(protocols: list[str]) -> str:
    """The protocol line for a set of protocol keys (``val`` / ``paper``)."""
    labels = [PROTOCOL_LABELS.get(p, p) for p in dict.fromkeys(protocols)]
    if not labels:
        return "unknown"
    if len(labels) > 1:
        return "MIXED: " + " and ".join(labels)
    return labels[0]


def format_stat(mean: float, std: float, n: int, decimals: int, pm: str = "±") -> str:
    """``mean ± std (n=k)``; ``n/a`` for the spread of one seed; ``—`` with no seed."""
    if n == 0 or not math.isfinite(mean):
        return "—"
    spread = f"{std:.{decimals}f}" if n > 1 and math.isfinite(std) else "n/a"
    return f"{mean:.{decimals}f} {pm} {spread} (n={n})"


@dataclass
class Summary:
    """Mean/std over seeds per (balancer, subset), with formatters for every output format.

    ``stats`` has one row per (balancer, dataset) with the columns of ``SUMMARY_COLUMNS``.
    """

    stats: pd.DataFrame
    balancers: list[str]
    datasets: list[str]
    protocol: str
    counts: dict[str, int]
    metrics: tuple[tuple[str, str, str, int], ...] = TABLE_METRICS  # with CV_METRIC when folds

    def _entry(self, balancer: str, dataset: str, key: str, pm: str) -> tuple[str, bool]:
        """One table entry of metric ``key``: its text and whether it is the subset's best."""
        s = self.stats
        row = s[(s["balancer"] == balancer) & (s["dataset"] == dataset)].iloc[0]
        text = format_stat(row[f"{key}_mean"], row[f"{key}_std"], int(row["n"]), DECIMALS[key], pm)
        return text, bool(row[f"best_{key}"])

    def _footnote(self) -> str:
        c = self.counts
        return (
            f"{c.get('done', 0)} of {c.get('total', 0)} cells done, {c.get('failed', 0)} failed, "
            f"{c.get('total', 0) - c.get('done', 0) - c.get('failed', 0)} not finished. "
            "Mean ± sample std (ddof=1) over seeds; n = seeds behind each number; "
            "n/a = a single seed; bold = lowest mean per subset."
        )

    def to_markdown(self, title: str | None = None) -> str:
        lines = [f"# {title}", ""] if title else []
        lines += [f"Protocol: **{self.protocol}**", "", self._footnote(), ""]
        for key, _, heading, _ in self.metrics:
            lines += [f"## {heading}", ""]
            lines.append("| balancer | " + " | ".join(self.datasets) + " |")
            lines.append("|---|" + "---|" * len(self.datasets))
            for b in self.balancers:
                cells = []
                for d in self.datasets:
                    text, best = self._entry(b, d, key, "±")
                    cells.append(f"**{text}**" if best else text)
                lines.append(f"| {b} | " + " | ".join(cells) + " |")
            lines.append("")
        return "\n".join(lines)

    def to_html(self, title: str | None = None) -> str:
        """An HTML fragment (every text escaped): the protocol line, the footnote and one
        table per metric, best entries in ``<strong>``; headings start at ``<h3>``."""
        esc = html.escape
        parts = [f"<h3>{esc(title)}</h3>"] if title else []
        parts += [
            f"<p>Protocol: <strong>{esc(self.protocol)}</strong></p>",
            f"<p>{esc(self._footnote())}</p>",
        ]
        head = "".join(f"<th>{esc(c)}</th>" for c in ["balancer", *self.datasets])
        level = 4 if title else 3
        for key, _, heading, _ in self.metrics:
            rows = []
            for b in self.balancers:
                cells = [f"<td>{esc(b)}</td>"]
                for d in self.datasets:
                    text, best = self._entry(b, d, key, "±")
                    text = f"<strong>{esc(text)}</strong>" if best else esc(text)
                    cells.append(f"<td>{text}</td>")
                rows.append(f"<tr>{''.join(cells)}</tr>")
            parts.append(
                f"<h{level}>{esc(heading)}</h{level}><table><thead><tr>{head}</tr></thead>"
                f"<tbody>{''.join(rows)}</tbody></table>"
            )
        return "\n".join(parts)

    def to_latex(self, caption: str | None = None) -> str:
        cols = "l" + "cc" * len(self.datasets)
        head1 = " & ".join(rf"\multicolumn{{2}}{{c}}{{{_tex(d)}}}" for d in self.datasets)
        rules = " ".join(
            rf"\cmidrule(lr){{{2 + 2 * i}-{3 + 2 * i}}}" for i in range(len(self.datasets))
        )
        head2 = " & ".join(["RMSE & Score"] * len(self.datasets))
        body = []
        for b in self.balancers:
            cells = []
            for d in self.datasets:
                for key, _, _, _ in TABLE_METRICS:
                    text, best = self._entry(b, d, key, r"$\pm$")
                    text = text.replace("—", "---")
                    cells.append(rf"\textbf{{{text}}}" if best else text)
            body.append(f"{_tex(b)} & " + " & ".join(cells) + r" \\")
        cap = caption or (
            f"Test RMSE (last window) and NASA score, mean $\\pm$ sample std over seeds "
            f"(n = seeds per entry); protocol: {_tex(self.protocol)}. Bold: lowest mean per subset."
        )
        return "\n".join(
            [
                r"\begin{table}[t]",
                r"\centering",
                rf"\caption{{{cap}}}",
                rf"\begin{{tabular}}{{{cols}}}",
                r"\toprule",
                rf"Balancer & {head1} \\",
                rules,
                rf" & {head2} \\",
                r"\midrule",
                *body,
                r"\bottomrule",
                r"\end{tabular}",
                r"\end{table}",
                "",
            ]
        )

    def to_csv(self) -> str:
        buf = io.StringIO()
        self.stats.to_csv(buf, index=False, columns=SUMMARY_COLUMNS)
        return buf.getvalue()


_TEX_ESCAPES = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\^{}",
}


def _tex(text: str) -> str:
    return "".join(_TEX_ESCAPES.get(ch, ch) for ch in text)


def row_labels(df: pd.DataFrame) -> pd.Series:
    """The summary row of each result: the balancer, then its ``--vary`` values if any
    (``gaba clip=0 ema_decay=0``)."""
    balancer = df["balancer"].astype(str)
    if "variant" not in df.columns:
        return balancer
    variant = df["variant"].fillna("").astype(str)
    return balancer.where(variant == "", balancer + " " + variant)


def summarise(df: pd.DataFrame) -> Summary:
    """Balancers x subsets statistics of a :func:`collect_results` frame (finished cells only);
    a sweep with ``--vary`` axes has one row per balancer and combination of values."""
    missing = {
        "dataset",
        "balancer",
        "seed",
        "status",
        "rmse_last",
        "nasa_score",
        "protocol",
    } - set(df.columns)
    if missing:
        raise GraceError(f"results table lacks columns: {', '.join(sorted(missing))}")
    df = df.assign(balancer=row_labels(df))
    keys = TABLE_METRICS
    if "cv_rmse" in df.columns and df["cv_rmse"].notna().any():
        keys = (*TABLE_METRICS, CV_METRIC)
    balancers = list(dict.fromkeys(df["balancer"].astype(str)))
    datasets = list(dict.fromkeys(df["dataset"].astype(str)))
    done = df[df["status"] == CellState.DONE]
    rows = []
    for b in balancers:
        for d in datasets:
            g = done[(done["balancer"] == b) & (done["dataset"] == d)]
            row: dict[str, Any] = {"balancer": b, "dataset": d, "n": len(g)}
            for key, col, _, _ in keys:
                values = (
                    g[col].dropna().to_numpy(dtype=float)
                    if key == "cv"
                    else g[col].to_numpy(dtype=float)
                )
                row[f"{key}_mean"] = float(np.mean(values)) if len(values) else math.nan
                row[f"{key}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
            rows.append(row)
    stats = pd.DataFrame(rows)
    for key, _, _, decimals in keys:
        # Best at the precision shown: entries that print the same mean are all bold.
        shown = stats[f"{key}_mean"].map(lambda m, d=decimals: float(f"{m:.{d}f}"))
        stats[f"best_{key}"] = False
        for d in datasets:
            sel = (stats["dataset"] == d) & (stats["n"] > 0)
            if sel.any():
                stats.loc[sel & (shown == shown[sel].min()), f"best_{key}"] = True
        stats[f"{key}_text"] = [
            format_stat(m, s, int(n), decimals)
            for m, s, n in zip(stats[f"{key}_mean"], stats[f"{key}_std"], stats["n"])
        ]
    label = protocol_label([str(p) for p in (done if len(done) else df)["protocol"]])
    stats["protocol"] = label
    failed = int((df["status"] == CellState.FAILED).sum())
    counts = {"total": len(df), "done": len(done), "failed": failed}
    return Summary(
        stats=stats, balancers=balancers, datasets=datasets, protocol=label, counts=counts,
        metrics=keys,
    )  # fmt: skip


def write_tables(sweep_dir: str | Path) -> tuple[pd.DataFrame, Summary]:
    """Collect the cells, then write results.csv, summary.md and summary.csv (atomically)."""
    sweep_dir = Path(sweep_dir)
    df = collect_results(sweep_dir, write=True)
    summary = summarise(df)
    atomic_write_text(
        sweep_dir / SUMMARY_MD_FILE, summary.to_markdown(title=f"Sweep {sweep_dir.name}")
    )
    atomic_write_text(sweep_dir / SUMMARY_CSV_FILE, summary.to_csv())
    return df, summary


def format_table(sweep_dir: str | Path, fmt: str = "markdown") -> str:
    """The summary of ``sweep_dir`` as markdown, LaTeX (booktabs) or CSV text; writes nothing."""
    if fmt not in FORMATS:
        raise GraceError(f"unknown table format '{fmt}' (choose from: {', '.join(FORMATS)})")
    summary = summarise(collect_results(sweep_dir, write=False))
    if fmt == "markdown":
        return summary.to_markdown(title=f"Sweep {Path(sweep_dir).name}")
    if fmt == "latex":
        return summary.to_latex()
    return summary.to_csv()
