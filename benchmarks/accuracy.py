"""The accuracy table: C-MAPSS FD001-FD004 x 5 seeds per recipe, with the honest anchors.

    nohup python benchmarks/accuracy.py --recipe default --workers 2 --threads 1 > acc.log 2>&1 &
    python benchmarks/accuracy.py --recipe default-5fold --datasets FD001 --seeds 42 123
    python benchmarks/accuracy.py --table-only          # rewrite the tables from the CSV

A part of a recipe (``--datasets``, ``--seeds``) fits one session: its rows join the
committed rows of the other subsets and seeds.

Each recipe of :data:`RECIPES` (a preset plus overrides) trains as a resumable ``grace
sweep`` (gaba, validation-selected) into ``runs/accuracy-RECIPE``: started again, it skips
finished runs and resumes interrupted ones. A recipe with ``data.folds`` trains one K-fold
ensemble per seed (``grace train --folds K``); a single-model recipe whose seeds have all
finished also gets a seed ensemble (``grace ensemble``). The script writes
``benchmarks/results/accuracy.csv`` - one row per finished run and one per ensemble, rows of
recipes not trained here kept as committed - and regenerates the accuracy table (between the
``accuracy:start`` / ``accuracy:end`` markers of README.md and docs/evidence/accuracy.md).
Every number comes from the test set scored once at the end of a finished run; nothing
here chooses anything. Each recipe is compared with the pre-search default (``bilstm``) on
the same seeds: paired mean difference, 95 % t-interval, two-sided Wilcoxon p (with five
pairs the smallest p the test can give is 0.0625). Every run is float32 (:data:`PINNED`):
``train.precision=auto`` would train bf16 on an AMX CPU and fp32 on an AVX2 one, and the
rows of one table come from both.
"""

from __future__ import annotations

import argparse
import csv
import re
import statistics
from pathlib import Path
from typing import Any

from grace_rul.config import Execution, flatten, merge_overrides
from grace_rul.experiments.executors import ExecutorSpec
from grace_rul.experiments.grid import CellState, cell_dir, inspect_cell, read_grid
from grace_rul.experiments.significance import paired_stats
from grace_rul.experiments.sweep import run_sweep
from grace_rul.inference.ensemble import build_ensemble
from grace_rul.resolve import resolve_config
from grace_rul.rundir import RunDir
from readme_tables import merge_rows, replace_section, write_rows

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "accuracy.csv"
SEEDS = [42, 123, 456, 789, 1024]
DATASETS = ["FD001", "FD002", "FD003", "FD004"]
# Issue targets: 5-seed mean last-window test RMSE, validation- or CV-selected.
TARGETS = {"FD001": 12.5, "FD002": 14.5, "FD003": 12.5, "FD004": 15.0}
FOLD_TARGETS = {"FD001": 12.0, "FD002": 13.5, "FD003": 12.0, "FD004": 14.0}
BASELINE = "bilstm"
# name -> (preset, overrides, what it is). The bilstm and small rows were trained with
# early-stopping patience 15 (0.1's setting); their grids keep it so runs resume.
RECIPES: dict[str, tuple[str, dict[str, Any], str]] = {
    "default": ("default", {}, "the default preset, one model"),
    "default-5fold": ("default", {"data": {"folds": 5}}, "the default, 5-fold ensemble"),
    "bilstm": ("bilstm", {"train": {"early_stop_patience": 15}}, "0.1's default"),
    "small": ("small", {"train": {"early_stop_patience": 15}}, "0.1's small"),
    # Li, Ding & Sun 2018's network and window, trained with GRACE's protocol and recipe.
    "dcnn": ("bilstm", {"model": {"arch": "dcnn"}, "data": {"window": 30}}, "Li et al. DCNN"),
}
# Added to every recipe, and to every confirm job and search trial (confirm.py, search.py),
# so that rows trained on different CPUs measure the same thing.
PINNED: dict[str, Any] = {"train": {"precision": "32"}}
# Published or public-code figures, quoted (not re-run here): last-window test RMSE, cap 125.
ANCHORS = [
    ("NAS transformer, best architecture (mohyunho/NAS_transformer)",
     "architecture and epoch chosen on 20 validation engines, test scored once",
     ["11.50", "16.14", "11.35", "20.00"]),
    ("NAS transformer, mean of its 10 best architectures",
     "as above", ["12.09", "16.95", "11.58", "20.48"]),
    ("supervised 1D-CNN, 10 runs (Krokotsch)",
     "validation-loss checkpoint, min-max to [-1, 1]", ["14.63", "17.55", "13.88", "21.66"]),
    ("DCNN, Li, Ding & Sun 2018 (RESS 172), re-implemented by us",
     "no selection: seed 0, all 100 units, 250 epochs", ["14.43", "—", "—", "—"]),
    ("DCNN, Li, Ding & Sun 2018, as published",
     "the paper's own protocol", ["12.61", "—", "—", "—"]),
]  # fmt: skip
COLUMNS = [
    "recipe", "kind", "subset", "seed", "preset", "balancer", "rmse_last", "nasa_score",
    "mae", "health_accuracy", "coverage_80", "width_80", "coverage_90", "width_90",
    "best_epoch", "epochs_run", "seconds", "cpu_seconds", "threads",
    "precision", "cpu", "protocol", "commit",
]  # fmt: skip


