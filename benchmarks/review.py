"""GABA under review (issue 12): the balancer table and the stabiliser ablation, as evidence.

    python benchmarks/review.py --estimate                 # the plan and its CPU-hour estimate
    nohup python benchmarks/review.py > review.log 2>&1 &  # train (resumable), then tables
    python benchmarks/review.py --table-only               # rewrite CSVs + README tables

Three resumable ``grace sweep`` directories under ``--out`` (default ``runs/review``):

* ``balancers``: FD001, FD002 x equal, gaba, grace, uncertainty, dwa, pcgrad, cagrad, imtl,
  dbmtl, famo, nashmtl, alignedmtl x seeds 42 123 456 789 1024;
* ``single-task``: the same subsets and seeds with ``fixed`` weights [1, 0] (RUL only:
  does the health task help RUL at all?);
* ``stabilisers``: FD002 x gaba x seeds x ``--vary train.clip=0,C --vary
  train.ema_decay=0,D`` (C, D: the preset's clip threshold and EMA decay; 0 turns each off).

Every cell trains ``--epochs`` epochs (the per-run budget; early stopping still applies),
chosen by default so that the whole grid fits ``--budget-cpu-hours`` (8) of process CPU
time - the estimate is printed first. Started again, each sweep skips finished cells and
resumes interrupted ones. Then it writes ``benchmarks/results/balancers.csv`` and
``stabilisers.csv`` (per method and subset: seed mean ± std, the mean paired difference
against the baseline with its 95 % t-interval and the Wilcoxon signed-rank p; baselines
``equal`` and both stabilisers off) and regenerates the README tables between the
``review-balancers`` / ``review-stabilisers`` markers from those CSVs.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys
from pathlib import Path

import pandas as pd

from grace_rul.checkpoint import atomic_write_text
from grace_rul.config import DEFAULT_PRESET, Execution, resolve_config
from grace_rul.experiments.grid import read_grid
from grace_rul.experiments.significance import compare, power_note
from grace_rul.experiments.sweep import run_sweep
from grace_rul.experiments.tables import collect_results, row_labels
from readme_tables import replace_section

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"
SEEDS = [42, 123, 456, 789, 1024]
DATASETS = ["FD001", "FD002"]
BALANCERS = ["equal", "gaba", "grace", "uncertainty", "dwa", "pcgrad", "cagrad", "imtl",
             "dbmtl", "famo", "nashmtl", "alignedmtl"]  # fmt: skip
SINGLE_TASK = "single-task (fixed [1, 0])"
ABLATION_DATASET, ABLATION_BALANCER = "FD002", "gaba"
BOTH_OFF = "clip=0 ema_decay=0"
# Process CPU seconds of one training epoch with `equal` (1 thread), per preset and subset:
# small/FD001 from the README's measurement (28 epochs of gaba in 2 min 42 s on 2 threads,
# /1.6 for equal), FD002 x 2.6 (its training windows); default = small x 4/3 (40-cycle
# windows instead of 30); paper = small x 11 (the bench ratio).
EPOCH_CPU_S = {
    "tiny": {"FD001": 0.6, "FD002": 1.6},
    "small": {"FD001": 7.3, "FD002": 19.0},
    "default": {"FD001": 9.7, "FD002": 25.3},
    "paper": {"FD001": 80.0, "FD002": 210.0},
}
# Step cost x equal (benchmarks/bench_balancers.py); loss-only methods 1.0, famo one
# extra forward (~0.35 of a step).
COST = {"equal": 1.0, "fixed": 1.0, "uncertainty": 1.0, "dwa": 1.0, "famo": 1.35}
GRADIENT_COST = 1.6
CSV_COLUMNS = ["table", "method", "subset", "n", "rmse_mean", "rmse_std", "nasa_mean",
               "nasa_std", "baseline", "d_rmse", "ci_low", "ci_high", "wilcoxon_p",
               "significant", "note", "preset", "epochs"]  # fmt: skip
MARKERS = {"balancers": "review-balancers", "stabilisers": "review-stabilisers"}


def plan(preset: str) -> list[tuple[str, str, int]]:
    """Every run of the grid as (subset, method, runs) groups."""
    groups = [(d, b, len(SEEDS)) for d in DATASETS for b in BALANCERS]
    groups += [(d, "fixed", len(SEEDS)) for d in DATASETS]
    groups += [(ABLATION_DATASET, ABLATION_BALANCER, 4 * len(SEEDS))]
    return groups


def cpu_seconds(preset: str, epochs: int) -> float:
    """Estimated process CPU seconds of the whole grid at ``epochs`` epochs per run."""
    per_epoch = EPOCH_CPU_S.get(preset, EPOCH_CPU_S["paper"])
    return sum(
        runs * epochs * per_epoch[d] * COST.get(m, GRADIENT_COST) for d, m, runs in plan(preset)
    )


def epochs_for(preset: str, budget_hours: float) -> int:
    """The most epochs per run whose estimated grid fits ``budget_hours`` CPU hours."""
    per_epoch = cpu_seconds(preset, 1)
    return max(1, int(budget_hours * 3600 // per_epoch))


def sweeps(out: Path, preset: str, epochs: int) -> list[dict]:
    """The three ``run_sweep`` calls of the grid."""
    base = resolve_config(preset).train
    train = {"train": {"epochs": epochs}}
    common = dict(seeds=SEEDS, preset=preset)
    return [
        dict(out_dir=out / "balancers", datasets=DATASETS, balancers=BALANCERS,
             overrides=train, **common),
        dict(out_dir=out / "single-task", datasets=DATASETS, balancers=["fixed"],
             overrides={**train, "balancer": {"options": {"weights": [1, 0]}}}, **common),
        dict(out_dir=out / "stabilisers", datasets=[ABLATION_DATASET],
             balancers=[ABLATION_BALANCER], overrides=train,
             vary={"train.clip": [0.0, base.clip], "train.ema_decay": [0.0, base.ema_decay]},
             **common),
    ]  # fmt: skip


def summary_rows(table: str, df: pd.DataFrame, baseline: str, preset: str, epochs) -> list[dict]:
    """CSV rows: per method and subset the seed statistics and the paired comparison."""
    done = df[df["status"] == "done"].assign(label=row_labels(df))
    cmp_ = compare(df, baseline)
    cmp_ = cmp_[cmp_["metric"] == "rmse_last"].set_index(["method", "dataset"])
    rows = []
    for label in dict.fromkeys(row_labels(df)):
        for d in dict.fromkeys(df["dataset"]):
            g = done[(done["label"] == label) & (done["dataset"] == d)]
            row = {"table": table, "method": label, "subset": d, "n": len(g),
                   "rmse_mean": g["rmse_last"].mean(), "rmse_std": g["rmse_last"].std(ddof=1),
                   "nasa_mean": g["nasa_score"].mean(), "nasa_std": g["nasa_score"].std(ddof=1),
                   "baseline": "", "preset": preset, "epochs": epochs}  # fmt: skip
            if (label, d) in cmp_.index:
                c = cmp_.loc[(label, d)]
                row.update(baseline=c["baseline"], d_rmse=c["mean_diff"], ci_low=c["ci_low"],
                           ci_high=c["ci_high"], wilcoxon_p=c["wilcoxon_p"],
                           significant=bool(c["significant"]), note=c["note"])  # fmt: skip
            rows.append(row)
    return rows


def collect(out: Path, preset: str, epochs) -> tuple[list[dict], list[dict]]:
    """The CSV rows of both tables from the sweep directories that exist."""
    frames = []
    if (out / "balancers" / "sweep.yaml").exists():
        frames.append(collect_results(out / "balancers", write=False))
    if (out / "single-task" / "sweep.yaml").exists():
        single = collect_results(out / "single-task", write=False)
        frames.append(single.assign(balancer=SINGLE_TASK))
    balancers = (
        summary_rows("balancers", pd.concat(frames, ignore_index=True), "equal", preset, epochs)
        if frames
        else []
    )
    stab = []
    if (out / "stabilisers" / "sweep.yaml").exists():
        df = collect_results(out / "stabilisers", write=False)
        df = df.assign(balancer=df["variant"].where(df["variant"] != "", df["balancer"]),
                       variant="")  # fmt: skip
        stab = summary_rows("stabilisers", df, BOTH_OFF, preset, epochs)
    return balancers, stab


def write_csv(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def read_csv(path: Path) -> list[dict]:
    return list(csv.DictReader(path.open())) if path.is_file() else []


def _num(text) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def markdown(rows: list[dict], baseline_name: str) -> str:
    """A README table from CSV rows: per subset the mean ± std and the paired difference."""
    if not rows:
        return "_no results yet: run `python benchmarks/review.py`_\n"
    subsets = list(dict.fromkeys(r["subset"] for r in rows))
    head = ["method"]
    for s in subsets:
        head += [f"{s} RMSE", f"Δ vs {baseline_name} [95 % CI]", "Wilcoxon p"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---|" * (len(head) - 1)]
    by = {(r["method"], r["subset"]): r for r in rows}
    for method in dict.fromkeys(r["method"] for r in rows):
        cells = [method]
        for s in subsets:
            r = by.get((method, s), {})
            mean, std, n = _num(r.get("rmse_mean")), _num(r.get("rmse_std")), r.get("n", "0")
            cells.append(f"{mean:.2f} ± {std:.2f} (n={n})" if math.isfinite(std) else
                         (f"{mean:.2f} (n={n})" if math.isfinite(mean) else "—"))  # fmt: skip
            if not r.get("baseline"):
                cells += ["baseline" if r else "—", ""]
                continue
            d, lo, hi, p = (_num(r.get(k)) for k in ("d_rmse", "ci_low", "ci_high", "wilcoxon_p"))
            diff = f"{d:+.2f} [{lo:+.2f}, {hi:+.2f}]" if math.isfinite(lo) else "n/a"
            ptext = f"{p:.3g}" if math.isfinite(p) else "n/a"
            if r.get("significant") == "True":
                diff, ptext = f"**{diff}**", f"**{ptext}**"
            cells += [diff, ptext]
        lines.append("| " + " | ".join(cells) + " |")
    first = rows[0]
    seeds = max(int(_num(r.get("n")) or 0) for r in rows)
    lines += ["", f"Preset `{first['preset']}`, {first['epochs']} epochs per run, seeds "
              f"{' '.join(map(str, SEEDS))}; validation-selected. Δ: mean paired difference "
              f"(row − {baseline_name}, paired by seed), negative = better; bold: Wilcoxon "
              f"p < 0.05. {power_note(seeds)}"]  # fmt: skip
    return "\n".join(lines) + "\n"


def write_readme(balancers: list[dict], stabilisers: list[dict], readme: Path = README) -> None:
    for key, rows, base in (("balancers", balancers, "equal"),
                            ("stabilisers", stabilisers, "both off")):  # fmt: skip
        replace_section(MARKERS[key], markdown(rows, base), readme)


def tables(out: Path, preset: str, epochs, results: Path = RESULTS, readme: Path = README):
    """Collect the sweeps into both CSVs, then the README tables from the CSVs."""
    balancers, stab = collect(out, preset, epochs)
    results.mkdir(parents=True, exist_ok=True)
    write_csv(results / "balancers.csv", balancers)
    write_csv(results / "stabilisers.csv", stab)
    write_readme(read_csv(results / "balancers.csv"), read_csv(results / "stabilisers.csv"),
                 readme)  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--preset", default=DEFAULT_PRESET, help=f"preset of every run (default {DEFAULT_PRESET})"
    )
    ap.add_argument("--epochs", type=int, help="epochs per run (default: fit the budget)")
    ap.add_argument("--budget-cpu-hours", type=float, default=8.0)
    ap.add_argument("--workers", type=int, default=2, help="cells in parallel (1 thread each)")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda (a GPU runs the grid)")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "review")
    ap.add_argument("--estimate", action="store_true", help="print the plan and stop")
    ap.add_argument("--table-only", action="store_true", help="only rewrite CSVs and README")
    args = ap.parse_args(argv)
    resolve_config(args.preset)  # an unknown preset is refused before anything starts
    epochs = args.epochs or epochs_for(args.preset, args.budget_cpu_hours)
    runs = sum(n for _, _, n in plan(args.preset))
    hours = cpu_seconds(args.preset, epochs) / 3600
    print(f"{runs} runs, preset {args.preset}, {epochs} epochs each: about {hours:.1f} CPU hours "
          f"({hours / max(args.workers, 1):.1f} h wall with {args.workers} workers x 1 thread); "
          f"budget {args.budget_cpu_hours:g} CPU hours")  # fmt: skip
    if args.estimate:
        return
    if not args.table_only:
        exe = Execution(device=args.device, threads=1)
        for spec in sweeps(args.out, args.preset, epochs):
            if (spec["out_dir"] / "sweep.yaml").exists():
                epochs = int(read_grid(spec["out_dir"]).overrides["train"]["epochs"])
            run_sweep(**spec, execution=exe, workers=args.workers, progress=sys.stderr.isatty())
    tables(args.out, args.preset, epochs)
    print(f"wrote {RESULTS / 'balancers.csv'}, {RESULTS / 'stabilisers.csv'} and the README tables")


if __name__ == "__main__":
    main()
