"""Stage 2 of the accuracy search: re-score the study's leaders by CV on unseen seeds.

    nohup python benchmarks/confirm.py --workers 2 > confirm.log 2>&1 &   # resumable
    python benchmarks/confirm.py --table-only                 # CSV and table, no training

A TPE study scores every trial on one seed (one set of folds, one initialisation), so its
best trial is partly the luckiest. This trains each job of ``benchmarks/search/candidates.yaml``
(candidate x dataset x seed) as a 3-fold CV run with no test split (as a tuning trial does)
into ``runs/confirm/``, resuming interrupted ones, and writes one row per finished job to
``benchmarks/results/confirm.csv``; a job with a committed row is not trained again.
Nothing here builds or scores the test set. Every job is float32 (:data:`PINNED`), whichever
CPU trains it.
"""

from __future__ import annotations

import argparse
import csv
import multiprocessing as mp
import statistics
import sys
from pathlib import Path
from typing import Any

from accuracy import PINNED
from grace_rul.config import Execution, merge_overrides, nested
from grace_rul.io import load_yaml
from grace_rul.resolve import resolve_config
from grace_rul.rundir import RunDir
from readme_tables import replace_section, write_rows

ROOT = Path(__file__).resolve().parent.parent
CANDIDATES = ROOT / "benchmarks" / "search" / "candidates.yaml"
RESULTS = ROOT / "benchmarks" / "results" / "confirm.csv"
FOLDS = 3
COLUMNS = [
    "candidate", "dataset", "seed", "cv_rmse", "cv_std", "fold_rmse",
    "cpu_seconds_per_model", "seconds", "threads", "cpu", "protocol", "commit",
]  # fmt: skip


def jobs(doc: dict[str, Any]) -> list[tuple[str, str, int]]:
    return [(p["candidate"], p["dataset"], int(s)) for p in doc["plan"] for s in p["seeds"]]


def job_config(doc: dict[str, Any], name: str, dataset: str, seed: int) -> Any:
    layers = dict(doc["candidates"][name])
    preset = layers.pop("preset")
    extra = nested([("data.dataset", dataset), ("data.folds", FOLDS), ("seed", seed)])
    return resolve_config(preset, merge_overrides(layers, extra, PINNED))


def job_dir(runs: Path, name: str, dataset: str, seed: int) -> Path:
    return runs / f"{name}-{dataset.lower()}-s{seed}"


def run_job(args: tuple[dict[str, Any], Path, str, str, int]) -> str:
    from grace_rul.trainer import train

    doc, runs, name, dataset, seed = args
    cfg = job_config(doc, name, dataset, seed)
    path = job_dir(runs, name, dataset, seed)
    run = RunDir(path)
    if run.is_finished():
        return f"{path.name}: finished"
    resume = path.is_dir() and (path / "config.yaml").is_file()
    execution = Execution(threads=1, quiet=True, progress=False)
    m = train(cfg, path, execution=execution, resume=resume, score_test=False)
    return f"{path.name}: CV RMSE {m['cv']['rmse']:.3f}"


def committed() -> dict[tuple[str, str, int], dict[str, Any]]:
    """The rows of earlier sessions (their run directories are not committed)."""
    if not RESULTS.is_file():
        return {}
    rows = csv.DictReader(open(RESULTS, newline=""))
    return {(r["candidate"], r["dataset"], int(r["seed"])): r for r in rows}


def collect(doc: dict[str, Any], runs: Path) -> list[dict[str, Any]]:
    """A row per finished job: from its run directory, else as committed."""
    rows, done = [], committed()
    for name, dataset, seed in jobs(doc):
        run = RunDir(job_dir(runs, name, dataset, seed))
        if not run.is_finished():
            if (name, dataset, seed) in done:
                rows.append(done[(name, dataset, seed)])
            continue
        m = run.read_metrics()
        rows.append({
            "candidate": name, "dataset": dataset, "seed": seed,
            "cv_rmse": round(m["cv"]["rmse"], 4), "cv_std": round(m["cv"]["std"], 4),
            "fold_rmse": " ".join(f"{x:.3f}" for x in m["cv"]["fold_rmse"]),
            "cpu_seconds_per_model": round(m["cpu_seconds_per_model"], 1),
            "seconds": m.get("seconds", ""), "threads": m.get("threads", ""),
            "cpu": m.get("cpu", ""), "protocol": m.get("protocol_label", ""),
            "commit": m.get("commit", ""),
        })  # fmt: skip
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """One line per candidate and dataset: its CV RMSE on each seed, and their mean."""
    lines = [
        "| candidate | dataset | 3-fold CV RMSE per seed | mean ± sd over seeds "
        "| CPU-s per fold model |",
        "|---|---|---|---|---|",
    ]
    keys = dict.fromkeys((r["candidate"], r["dataset"]) for r in rows)
    for name, dataset in keys:
        mine = [r for r in rows if (r["candidate"], r["dataset"]) == (name, dataset)]
        scores = [float(r["cv_rmse"]) for r in mine]
        per_seed = ", ".join(f"{s:.2f} (seed {r['seed']})" for s, r in zip(scores, mine))
        spread = f" ± {statistics.stdev(scores):.2f}" if len(scores) > 1 else ""
        cpu = statistics.mean(float(r["cpu_seconds_per_model"]) for r in mine)
        lines.append(
            f"| `{name}` | {dataset} | {per_seed} | {statistics.mean(scores):.2f}{spread} "
            f"(n={len(scores)}) | {cpu:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=1, help="jobs at once (1 thread each)")
    ap.add_argument("--runs", default=str(ROOT / "runs" / "confirm"))
    ap.add_argument("--table-only", action="store_true", help="no training; rewrite the CSV")
    args = ap.parse_args()
    doc = load_yaml(CANDIDATES, "candidates")
    runs = Path(args.runs)
    if not args.table_only:
        runs.mkdir(parents=True, exist_ok=True)
        done = committed()
        todo = [(doc, runs, *j) for j in jobs(doc) if j not in done]
        with mp.get_context("spawn").Pool(args.workers, maxtasksperchild=1) as pool:
            for line in pool.imap(run_job, todo):
                print(line, file=sys.stderr, flush=True)
                write_rows(RESULTS, COLUMNS, collect(doc, runs))
    rows = collect(doc, runs)
    write_rows(RESULTS, COLUMNS, rows)
    replace_section("confirm", table(rows))
    print(table(rows))


if __name__ == "__main__":
    main()
