"""How noisy is the score recipes are judged on? Single hold-out against 5-fold CV, 5 seeds.

    nohup python benchmarks/cv_noise.py --workers 2 --threads 1 > cv_noise.log 2>&1 &
    python benchmarks/cv_noise.py --table-only       # rewrite the CSV and the table

One recipe (the ``default`` preset, gaba, FD001, at most ``EPOCHS`` epochs so the grid fits
a session) trained two ways for each of five seeds, as a resumable ``grace sweep
--vary data.folds=0,5`` in ``runs/cv-noise``:

* ``folds=0``: today's single hold-out. The judged score is the selected epoch's
  truncated-validation RMSE over 20 held-out engines (10 cuts each).
* ``folds=5``: 5-fold cross-validation. The judged score is the CV score: the RMSE over
  the out-of-fold cuts of all 100 training engines.

The seed moves both the split and the initialisation, so the spread over seeds of each
score is the noise a recipe comparison has to beat. The test RMSE of each run (the fold
ensemble's for ``folds=5``) is reported beside it, scored once; nothing here chooses
anything. Writes ``benchmarks/results/cv_noise.csv`` and the table between the
``cv-noise:start`` / ``cv-noise:end`` markers of docs/guides/experiments.md.
"""

from __future__ import annotations

import argparse
import csv
import statistics
from pathlib import Path

from grace_rul.config import Execution
from grace_rul.experiments.executors import ExecutorSpec
from grace_rul.experiments.grid import CellState, cell_dir, inspect_cell, read_grid
from grace_rul.experiments.sweep import run_sweep
from readme_tables import replace_section, write_rows

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "cv_noise.csv"
SEEDS = [42, 123, 456, 789, 1024]
EPOCHS = 12
COLUMNS = [
    "folds", "seed", "judged_score", "test_rmse", "fold_rmse", "epochs_run", "cpu_seconds",
    "threads", "preset", "commit",
]  # fmt: skip


def collect(sweep_dir: Path) -> list[dict]:
    """One row per finished cell: the score it would be judged on and its test RMSE."""
    grid = read_grid(sweep_dir)
    rows = []
    for cell in grid.cells():
        state = inspect_cell(cell_dir(sweep_dir, cell), check_checkpoint=False)
        if state.status != CellState.DONE:
            continue
        m = state.metrics or {}
        folds = int(dict(cell.settings).get("data.folds", 0))
        cv = m.get("cv") or {}
        rows.append(
            {
                "folds": folds,
                "seed": cell.seed,
                "judged_score": cv["rmse"] if folds else m["val"]["rmse"],
                "test_rmse": m["test"]["rmse_last"],
                "fold_rmse": " ".join(f"{v:.3f}" for v in cv.get("fold_rmse", [])),
                "epochs_run": m.get("epochs_run"),
                "cpu_seconds": m.get("cpu_seconds"),
                "threads": m.get("threads", 1),
                "preset": m.get("preset"),
                "commit": m.get("commit", ""),
            }
        )
    return rows


def write_csv(rows: list[dict]) -> None:
    write_rows(RESULTS, COLUMNS, rows)


def _spread(values: list[float]) -> str:
    if len(values) < 2:
        return "n/a"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def table(rows: list[dict]) -> str:
    lines = [
        "| judged on | engines scored | seeds | judged score, mean ± sd over seeds "
        "| range | test RMSE, mean ± sd | CPU-min per seed |",
        "|---|---|---|---|---|---|---|",
    ]
    for folds, label, engines in ((0, "single hold-out (20 %)", 20), (5, "5-fold CV", 100)):
        sel = [r for r in rows if int(r["folds"]) == folds]
        scores = [float(r["judged_score"]) for r in sel]
        tests = [float(r["test_rmse"]) for r in sel]
        cpu = [float(r["cpu_seconds"]) / 60 for r in sel]
        rng = f"{min(scores):.2f}–{max(scores):.2f}" if scores else "—"
        lines.append(
            f"| {label} | {engines} | {len(sel)} | {_spread(scores)} | {rng} | {_spread(tests)} "
            f"| {statistics.mean(cpu):.1f} |"
            if sel
            else f"| {label} | {engines} | 0 | — | — | — | — |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", nargs="+", type=int, default=SEEDS)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run")
    ap.add_argument("--out", help="sweep directory (default: runs/cv-noise)")
    ap.add_argument("--table-only", action="store_true", help="no training; rewrite the tables")
    args = ap.parse_args()
    sweep_dir = Path(args.out or ROOT / "runs" / "cv-noise")
    if not args.table_only:
        run_sweep(
            sweep_dir,
            ["FD001"],
            ["gaba"],
            args.seeds,
            preset="bilstm",  # the recipe its committed table measured (0.1's default)
            overrides={"train": {"epochs": EPOCHS}},
            execution=Execution(threads=args.threads),
            executor=ExecutorSpec(workers=args.workers),
            extend=True,
            vary={"data.folds": [0, 5]},
        )
    if (sweep_dir / "sweep.yaml").is_file():
        rows = collect(sweep_dir)
        write_csv(rows)
    else:  # no runs here: the committed CSV is the evidence
        rows = list(csv.DictReader(open(RESULTS, newline=""))) if RESULTS.is_file() else []
    replace_section("cv-noise", table(rows))
    print(table(rows))


if __name__ == "__main__":
    main()
