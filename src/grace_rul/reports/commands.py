"""``grace report PATH [--out DIR]``: the CLI entry to :func:`write_report`."""

from __future__ import annotations

import argparse
from pathlib import Path

from grace_rul.reports.report import write_report


def run_report(args: argparse.Namespace) -> int:
    """Handler for ``grace report``: write the report and print where it is."""
    html = write_report(args.path, Path(args.out) if args.out else None)
    print(f"report written: {html}")
    return 0


def add_report_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``report`` sub-command to the ``grace`` CLI's subparsers."""
    parser = subparsers.add_parser(
        "report",
        help="write figures and a self-contained HTML report for a run, CV, study or sweep dir",
        description=(
            "Write PNG figures and one self-contained report.html (figures embedded) for a "
            "run directory (metrics.json + history.csv), a cross-validation directory (grace "
            "train --folds), a grace tune study directory or a sweep directory (runs/*/)."
        ),
    )
    parser.add_argument("path", help="run, cross-validation, study or sweep dir")
    parser.add_argument("--out", default=None, help="output directory (default: PATH/report)")
    parser.set_defaults(func=run_report)
    return parser
