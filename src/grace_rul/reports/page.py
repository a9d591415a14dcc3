"""The self-contained HTML page: inline CSS, figures as base64 PNG data URIs.

Nothing on the page refers to another file or the network, so the one HTML file
can be mailed, archived or opened offline. All text from run files is escaped.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd

from grace_rul.config import PROTOCOL_LABELS
from grace_rul.reports.loading import RunData, finite

PAPER_LABEL = PROTOCOL_LABELS["paper"]
VAL_LABEL = PROTOCOL_LABELS["val"]

CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0;color:#1d2330;
background:#f5f6f8;line-height:1.45}
main{max-width:1100px;margin:0 auto;padding:24px 28px 60px}
h1{margin:0 0 4px;font-size:1.7em}
h2{margin-top:34px;border-bottom:2px solid #d9dde5;padding-bottom:4px}
.sub{color:#5b6475;margin:0 0 18px}
.banner{padding:14px 18px;border-radius:8px;margin:14px 0 20px;font-size:1.05em}
.banner.paper{background:#fde8e8;border:2px solid #c0392b;color:#7b1d14}
.banner.paper strong{font-size:1.25em;text-transform:uppercase;letter-spacing:.03em}
.banner.val{background:#e8f4ec;border:1px solid #6aa57e;color:#1f4d2e}
.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{background:#fff;border:1px solid #d9dde5;border-radius:8px;padding:10px 14px;min-width:140px}
.card .k{font-size:.8em;color:#5b6475;text-transform:uppercase;letter-spacing:.04em}
.card .v{font-size:1.45em;font-weight:600}.card .u{font-size:.8em;color:#5b6475}
table{border-collapse:collapse;background:#fff;margin:8px 0;font-size:.92em}
th,td{border:1px solid #d9dde5;padding:4px 9px;text-align:right}
th{background:#eef0f4}td:first-child,th:first-child{text-align:left}
figure{background:#fff;border:1px solid #d9dde5;border-radius:8px;margin:18px 0;padding:12px}
figure img{max-width:100%;height:auto;display:block;margin:0 auto}
figcaption{color:#3b4252;margin-top:6px;font-size:.93em}
.note{background:#fff8e1;border-left:4px solid #e0a800;padding:6px 12px;margin:8px 0}
pre{background:#fff;border:1px solid #d9dde5;padding:10px;overflow:auto;font-size:.85em}
details{margin:10px 0}summary{cursor:pointer;font-weight:600}
footer{margin-top:40px;color:#8a92a3;font-size:.85em}
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Any, digits: int = 2) -> str:
    v = finite(value)
    if v is None:
        return "n/a" if value is None else esc(value)
    if float(v).is_integer() and abs(v) < 1e15:
        return f"{int(v):,}" if abs(v) >= 1e4 else str(int(v))
    return f"{v:.{digits}f}"


def pct(value: Any) -> str:
    v = finite(value)
    return "n/a" if v is None else f"{100 * v:.1f}%"


def document(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main>\n"
        f"{body}\n<footer>Written by grace report; figures are embedded PNGs.</footer>\n"
        "</main>\n</body>\n</html>\n"
    )


def figure_html(title: str, subtitle: str, png: bytes) -> str:
    data = base64.b64encode(png).decode("ascii")
    caption = f"<strong>{esc(title)}</strong>" + (f" — {esc(subtitle)}" if subtitle else "")
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{esc(title)}">'
        f"<figcaption>{caption}</figcaption></figure>"
    )


def skipped_html(title: str, reason: str) -> str:
    return f'<p class="note"><strong>{esc(title)}</strong> not drawn: {esc(reason)}.</p>'


def notes_html(notes: Iterable[str]) -> str:
    notes = list(notes)
    if not notes:
        return ""
    items = "".join(f"<li>{esc(n)}</li>" for n in notes)
    return f"<h2>Notes</h2><ul>{items}</ul>"


def protocol_banner(protocols: Sequence[str | None], labels: Sequence[str | None]) -> str:
    """Prominent warning when any result used test-set selection (protocol ``paper``)."""
    paper = [p for p in protocols if p == "paper"]
    if paper:
        share = "" if len(paper) == len(protocols) else f" ({len(paper)} of {len(protocols)} runs)"
        return (
            f'<div class="banner paper"><strong>Protocol: {PAPER_LABEL}</strong>{esc(share)}<br>'
            "The checkpoint was selected on the test set every epoch (the write-up's protocol). "
            "Test numbers below have seen the test data and are not comparable to "
            "validation-selected results.</div>"
        )
    label = next((lab for lab in labels if lab), None) or VAL_LABEL
    return (
        f'<div class="banner val"><strong>Protocol: {esc(label)}</strong> — checkpoint '
        "selected on held-out validation engines; the test set was scored once.</div>"
    )


def cards_html(items: Sequence[tuple[str, str, str]]) -> str:
    cells = "".join(
        f'<div class="card"><div class="k">{esc(k)}</div><div class="v">{v}</div>'
        f'<div class="u">{esc(u)}</div></div>'
        for k, v, u in items
    )
    return f'<div class="cards">{cells}</div>'


def table_html(df: pd.DataFrame, formats: dict[str, Any] | None = None) -> str:
    """A plain escaped table; ``formats`` maps a column to a cell formatter."""
    formats = formats or {}
    head = "".join(f"<th>{esc(c)}</th>" for c in df.columns)
    rows = []
    for _, row in df.iterrows():
        cells = []
        for c in df.columns:
            v = row[c]
            text = formats[c](v) if c in formats else ("" if _blank(v) else esc(v))
            cells.append(f"<td>{text}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _blank(v: Any) -> bool:
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


def run_metrics_html(run: RunData) -> str:
    """Key-metric cards plus validation and stability tables for one run."""
    m, test = run.metrics, run.test
    best, epochs = m.get("best_epoch"), m.get("epochs_run")
    label = m.get("protocol_label") or (PAPER_LABEL if m.get("protocol") == "paper" else VAL_LABEL)
    cards = cards_html(
        [
            ("test RMSE (last window)", fmt(test.get("rmse_last")), "cycles"),
            ("NASA score", fmt(test.get("nasa_score"), 1), "lower is better"),
            ("MAE", fmt(test.get("mae")), "cycles"),
            ("health accuracy", pct(test.get("health_accuracy")), "3 classes"),
            ("best epoch", f"{fmt(best)} / {fmt(epochs)}", "best / epochs run"),
            ("parameters", fmt(m.get("params")), "trainable"),
            ("protocol", esc(label), f"protocol '{m.get('protocol', '?')}'"),
        ]
    )
    val = m.get("val") if isinstance(m.get("val"), dict) else {}
    stab = m.get("stability") if isinstance(m.get("stability"), dict) else {}
    val_table = (
        "<table><thead><tr><th>validation (at best epoch)</th><th>value</th></tr></thead><tbody>"
        f"<tr><td>RMSE (cycles)</td><td>{fmt(val.get('rmse'))}</td></tr>"
        f"<tr><td>MAE (cycles)</td><td>{fmt(val.get('mae'))}</td></tr>"
        f"<tr><td>NASA score</td><td>{fmt(val.get('nasa_score'), 1)}</td></tr>"
        f"<tr><td>health accuracy</td><td>{pct(val.get('health_accuracy'))}</td></tr>"
        "</tbody></table>"
    )
    stab_table = (
        "<table><thead><tr><th>run</th><th>value</th></tr></thead><tbody>"
        f"<tr><td>preset</td><td>{esc(m.get('preset', '?'))}</td></tr>"
        f"<tr><td>wall time (s)</td><td>{fmt(m.get('seconds'), 1)}</td></tr>"
        f"<tr><td>skipped (non-finite) steps</td><td>{fmt(stab.get('skipped_steps'))}</td></tr>"
        f"<tr><td>first bad step</td><td>{fmt(stab.get('first_bad_step'))}</td></tr>"
        f"<tr><td>loss spikes</td><td>{fmt(stab.get('spikes'))}</td></tr>"
        "</tbody></table>"
    )
    return (
        f"<h2>Key metrics (test set)</h2>{cards}"
        '<div style="display:flex;gap:24px;flex-wrap:wrap;margin-top:14px">'
        f"{val_table}{stab_table}</div>"
    )
