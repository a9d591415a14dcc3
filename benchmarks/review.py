"""GABA under review (issue 12): the balancer table and the stabiliser ablation, as evidence.

    python benchmarks/review.py --estimate                 # the plan and its CPU-hour estimate
    nohup python benchmarks/review.py > review.log 2>&1 &  # train (resumable), then tables
    python benchmarks/review.py --table-only               # rewrite CSVs + tables

Resumable ``grace sweep`` directories under ``--out`` (default ``runs/review``), one per
subset because each subset has its own epoch budget:

* ``balancers-FD001``, ``balancers-FD002``: equal, gaba, grace, uncertainty, dwa, pcgrad,
  cagrad, imtl, dbmtl, famo, nashmtl, alignedmtl x seeds 42 123 456 789 1024;
* ``single-task-FD001``, ``single-task-FD002``: the same seeds with ``fixed`` weights
  [1, 0] (RUL only: does the health task help RUL at all?);
* ``stabilisers``: FD002 x gaba x seeds x ``--vary train.clip=0,C --vary
  train.ema_decay=0,D`` (C, D: the preset's clip threshold and EMA decay; 0 turns each off).

The per-run budget (``train.epochs``; early stopping still applies) is set per subset from
the accuracy grid's runs of the same preset (``benchmarks/results/accuracy.csv``): each
subset gets the median epoch its validation score peaked at, all scaled down together
until the grid's estimate fits ``--budget-cpu-hours`` (8) of process CPU time. The
estimate uses the CPU seconds per epoch those runs measured (gaba, 1 thread, 2 workers
on 2 cores), divided by gaba's step cost to get ``equal``'s. ``--epochs N`` sets every
subset to N instead; a preset with no accuracy runs fits one epoch count for all subsets
with the constants below. The plan is printed first. Started again, each sweep skips
finished cells, resumes interrupted ones and keeps the epochs it was started with (rounding
may overshoot the budget by a few percent: the estimate says by how much). Then it writes
``benchmarks/results/balancers.csv`` and ``stabilisers.csv`` (per method and subset: seed
mean ± std, the mean paired difference against the baseline with its 95 % t-interval and
the Wilcoxon signed-rank p; baselines ``equal`` and both stabilisers off) and regenerates
the tables between the ``review-balancers`` / ``review-stabilisers`` markers of
docs/evidence/review.md from those CSVs.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys
from pathlib import Path

import pandas as pd

from grace_rul.config import Execution
from grace_rul.experiments.executors import ExecutorSpec
from grace_rul.experiments.grid import CellState, read_grid
from grace_rul.experiments.significance import Footnotes, compare, power_note
from grace_rul.experiments.summary import collect_results, row_labels
from grace_rul.experiments.sweep import run_sweep
from grace_rul.io import atomic_write_text
from grace_rul.resolve import resolve_config
from readme_tables import replace_section

ROOT = Path(__file__).resolve().parent.parent
# The recipe its committed tables measured: 0.1's default (then `default`, now `bilstm`).
PRESET = "bilstm"
RESULTS = ROOT / "benchmarks" / "results"
SEEDS = [42, 123, 456, 789, 1024]
DATASETS = ["FD001", "FD002"]
BALANCERS = ["equal", "gaba", "grace", "uncertainty", "dwa", "pcgrad", "cagrad", "imtl",
             "dbmtl", "famo", "nashmtl", "alignedmtl"]  # fmt: skip
SINGLE_TASK = "single-task (fixed [1, 0])"
ABLATION_DATASET, ABLATION_BALANCER = "FD002", "gaba"
BOTH_OFF = "clip=0 ema_decay=0"
ACCURACY = RESULTS / "accuracy.csv"
# Fallback when accuracy.csv has no runs of the preset: process CPU seconds of one training
# epoch with `equal` (1 thread), per preset and subset. small/FD001 from the README's
# measurement (28 epochs of gaba in 2 min 42 s on 2 threads, /1.6 for equal), FD002 x 2.6
# (its training windows); default = small x 4/3 (40-cycle windows); paper = small x 11.
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


def accuracy_runs(preset: str, path: Path = ACCURACY) -> pd.DataFrame:
    """The accuracy grid's finished single runs of ``preset`` on the review's subsets."""
    if not path.is_file():
        return pd.DataFrame()
    df = pd.read_csv(path)
    df = df[(df["kind"] == "single") & (df["preset"] == preset) & df["subset"].isin(DATASETS)]
    return df if set(df["subset"]) == set(DATASETS) else pd.DataFrame()


def epoch_cpu_s(preset: str, path: Path = ACCURACY) -> dict[str, float]:
    """CPU seconds of one ``equal`` epoch per subset: measured where the accuracy grid has
    runs of ``preset`` (their CPU seconds per epoch / gaba's step cost), else the constants."""
    runs = accuracy_runs(preset, path)
    if runs.empty:
        return EPOCH_CPU_S.get(preset, EPOCH_CPU_S["paper"])
    per_epoch = (runs["cpu_seconds"] / runs["epochs_run"]).groupby(runs["subset"]).mean()
    return {d: float(per_epoch[d]) / COST.get("gaba", GRADIENT_COST) for d in DATASETS}


def cpu_seconds(preset: str, epochs: dict[str, int], path: Path = ACCURACY) -> float:
    """Estimated process CPU seconds of the whole grid at ``epochs[subset]`` per run."""
    per_epoch = epoch_cpu_s(preset, path)
    return sum(
        runs * epochs[d] * per_epoch[d] * COST.get(m, GRADIENT_COST) for d, m, runs in plan(preset)
    )


def epochs_for(preset: str, budget_hours: float, path: Path = ACCURACY) -> dict[str, int]:
    """Epochs per run for each subset: the accuracy runs' median best epoch, scaled down
    together to fit ``budget_hours``; without such runs the most uniform epochs that fit."""
    budget = budget_hours * 3600
    runs = accuracy_runs(preset, path)
    if runs.empty:
        per_epoch = cpu_seconds(preset, dict.fromkeys(DATASETS, 1), path)
        return dict.fromkeys(DATASETS, max(1, int(budget // per_epoch)))
    best = runs.groupby("subset")["best_epoch"].median()
    want = {d: float(best[d]) for d in DATASETS}
    scale = min(1.0, budget / cpu_seconds(preset, want, path))
    return {d: max(1, round(want[d] * scale)) for d in DATASETS}


def _started_epochs(sweep: Path) -> int:
    """The per-run epochs a sweep was started with (its ``sweep.yaml``)."""
    return int(read_grid(sweep).overrides["train"]["epochs"])


def _kept_epochs(out_dir: Path, epochs: int) -> int:
    """The epochs a sweep was started with (a resumed grid keeps its budget)."""
    return _started_epochs(out_dir) if (out_dir / "sweep.yaml").exists() else epochs


def sweeps(out: Path, preset: str, epochs: dict[str, int]) -> list[dict]:
    """The ``run_sweep`` calls of the grid, cheapest decisive comparison first: the
    single-task runs, the stabiliser ablation, then the balancer table per subset."""
    base = resolve_config(preset).train
    common = dict(seeds=SEEDS, preset=preset)

    def spec(name: str, dataset: str, balancers: list[str], overrides: dict | None = None,
             vary: dict | None = None) -> dict:  # fmt: skip
        out_dir = out / name
        train = {"train": {"epochs": _kept_epochs(out_dir, epochs[dataset])}}
        return dict(out_dir=out_dir, datasets=[dataset], balancers=balancers,
                    overrides={**train, **(overrides or {})}, vary=vary, **common)  # fmt: skip

    single = {"balancer": {"options": {"weights": [1, 0]}}}
    specs = [spec(f"single-task-{d}", d, ["fixed"], overrides=single) for d in DATASETS]
    specs.append(spec("stabilisers", ABLATION_DATASET, [ABLATION_BALANCER],
                      vary={"train.clip": [0.0, base.clip],
                            "train.ema_decay": [0.0, base.ema_decay]}))  # fmt: skip
    specs += [spec(f"balancers-{d}", d, BALANCERS) for d in DATASETS]
    return specs


def summary_rows(
    table: str, df: pd.DataFrame, baseline: str, preset: str, epochs: dict[str, object]
) -> list[dict]:
    """CSV rows: per method and subset the seed statistics and the paired comparison
    (``epochs``: the per-run budget of each subset, as the footnote states it)."""
    done = df[df["status"] == CellState.DONE].assign(label=row_labels(df))
    cmp_ = compare(df, baseline)
    cmp_ = cmp_[cmp_["metric"] == "rmse_last"].set_index(["method", "dataset"])
    rows = []
    for label in dict.fromkeys(row_labels(df)):
        for d in dict.fromkeys(df["dataset"]):
            g = done[(done["label"] == label) & (done["dataset"] == d)]
            row = {"table": table, "method": label, "subset": d, "n": len(g),
                   "rmse_mean": g["rmse_last"].mean(), "rmse_std": g["rmse_last"].std(ddof=1),
                   "nasa_mean": g["nasa_score"].mean(), "nasa_std": g["nasa_score"].std(ddof=1),
                   "baseline": "", "preset": preset, "epochs": epochs[d]}  # fmt: skip
            if (label, d) in cmp_.index:
                c = cmp_.loc[(label, d)]
                row.update(baseline=c["baseline"], d_rmse=c["mean_diff"], ci_low=c["ci_low"],
                           ci_high=c["ci_high"], wilcoxon_p=c["wilcoxon_p"],
                           significant=bool(c["significant"]), note=c["note"])  # fmt: skip
            rows.append(row)
    return rows


def arms_frame(
    arms: dict[str, Path], datasets: list[str], seeds: list[int] | None = None
) -> pd.DataFrame:
    """Runs of separate sweeps as one results table whose method is each sweep's label:
    two recipes compared by seed (``benchmarks/selection.py``, ``precision.py``). Only
    ``datasets`` and, when given, ``seeds``; a sweep that does not exist is left out."""
    frames = []
    for label, sweep in arms.items():
        if (sweep / "sweep.yaml").is_file():
            df = collect_results(sweep, write=False)
            keep = df["dataset"].isin(datasets)
            if seeds is not None:
                keep &= df["seed"].isin(seeds)
            frames.append(df[keep].assign(balancer=label, variant=""))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def train_arm(
    out: Path, datasets: list[str], seeds: list[int], overrides: dict, workers: int
) -> None:
    """Train one arm of a paired comparison: :data:`PRESET` with ``gaba`` and only
    ``overrides`` changed, as a resumable sweep (1 thread per cell)."""
    run_sweep(
        out,
        datasets,
        ["gaba"],
        seeds,
        preset=PRESET,
        overrides=overrides,
        execution=Execution(threads=1),
        executor=ExecutorSpec(workers=workers),
        extend=True,
        progress=sys.stderr.isatty(),
    )


def _epochs(sweep: Path) -> dict[str, object]:
    return dict.fromkeys(read_grid(sweep).datasets, _started_epochs(sweep))


def collect(out: Path, preset: str) -> tuple[list[dict], list[dict]]:
    """The CSV rows of both tables from the sweep directories that exist."""
    frames, epochs = [], {}
    for d in DATASETS:
        for name, label in (("balancers", None), ("single-task", SINGLE_TASK)):
            sweep = out / f"{name}-{d}"
            if (sweep / "sweep.yaml").exists():
                df = collect_results(sweep, write=False)
                frames.append(df if label is None else df.assign(balancer=label))
                epochs.update(_epochs(sweep))
    balancers = (
        summary_rows("balancers", pd.concat(frames, ignore_index=True), "equal", preset, epochs)
        if frames
        else []
    )
    stab = []
    sweep = out / "stabilisers"
    if (sweep / "sweep.yaml").exists():
        df = collect_results(sweep, write=False)
        df = df.assign(balancer=df["variant"].where(df["variant"] != "", df["balancer"]),
                       variant="")  # fmt: skip
        stab = summary_rows("stabilisers", df, BOTH_OFF, preset, _epochs(sweep))
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


def markdown(rows: list[dict], baseline_name: str, seeds: list[int] = SEEDS) -> str:
    """A table from CSV rows: per subset the mean ± std and the paired difference."""
    if not rows:
        return "_no results yet: run `python benchmarks/review.py`_\n"
    subsets = list(dict.fromkeys(r["subset"] for r in rows))
    head = ["method"]
    for s in subsets:
        head += [f"{s} RMSE", f"Δ vs {baseline_name} [95 % CI]", "Wilcoxon p"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---|" * (len(head) - 1)]
    by = {(r["method"], r["subset"]): r for r in rows}
    notes = Footnotes()  # why a cell is n/a
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
            diff += notes.mark(r.get("note"))
            ptext = f"{p:.3g}" if math.isfinite(p) else "n/a"
            if r.get("significant") == "True":
                diff, ptext = f"**{diff}**", f"**{ptext}**"
            cells += [diff, ptext]
        lines.append("| " + " | ".join(cells) + " |")
    first = rows[0]
    paired = max(int(_num(r.get("n")) or 0) for r in rows)
    budget = ", ".join(
        f"{s} {e}" for s, e in dict.fromkeys((r["subset"], r["epochs"]) for r in rows)
    )
    lines += ["", f"Preset `{first['preset']}`, epochs per run: {budget}; seeds "
              f"{' '.join(map(str, seeds))}; validation-selected. Δ: mean paired difference "
              f"(row − {baseline_name}, paired by seed), negative = better; bold: Wilcoxon "
              f"p < 0.05. {power_note(paired)}"]  # fmt: skip
    lines += notes.lines()
    return "\n".join(lines) + "\n"


def write_tables(
    balancers: list[dict], stabilisers: list[dict], readme: Path | None = None
) -> None:
    """Both tables on their page (``readme``: another file to write them into)."""
    for key, rows, base in (("balancers", balancers, "equal"),
                            ("stabilisers", stabilisers, "both off")):  # fmt: skip
        replace_section(MARKERS[key], markdown(rows, base), readme)


def tables(out: Path, preset: str, results: Path = RESULTS, readme: Path | None = None) -> None:
    """Collect the sweeps into both CSVs, then both tables from the CSVs (on ``readme``
    when given, else on their docs page). Without runs under ``out`` the committed CSVs
    stay as they are."""
    collected = dict(zip(("balancers", "stabilisers"), collect(out, preset), strict=True))
    results.mkdir(parents=True, exist_ok=True)
    for name, rows in collected.items():
        if rows or not (results / f"{name}.csv").is_file():  # no runs here: keep the evidence
            write_csv(results / f"{name}.csv", rows)
    write_tables(read_csv(results / "balancers.csv"), read_csv(results / "stabilisers.csv"),
                 readme)  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default=PRESET, help=f"preset of every run (default {PRESET})")
    ap.add_argument("--epochs", type=int, help="epochs per run on every subset (default: "
                    "each subset's median best epoch, scaled to fit the budget)")  # fmt: skip
    ap.add_argument("--budget-cpu-hours", type=float, default=8.0)
    ap.add_argument("--workers", type=int, default=2, help="cells in parallel (1 thread each)")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda (a GPU runs the grid)")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "review")
    ap.add_argument("--estimate", action="store_true", help="print the plan and stop")
    ap.add_argument("--table-only", action="store_true", help="only rewrite CSVs and tables")
    args = ap.parse_args(argv)
    resolve_config(args.preset)  # an unknown preset is refused before anything starts
    if args.epochs:
        epochs = dict.fromkeys(DATASETS, args.epochs)
    else:
        epochs = epochs_for(args.preset, args.budget_cpu_hours)
    runs = sum(n for _, _, n in plan(args.preset))
    hours = cpu_seconds(args.preset, epochs) / 3600
    per_run = ", ".join(f"{d} {e}" for d, e in epochs.items())
    print(f"{runs} runs, preset {args.preset}, epochs per run {per_run}: about {hours:.1f} CPU "
          f"hours ({hours / max(args.workers, 1):.1f} h wall with {args.workers} workers x 1 "
          f"thread); budget {args.budget_cpu_hours:g} CPU hours")  # fmt: skip
    if args.estimate:
        return
    if not args.table_only:
        execution = Execution(device=args.device, threads=1)
        pool = ExecutorSpec(workers=args.workers)
        for spec in sweeps(args.out, args.preset, epochs):
            run_sweep(**spec, execution=execution, executor=pool, progress=sys.stderr.isatty())
    tables(args.out, args.preset)
    print(f"wrote {RESULTS / 'balancers.csv'}, {RESULTS / 'stabilisers.csv'} and the tables")


if __name__ == "__main__":
    main()
