"""Does a difference exceed seed noise? Paired comparisons of a sweep against a baseline.

For every row of a sweep's summary (a balancer, or a balancer with its ``--vary`` values)
and every subset, the per-seed differences ``row - baseline`` of a test metric (paired by
seed: the same data split and initialisation) give

* the mean paired difference with a 95 % t-interval
  (``mean ± t_{0.975, n-1} * sd / sqrt(n)``, sd with ddof = 1), and
* the two-sided Wilcoxon signed-rank p-value (``scipy.stats.wilcoxon``, its defaults:
  exact distribution for small samples without ties or zeros).

Bold marks only differences with p < 0.05. Fewer than 2 paired seeds give ``n/a`` with
the reason in a footnote. Power is low with few seeds: with n pairs the smallest possible
two-sided Wilcoxon p is 2 / 2^n - 0.0625 for 5 seeds, so **nothing can be significant at
0.05 with 5 seeds**; read the confidence intervals.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from grace_rul.errors import GraceError
from grace_rul.experiments.grid import CellState

ALPHA = 0.05
# (column in results, heading, decimals)
COMPARED = (("rmse_last", "Test RMSE (last window)", 2), ("nasa_score", "NASA score", 1))
CSV_COLUMNS = [
    "metric",
    "method",
    "baseline",
    "dataset",
    "n",
    "mean_diff",
    "ci_low",
    "ci_high",
    "wilcoxon_p",
    "significant",
    "note",
]


@dataclass
class Paired:
    """Statistics of one set of paired differences; ``note`` says why they are missing."""

    n: int
    mean: float = math.nan
    ci_low: float = math.nan
    ci_high: float = math.nan
    p: float = math.nan
    note: str = ""

    @property
    def significant(self) -> bool:
        return math.isfinite(self.p) and self.p < ALPHA


def smallest_wilcoxon_p(n: int) -> float:
    """The smallest two-sided exact Wilcoxon signed-rank p-value with ``n`` pairs: 2 / 2^n."""
    return min(1.0, 2.0 / 2.0**n)


def paired_stats(diffs: np.ndarray | list[float]) -> Paired:
    """Mean, 95 % t-interval and two-sided Wilcoxon p of paired differences."""
    from scipy import stats

    d = np.asarray(diffs, dtype=float)
    d = d[np.isfinite(d)]
    n = int(d.size)
    if n < 2:
        return Paired(n=n, note=f"fewer than 2 paired seeds (n={n})")
    mean = float(d.mean())
    half = float(stats.t.ppf(1 - ALPHA / 2, n - 1) * d.std(ddof=1) / math.sqrt(n))
    out = Paired(n=n, mean=mean, ci_low=mean - half, ci_high=mean + half)
    if not np.any(d != 0):
        out.note = "all paired differences are 0: no Wilcoxon test"
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out.p = float(stats.wilcoxon(d).pvalue)
    return out


def _labels(df: pd.DataFrame) -> pd.Series:
    from grace_rul.experiments.summary import row_labels

    return row_labels(df)


def resolve_baseline(df: pd.DataFrame, baseline: str) -> dict[str, str]:
    """Row label -> the label of its baseline row.

    ``baseline`` is a row label (``equal``; ``gaba clip=0 ema_decay=0``), the same for every
    row, or an axis value (``clip=0 ema_decay=0``): each balancer is then compared with its
    own row holding those values. Anything else is one line listing what is present.
    """
    labels = list(dict.fromkeys(_labels(df)))
    if baseline in labels:
        return {label: baseline for label in labels}
    variants = set(df["variant"].astype(str)) if "variant" in df.columns else set()
    if baseline and baseline in variants:
        out = {}
        for b in dict.fromkeys(df["balancer"].astype(str)):
            target = f"{b} {baseline}"
            for label in labels:
                if label == b or label.startswith(b + " "):
                    out[label] = target
        return out
    present = ", ".join(labels)
    extra = f"; or an axis value: {', '.join(sorted(variants - {''}))}" if variants - {""} else ""
    raise GraceError(f"--baseline '{baseline}' is not in the sweep (present: {present}{extra})")


def compare(df: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """One row per (metric, method, dataset) of :data:`CSV_COLUMNS` against ``baseline``."""
    mapping = resolve_baseline(df, baseline)
    done = df[df["status"] == CellState.DONE].assign(label=_labels(df))
    rows: list[dict[str, Any]] = []
    datasets = list(dict.fromkeys(df["dataset"].astype(str)))
    for col, _, _ in COMPARED:
        for label, base in mapping.items():
            if label == base:
                continue
            for d in datasets:
                mine = done[(done["label"] == label) & (done["dataset"] == d)]
                theirs = done[(done["label"] == base) & (done["dataset"] == d)]
                pairs = (
                    mine.set_index("seed")[col]
                    .to_frame("a")
                    .join(theirs.set_index("seed")[col].to_frame("b"), how="inner")
                )
                st = paired_stats((pairs["a"] - pairs["b"]).to_numpy(dtype=float))
                rows.append(
                    {
                        "metric": col,
                        "method": label,
                        "baseline": base,
                        "dataset": d,
                        "n": st.n,
                        "mean_diff": st.mean,
                        "ci_low": st.ci_low,
                        "ci_high": st.ci_high,
                        "wilcoxon_p": st.p,
                        "significant": st.significant,
                        "note": st.note,
                    }
                )
    return pd.DataFrame(rows, columns=CSV_COLUMNS)


def _fmt(x: float, decimals: int) -> str:
    if abs(x) < 0.5 * 10.0**-decimals:
        x = 0.0  # no "−0.00"
    return f"{x:+.{decimals}f}".replace("-", "−")


def power_note(seeds: int) -> str:
    """The low-power sentence for a sweep with ``seeds`` seeds."""
    p = smallest_wilcoxon_p(seeds)
    verdict = (
        f"so no difference can be significant at {ALPHA:g} with {seeds} seeds"
        if p >= ALPHA
        else f"still low power with {seeds} seeds"
    )
    return (
        f"Low power: with n paired seeds the smallest two-sided Wilcoxon p is 2/2^n "
        f"({p:.4g} for n = {seeds}), {verdict}; read the 95 % intervals."
    )


class Footnotes:
    """Numbered Markdown footnotes for table cells: one number per distinct reason."""

    def __init__(self) -> None:
        self._numbers: dict[str, int] = {}

    def mark(self, note: object) -> str:
        """``[^n]`` for a non-empty reason (numbered on first use), else ``""``."""
        if not isinstance(note, str) or not note:
            return ""
        return f"[^{self._numbers.setdefault(note, len(self._numbers) + 1)}]"

    def lines(self) -> list[str]:
        """The footnote definitions, each after a blank line."""
        return [line for note, i in self._numbers.items() for line in ("", f"[^{i}]: {note}")]


def comparison_markdown(table: pd.DataFrame, baseline: str, seeds: int) -> str:
    """The comparison as Markdown: one table per metric, ``Wilcoxon p`` columns, footnotes."""
    lines = [f"## Paired differences vs `{baseline}` (row − baseline, paired by seed)", ""]
    notes = Footnotes()
    datasets = list(dict.fromkeys(table["dataset"]))
    for col, heading, decimals in COMPARED:
        sub = table[table["metric"] == col]
        lines += [f"### {heading}: mean difference [95 % CI]", ""]
        head = ["method"] + [x for d in datasets for x in (f"{d} Δ [95 % CI]", f"{d} Wilcoxon p")]
        lines += ["| " + " | ".join(head) + " |", "|---|" + "---|" * (len(head) - 1)]
        for method in dict.fromkeys(sub["method"]):
            cells = [method]
            for d in datasets:
                r = sub[(sub["method"] == method) & (sub["dataset"] == d)].iloc[0]
                mark = notes.mark(r["note"])
                if r["n"] < 2:
                    cells += [f"n/a{mark}", "n/a"]
                    continue
                text = (
                    f"{_fmt(r['mean_diff'], decimals)} [{_fmt(r['ci_low'], decimals)}, "
                    f"{_fmt(r['ci_high'], decimals)}] (n={r['n']})"
                )
                p = r["wilcoxon_p"]
                ptext = f"{p:.3g}" if math.isfinite(p) else "n/a"
                if r["significant"]:
                    text, ptext = f"**{text}**", f"**{ptext}**"
                cells += [text + mark, ptext]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines.append(
        "Negative = lower (better) than the baseline. 95 % CI: t-interval of the mean paired "
        "difference. Wilcoxon p: two-sided signed-rank test (scipy.stats.wilcoxon). Bold: "
        f"p < {ALPHA:g}. " + power_note(seeds)
    )
    lines += notes.lines()
    return "\n".join(lines) + "\n"


def format_comparison(df: pd.DataFrame, baseline: str, fmt: str = "markdown") -> str:
    """``grace table --baseline``: the comparison of a results frame as Markdown or CSV."""
    table = compare(df, baseline)
    if fmt == "csv":
        buf = io.StringIO()
        table.to_csv(buf, index=False)
        return buf.getvalue()
    if fmt != "markdown":
        raise GraceError("--baseline prints markdown or csv (not latex)")
    seeds = int(df["seed"].nunique()) if len(df) else 0
    return comparison_markdown(table, baseline, seeds)
