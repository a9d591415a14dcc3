"""Recipe search on validation scores: which training settings give the best model per CPU-minute.

Each variant is a set of config overrides on top of a preset; every (variant, subset,
seed) is an ordinary run directory under ``--out``. Finished runs are skipped, interrupted
ones resume from ``last.pt``, so the command can be stopped and started again. One row
per finished run goes to ``benchmarks/results/recipe_search.csv``.

Decisions use ``val_rmse_last`` (the truncated-validation score the trainer selects on)
and ``val_rmse_all`` only. The test RMSE is scored once at the end of each run, as every
run does, and is written to the CSV for the record; it never ranks variants.

    nohup python benchmarks/recipe_search.py --threads 1 > recipe.log 2>&1 &
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import time
from pathlib import Path

from grace_rul.config import Execution
from grace_rul.resolve import resolve_config
from grace_rul.trainer import train
from readme_tables import replace_section

# name -> (preset, overrides). The first one is the reference.
VARIANTS: dict[str, tuple[str, dict]] = {
    "small": ("small", {}),
    "small-forget2": ("small", {"model": {"forget_bias": 2.0}}),
    "small-drop0.3": ("small", {"model": {"dropout": 0.3}}),
    "small-drop0": ("small", {"model": {"dropout": 0.0}}),
    "small-lr3e-4": ("small", {"train": {"lr": 3e-4}}),
    "small-wd5e-2": ("small", {"train": {"weight_decay": 5e-2}}),
    "small-win40": ("small", {"data": {"window": 40}}),
    "small-win50": ("small", {"data": {"window": 50}}),
    "small-bs128": ("small", {"train": {"batch_size": 128}}),
    "small-ema0.99": ("small", {"train": {"ema_decay": 0.99, "ema_warmup": False}}),
    "small-select-all": ("small", {"train": {"select": "all"}}),
}
COLUMNS = [
    "variant",
    "dataset",
    "seed",
    "preset",
    "overrides",
    "val_rmse_last",
    "val_rmse_all",
    "best_epoch",
    "epochs_run",
    "seconds",
    "threads",
    "test_rmse_last",
    "test_nasa_score",
    "commit",
]
RESULTS = Path(__file__).resolve().parent / "results" / "recipe_search.csv"


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def _done_keys() -> set[tuple[str, str, int]]:
    if not RESULTS.is_file():
        return set()
    with open(RESULTS, newline="") as f:
        return {(r["variant"], r["dataset"], int(r["seed"])) for r in csv.DictReader(f)}


def _append(row: dict) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    new = not RESULTS.is_file()
    with open(RESULTS, "a", newline="") as f:
        w = csv.DictWriter(f, COLUMNS)
        if new:
            w.writeheader()
        w.writerow(row)
        f.flush()
        os.fsync(f.fileno())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--datasets", nargs="*", default=["FD001"])
    ap.add_argument("--seeds", nargs="*", type=int, default=[42, 123])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="runs/recipe")
    ap.add_argument("--table-only", action="store_true", help="no training; rewrite the table")
    args = ap.parse_args()
    if args.table_only:
        replace_section("recipe", table())
        print(table())
        return
    done = _done_keys()
    for seed in args.seeds:
        for dataset in args.datasets:
            for name in args.variants:
                if (name, dataset, seed) in done:
                    continue
                preset, overrides = VARIANTS[name]
                merged = json.loads(json.dumps(overrides))
                merged.setdefault("data", {})["dataset"] = dataset
                merged["seed"] = seed
                cfg = resolve_config(preset, overrides=merged)
                out = Path(args.out) / f"{dataset}-{name}-s{seed}"
                resume = (out / "checkpoints" / "last.pt").is_file()
                start = time.perf_counter()
                exe = Execution(threads=args.threads, quiet=True, progress=False)
                m = train(cfg, out, execution=exe, resume=resume, overwrite=not resume)
                history = list(csv.DictReader(open(out / "history.csv", newline="")))
                best = history[m["best_epoch"] - 1]
                _append(
                    {
                        "variant": name,
                        "dataset": dataset,
                        "seed": seed,
                        "preset": preset,
                        "overrides": json.dumps(overrides, sort_keys=True),
                        "val_rmse_last": float(best["val_rmse_last"]),
                        "val_rmse_all": float(best["val_rmse"]),
                        "best_epoch": m["best_epoch"],
                        "epochs_run": m["epochs_run"],
                        "seconds": m["seconds"],
                        "threads": args.threads,
                        "test_rmse_last": m["test"]["rmse_last"],
                        "test_nasa_score": m["test"]["nasa_score"],
                        "commit": _commit(),
                    }
                )
                print(
                    f"{dataset} {name} s{seed}: val_last {float(best['val_rmse_last']):.2f} "
                    f"({time.perf_counter() - start:.0f} s)",
                    flush=True,
                )
                replace_section("recipe", table())


def _as_set(variant: tuple[str, dict]) -> str:
    """A variant as the command-line settings that make it: ``--preset small --set k=v``."""
    preset, overrides = variant
    pairs = []

    def walk(node: dict, prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                pairs.append(f"`--set {prefix}{key}={value}`")

    walk(overrides, "")
    return " ".join([f"`--preset {preset}`", *pairs])


def table() -> str:
    """The recipe table from the CSV: one row per (subset, variant), means over seeds."""
    with open(RESULTS, newline="") as f:
        rows = list(csv.DictReader(f))
    lines = [
        "| subset | variant | change | seeds | val RMSE, truncated (selects) | val RMSE, all "
        "windows | best epoch | epochs | wall min per run (1 thread, shared machine) "
        "| test RMSE (recorded, not used) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    keys = sorted({(r["dataset"], r["variant"]) for r in rows},
                  key=lambda k: (k[0], list(VARIANTS).index(k[1])))  # fmt: skip
    for dataset, name in keys:
        group = [r for r in rows if (r["dataset"], r["variant"]) == (dataset, name)]

        def mean(key: str, group: list[dict] = group) -> float:
            return statistics.mean(float(r[key]) for r in group)

        seeds = " ".join(r["seed"] for r in group)
        lines.append(
            f"| {dataset} | `{name}` | {_as_set(VARIANTS[name])} "
            f"| {seeds} | {mean('val_rmse_last'):.2f} | {mean('val_rmse_all'):.2f} "
            f"| {mean('best_epoch'):.0f} | {mean('epochs_run'):.0f} "
            f"| {mean('seconds') / 60:.1f} | {mean('test_rmse_last'):.2f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