def _row(recipe: str, kind: str, subset: str, seed: str, m: dict) -> dict:
    test, intervals = m.get("test") or {}, m.get("intervals") or {}
    return {
        "recipe": recipe,
        "kind": kind,
        "subset": subset,
        "seed": seed,
        # an ensemble's metrics list its members' presets and balancers
        "preset": m.get("preset") or ",".join(m.get("presets", [])),
        "balancer": m.get("balancer") or ",".join(m.get("balancers", [])),
        "rmse_last": test.get("rmse_last"),
        "nasa_score": test.get("nasa_score"),
        "mae": test.get("mae"),
        "health_accuracy": test.get("health_accuracy"),
        "coverage_80": intervals.get("0.8", {}).get("coverage", ""),
        "width_80": intervals.get("0.8", {}).get("mean_width", ""),
        "coverage_90": intervals.get("0.9", {}).get("coverage", ""),
        "width_90": intervals.get("0.9", {}).get("mean_width", ""),
        "best_epoch": m.get("best_epoch") or "",
        "epochs_run": m.get("epochs_run", ""),
        "seconds": m.get("seconds", ""),
        "cpu_seconds": m.get("cpu_seconds", ""),
        "threads": m.get("threads", ""),
        "precision": m.get("precision", ""),
        "cpu": m.get("cpu", ""),
        "protocol": m.get("protocol_label", ""),
        "commit": m.get("commit", ""),
    }


def collect(recipe: str, sweep_dir: Path) -> list[dict]:
    """One row per finished run of the recipe's sweep, plus one per seed ensemble."""
    grid = read_grid(sweep_dir)
    kind = "folds" if RECIPES[recipe][1].get("data", {}).get("folds") else "single"
    rows = []
    for cell in grid.cells():
        state = inspect_cell(cell_dir(sweep_dir, cell), check_checkpoint=False)
        if state.status == CellState.DONE:
            rows.append(_row(recipe, kind, cell.dataset, str(cell.seed), state.metrics or {}))
    if kind == "single":
        rows += ensemble_rows(recipe, sweep_dir, grid)
    return rows


def ensemble_rows(recipe: str, sweep_dir: Path, grid) -> list[dict]:
    """Seed ensembles of subsets whose seeds are :data:`SEEDS`, all finished here (built
    once, then reused); a sweep of other seeds or part of them (``--seeds``) builds none, as
    its members would stand in the table for the five."""
    rows = []
    for dataset in grid.datasets:
        cells = [c for c in grid.cells() if c.dataset == dataset]
        runs = [cell_dir(sweep_dir, c) for c in cells]
        if sorted(c.seed for c in cells) != sorted(SEEDS):
            continue
        if not all(RunDir(r).is_finished() for r in runs):
            continue
        out = sweep_dir / "ensembles" / dataset
        if not (out / "metrics.json").is_file():
            build_ensemble(runs, out)
        m = RunDir(out).read_metrics()
        seeds = "+".join(str(c.seed) for c in cells)
        rows.append(_row(recipe, "ensemble", dataset, seeds, m))
    return rows


def _key(row: dict) -> tuple[str, str, str, str]:
    return row["recipe"], row["kind"], row["subset"], str(row["seed"])


def merged_rows(rows: list[dict]) -> list[dict]:
    """This sweep's rows plus the committed rows it does not replace: other recipes, and
    subsets or seeds trained in an earlier session whose run directories are not here."""
    return merge_rows(RESULTS, rows, _key)


def _values(rows: list[dict], key: str) -> list[float]:
    return [float(r[key]) for r in rows if r[key] not in ("", None)]


def _mean_std(values: list[float]) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.2f} (n=1)"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f} (n={len(values)})"


def _paired(mine: list[dict], base: list[dict]) -> str:
    """Paired test-RMSE difference against the baseline's runs of the same seeds."""
    by_seed = {r["seed"]: float(r["rmse_last"]) for r in base}
    diffs = [float(r["rmse_last"]) - by_seed[r["seed"]] for r in mine if r["seed"] in by_seed]
    if len(diffs) < 2:
        return "—"
    st = paired_stats(diffs)
    return f"{st.mean:+.2f} [{st.ci_low:+.2f}, {st.ci_high:+.2f}], p={st.p:.3f} (n={st.n})"


def _isas(rows: list[dict]) -> str:
    """`` (AMX)``: the matrix ISA of the CPUs that timed ``rows`` (rows before the CPU was
    recorded have none: their ``auto`` precision resolved to fp32, so no native bf16)."""
    isas = dict.fromkeys(
        m[1] for r in rows if (m := re.search(r"\(([^()]+)\)$", r.get("cpu") or ""))
    )
    return f" ({'/'.join(isas)})" if isas else ""


