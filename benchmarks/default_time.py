"""Wall-clock time of one default model against the limits: 10 min per FD001/FD003 model,
25 per FD002/FD004, 2 threads, fp32, on the 2-core CPU.

    python benchmarks/default_time.py --datasets FD001 FD002 FD004

For each subset it runs ``grace train --dataset D --seed 7 --threads 2 --set
train.precision=32 --overwrite --out runs/time/D`` as a child process (seed 7 is outside the
accuracy grid's five), takes the wall clock around it and the CPU seconds from the child's resource
usage, and reads the epochs from the run's ``metrics.json``. Rows go to
``benchmarks/results/default_time.csv`` (a row of the same subset, CPU and commit is
replaced; the rest are kept) and the ``default-time`` table of docs/evidence/accuracy.md.
Run it with nothing else on the machine: it measures the limit, not the contention. The
run's test RMSE is recorded in the CSV and chooses nothing.
"""

from __future__ import annotations

import argparse
import datetime
import resource
import subprocess
import sys
import time
from pathlib import Path

from grace_rul import cpu_model
from grace_rul.rundir import RunDir
from readme_tables import merge_rows, replace_section, write_rows

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "default_time.csv"
LIMIT_MIN = {"FD001": 10, "FD002": 25, "FD003": 10, "FD004": 25}
SEED, THREADS = 7, 2
COLUMNS = [
    "dataset", "preset", "seed", "threads", "precision", "wall_seconds", "train_seconds",
    "cpu_seconds", "epochs_run", "best_epoch", "limit_minutes", "test_rmse_last", "cpu",
    "date", "command", "commit",
]  # fmt: skip


def command(dataset: str, out: Path, preset: str = "default") -> list[str]:
    """The ``grace train`` command line that is timed."""
    return [
        "grace", "train", "--dataset", dataset, "--preset", preset, "--seed", str(SEED),
        "--threads", str(THREADS), "--set", "train.precision=32", "--overwrite", "--out",
        str(out),
    ]  # fmt: skip


def measure(dataset: str, out: Path, preset: str = "default") -> dict:
    """Train one model of ``preset`` into ``out`` (replacing a run there) and return its time
    row."""
    argv = command(dataset, out, preset)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        last = done.stderr.strip().splitlines()[-1:] or ["no output"]
        raise SystemExit(f"{' '.join(argv)} failed: {last[0]}")
    m = RunDir(out).read_metrics()
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "dataset": dataset,
        "preset": preset,
        "seed": SEED,
        "threads": m["threads"],
        "precision": m["precision"],
        "wall_seconds": round(wall, 2),
        "train_seconds": m["seconds"],
        "cpu_seconds": round(cpu, 2),
        "epochs_run": m["epochs_run"],
        "best_epoch": m["best_epoch"],
        "limit_minutes": LIMIT_MIN[dataset],
        "test_rmse_last": round(m["test"]["rmse_last"], 2),
        "cpu": m["cpu"],
        "date": datetime.date.today().isoformat(),
        "command": " ".join(argv[:-2]) + " (nothing else running)",
        "commit": m["commit"] or "",  # None outside a git checkout
    }


def _key(row: dict) -> tuple:
    return (row["dataset"], row["preset"], row["cpu"], row["commit"])


def merge(new: list[dict], path: Path = RESULTS) -> list[dict]:
    """The committed rows that ``new`` does not replace, then ``new``."""
    return merge_rows(path, new, _key)


def _minutes(seconds: float) -> str:
    s = round(float(seconds))
    return f"{s // 60} min {s % 60:02d} s"


def table(rows: list[dict]) -> str:
    """The time table: one line per measured model, the limit beside it."""
    lines = [
        "| subset | preset | wall clock | limit | within | epochs run (best) | CPU-s | CPU "
        "| date |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (r["dataset"], r["cpu"], r["date"])):
        limit = r["limit_minutes"]
        within = "yes" if float(r["wall_seconds"]) <= 60 * float(limit) else "**no**"
        lines.append(
            f"| {r['dataset']} | `{r['preset']}` | {_minutes(r['wall_seconds'])} | {limit} min "
            f"| {within} | {r['epochs_run']} ({r['best_epoch']}) | {float(r['cpu_seconds']):.0f} "
            f"| {r['cpu']} | {r['date']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", nargs="+", choices=sorted(LIMIT_MIN), default=["FD001"])
    p.add_argument("--out", type=Path, default=Path("runs/time"), help="run directories")
    p.add_argument("--table-only", action="store_true", help="no training; rewrite the table")
    args = p.parse_args(argv)
    new = []
    if not args.table_only:
        print(f"timing on {cpu_model()}; nothing else should be running", file=sys.stderr)
        for d in args.datasets:
            row = measure(d, args.out / d)
            print(f"{d}: {_minutes(row['wall_seconds'])} wall, {row['epochs_run']} epochs")
            new.append(row)
    rows = merge(new)
    write_rows(RESULTS, COLUMNS, rows)
    replace_section("default-time", table(rows))


if __name__ == "__main__":
    main()