def table(rows: list[dict]) -> str:
    """The accuracy table, from the CSV rows: means over each recipe's runs per subset."""
    lines = [
        "| subset | recipe | test RMSE (mean ± sd over seeds) | Δ vs `bilstm` [95 % CI], "
        "Wilcoxon p | seed ensemble | target | NASA score | MAE | health acc. "
        "| 80 % interval: coverage, width | 90 % interval: coverage, width "
        "| epochs run (best) | CPU-min per run (ISA) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    recipes = [r for r in RECIPES if any(row["recipe"] == r for row in rows) or r == "default"]
    for recipe, subset in ((r, s) for r in recipes for s in DATASETS):
        mine = [r for r in rows if r["subset"] == subset and r["recipe"] == recipe]
        if not mine and recipe != "default":
            continue
        per_seed = [r for r in mine if r["kind"] in ("single", "folds")]
        folds = any(r["kind"] == "folds" for r in per_seed)
        ens = [r for r in mine if r["kind"] == "ensemble"]
        base = [r for r in rows if r["subset"] == subset and r["recipe"] == BASELINE
                and r["kind"] == "single"]  # fmt: skip
        cells = [subset, f"`{recipe}`" + (" (5-fold ensemble)" if folds else "")]
        cells.append(_mean_std(_values(per_seed, "rmse_last")))
        cells.append("—" if recipe == BASELINE else _paired(per_seed, base))
        cells.append(f"{float(ens[0]['rmse_last']):.2f}" if ens else "—")
        cells.append(f"≤ {(FOLD_TARGETS if folds else TARGETS)[subset]}")
        if per_seed:
            mean = {k: statistics.mean(_values(per_seed, k) or [float("nan")]) for k in (
                "nasa_score", "mae", "health_accuracy", "epochs_run", "best_epoch",
                "cpu_seconds", "coverage_80", "width_80", "coverage_90", "width_90",
            )}  # fmt: skip
            epochs = f"{mean['epochs_run']:.0f}" + ("" if folds else f" ({mean['best_epoch']:.0f})")
            cells += [
                f"{mean['nasa_score']:.0f}",
                f"{mean['mae']:.2f}",
                f"{mean['health_accuracy']:.3f}",
                f"{mean['coverage_80']:.2f}, {mean['width_80']:.0f} cycles",
                f"{mean['coverage_90']:.2f}, {mean['width_90']:.0f} cycles",
                epochs,
                f"{mean['cpu_seconds'] / 60:.1f}" + _isas(per_seed),
            ]
        else:
            cells += ["—"] * 7
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Recipes: " + "; ".join(
        f"`{name}` = {RECIPES[name][2]} (preset `{RECIPES[name][0]}`"
        + "".join(f", {k}={v}" for k, v in flatten(RECIPES[name][1]).items()) + ")"
        for name in recipes
    ) + "; every run float32, `gaba`, validation-selected."]  # fmt: skip
    lines += [
        "",
        "Honest anchors, quoted (not re-run here; last-window test RMSE, RUL cap 125):",
        "",
        "| source | protocol | FD001 | FD002 | FD003 | FD004 |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {name} | {protocol} | " + " | ".join(v) + " |" for name, protocol, v in ANCHORS]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="default", choices=list(RECIPES))
    ap.add_argument("--datasets", nargs="+", default=DATASETS)
    ap.add_argument("--seeds", nargs="+", type=int, default=SEEDS)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2, help="torch threads per run")
    ap.add_argument("--out", help="sweep directory (default: runs/accuracy-RECIPE)")
    ap.add_argument("--table-only", action="store_true", help="no training; rewrite the tables")
    args = ap.parse_args()
    preset, recipe_overrides, _ = RECIPES[args.recipe]
    overrides = merge_overrides(recipe_overrides, PINNED)
    sweep_dir = Path(args.out or ROOT / "runs" / f"accuracy-{args.recipe}")
    if not args.table_only:
        resolve_config(preset, overrides)  # refuse a bad recipe before anything starts
        run_sweep(
            sweep_dir,
            args.datasets,
            ["gaba"],
            args.seeds,
            preset=preset,
            overrides=overrides,
            execution=Execution(threads=args.threads),
            executor=ExecutorSpec(workers=args.workers),
            extend=True,
        )
    if (sweep_dir / "sweep.yaml").is_file():
        rows = merged_rows(collect(args.recipe, sweep_dir))
        write_rows(RESULTS, COLUMNS, rows)
    else:  # no runs here: the committed CSV is the evidence
        rows = list(csv.DictReader(open(RESULTS, newline=""))) if RESULTS.is_file() else []
    replace_section("accuracy", table(rows))
    print(table(rows))


if __name__ == "__main__":
    main()
