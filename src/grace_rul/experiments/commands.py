"""The ``grace sweep`` and ``grace table`` subcommands (wired into ``grace_rul.cli``)."""

from __future__ import annotations

import argparse
import sys

DEFAULT_SEEDS = [42, 123, 456, 789, 1024]  # docs/design.md §6: mean ± std over 5 seeds
DEFAULT_BALANCERS = ["equal", "gaba"]
SWEEP_ALIASES = ("epochs", "batch_size", "lr", "precision", "protocol")


def add_sweep_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``grace sweep``: train a datasets x balancers x seeds grid and tabulate it."""
    from grace_rul.config import (
        DATASETS,
        add_execution_arguments,
        add_setting_arguments,
        dataset_name,
    )
    from grace_rul.experiments.executors import EXECUTORS

    p = subparsers.add_parser(
        "sweep",
        help="train a grid of datasets x balancers x seeds (x --vary axes) and tabulate it",
        description="Train every cell of datasets x balancers x seeds into OUT/runs/ (one run "
        "directory per cell), then write OUT/results.csv, summary.md and summary.csv. Re-running "
        "the same command skips finished cells, resumes interrupted ones and re-runs corrupt ones; "
        "a failing cell is retried once, then recorded in OUT/failures.json.",
    )
    p.add_argument(
        "--datasets",
        nargs="+",
        type=dataset_name,
        default=list(DATASETS),
        metavar="DATASET",
        help="C-MAPSS subsets, dataset YAMLs or N-CMAPSS .h5 files (default: FD001..FD004)",
    )
    p.add_argument(
        "--balancers",
        nargs="+",
        default=DEFAULT_BALANCERS,
        metavar="NAME",
        help="loss balancers (default: equal gaba)",
    )
    p.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        default=DEFAULT_SEEDS,
        metavar="SEED",
        help=f"seeds (default: {' '.join(map(str, DEFAULT_SEEDS))})",
    )
    add_setting_arguments(p, SWEEP_ALIASES)
    p.add_argument(
        "--vary",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="an extra grid axis over any config key, repeatable; values parsed like --set "
        "(--vary train.ema_decay=0,0.999 --vary train.clip=0,1; 0 turns clip / EMA off); "
        "cells are named by their values (FD002-gaba-s42-ema_decay=0-clip=0)",
    )
    p.add_argument(
        "--executor",
        choices=EXECUTORS,
        default="local",
        help="local: a pool of worker processes (default); ray: Ray tasks",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="local pool size; each cell gets cpu_count // workers torch threads",
    )
    p.add_argument(
        "--ray-address", help="address of a running Ray cluster (default: start a local one)"
    )
    p.add_argument("--cpus-per-task", type=float, default=1, help="Ray: CPUs per cell (default 1)")
    p.add_argument("--gpus-per-task", type=float, default=0, help="Ray: GPUs per cell (default 0)")
    p.add_argument(
        "--extend",
        action="store_true",
        help="add datasets/balancers/seeds to an existing sweep directory",
    )
    p.add_argument("--out", required=True, help="sweep directory (created or continued)")
    add_execution_arguments(p)
    p.set_defaults(func=cmd_sweep)
    return p


def cmd_sweep(args: argparse.Namespace) -> int:
    """Run the sweep; exit 0 when every cell finished, 1 when some failed."""
    from grace_rul.config import execution_from_args, merge_overrides, settings_from_args
    from grace_rul.experiments.executors import ExecutorSpec
    from grace_rul.experiments.sweep import parse_vary, run_sweep
    from grace_rul.io import load_yaml

    vary = parse_vary(args.vary)
    executor = ExecutorSpec(
        kind=args.executor,
        workers=args.workers,
        ray_address=args.ray_address,
        cpus_per_task=args.cpus_per_task,
        gpus_per_task=args.gpus_per_task,
    )
    overrides = merge_overrides(
        load_yaml(args.config) if args.config else {}, settings_from_args(args)
    )
    preset = args.preset or overrides.pop("preset", None)
    result = run_sweep(
        args.out,
        args.datasets,
        args.balancers,
        args.seeds,
        preset=preset,
        overrides=overrides,
        execution=execution_from_args(args),
        executor=executor,
        extend=args.extend,
        progress=not args.quiet,
        vary=vary,
    )
    assert result.summary is not None
    print(result.summary.to_markdown())
    print(
        f"results: {result.sweep_dir / 'results.csv'}  summary: {result.sweep_dir / 'summary.md'}"
    )
    if result.failed:
        print(
            f"{len(result.failed)} cell(s) failed (see {result.sweep_dir / 'failures.json'}): "
            + ", ".join(result.failed),
            file=sys.stderr,
        )
        return 1
    return 0


def add_table_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``grace table``: print a sweep's summary table."""
    from grace_rul.experiments.summary import FORMATS

    p = subparsers.add_parser(
        "table",
        help="print a sweep's balancers x subsets summary (markdown, LaTeX or CSV)",
        description="Summarise a sweep directory: mean ± sample std over seeds of test RMSE and "
        "NASA score, rows = balancers, columns = subsets, best per subset in bold.",
    )
    p.add_argument("sweep_dir", metavar="SWEEP_DIR", help="a directory written by grace sweep")
    p.add_argument(
        "--format",
        choices=FORMATS,
        default="markdown",
        dest="fmt",
        help="output format (default markdown)",
    )
    p.add_argument(
        "--baseline",
        metavar="NAME",
        help="also compare every row with NAME (a balancer, a row such as 'gaba clip=0', or "
        "an axis value such as 'clip=0'): mean paired difference over seeds with a 95 %% CI "
        "and the Wilcoxon signed-rank p (markdown or csv)",
    )
    p.set_defaults(func=cmd_table)
    return p


def cmd_table(args: argparse.Namespace) -> int:
    from grace_rul.experiments.summary import collect_results, format_table

    if args.baseline is None:
        sys.stdout.write(format_table(args.sweep_dir, args.fmt))
        return 0
    from grace_rul.experiments.significance import format_comparison

    comparison = format_comparison(
        collect_results(args.sweep_dir, write=False), args.baseline, args.fmt
    )  # checked first: a bad --baseline prints one line and nothing else
    if args.fmt == "markdown":
        sys.stdout.write(format_table(args.sweep_dir, args.fmt) + "\n")
    sys.stdout.write(comparison)
    return 0


TUNE_ALIASES = ("dataset", "balancer", "seed", "epochs", "batch_size", "lr", "precision")


def add_tune_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``grace tune``: an Optuna study over config keys, judged on the CV score."""
    from grace_rul.config import add_execution_arguments, add_setting_arguments
    from grace_rul.experiments.tune import OBJECTIVES

    p = subparsers.add_parser(
        "tune",
        help="search config keys with Optuna, judged on the K-fold CV score (never the test set)",
        description="Run or resume an Optuna study (TPE, median pruning on the per-epoch fold "
        "score) over the config keys of --space, on top of the same base settings as grace "
        "train. Every trial is a K-fold cross-validation; it builds no test split. Writes "
        "OUT/study.yaml, OUT/study.db (the default SQLite storage), OUT/trials/, OUT/trials.csv "
        "and OUT/best.yaml (grace train --config OUT/best.yaml).",
    )
    add_setting_arguments(p, TUNE_ALIASES)
    p.add_argument("--space", required=True, help="YAML search space: KEY: {DISTRIBUTION: ...}")
    p.add_argument("--trials", type=int, required=True, help="finished + pruned trials wanted")
    p.add_argument("--folds", type=int, default=3, help="K of each trial's CV (default 3)")
    p.add_argument("--workers", type=int, default=1, help="worker processes on this machine")
    p.add_argument(
        "--storage",
        help="Optuna RDB URL shared by workers on several machines, e.g. "
        "postgresql://user:pass@host/db (default: sqlite:///OUT/study.db)",
    )
    p.add_argument(
        "--objective",
        choices=list(OBJECTIVES),
        default="rmse",
        help="rmse: CV RMSE (pruned); rmse,cpu: CV RMSE and CPU seconds per model (Pareto front)",
    )
    p.add_argument(
        "--heartbeat",
        type=int,
        default=60,
        help="seconds between a running trial's heartbeats; silent for twice this, it is "
        "failed and retried (default 60)",
    )
    p.add_argument(
        "--extend", action="store_true", help="continue a study made with other settings"
    )
    p.add_argument(
        "--out", help="study directory, created or continued (default: tunes/DATASET, lower case)"
    )
    add_execution_arguments(p)
    p.set_defaults(func=cmd_tune)
    return p


def cmd_tune(args: argparse.Namespace) -> int:
    """Run the study and print its summary as JSON."""
    import json
    from pathlib import Path

    from grace_rul.config import (
        DEFAULT_PRESET,
        execution_from_args,
        merge_overrides,
        settings_from_args,
    )
    from grace_rul.errors import GraceError
    from grace_rul.experiments.tune import STUDY_DB, TuneSpec, _optuna, run_tune
    from grace_rul.io import load_yaml

    _optuna()  # refuse early when Optuna is missing
    if args.folds < 2:
        raise GraceError(f"--folds needs K >= 2 (got {args.folds})")
    if args.trials < 1 or args.workers < 1 or args.heartbeat < 1:
        raise GraceError("--trials, --workers and --heartbeat must be >= 1")
    base = merge_overrides(load_yaml(args.config) if args.config else {}, settings_from_args(args))
    preset = args.preset or base.pop("preset", None) or DEFAULT_PRESET
    base.pop("preset", None)
    data = base.setdefault("data", {})
    data.setdefault("dataset", "FD001")
    data.pop("folds", None)
    name = str(data["dataset"])
    out = Path(args.out or Path("tunes") / (Path(name).stem if Path(name).suffix else name).lower())
    storage = args.storage or f"sqlite:///{(out / STUDY_DB).absolute()}"
    execution = execution_from_args(args)
    spec = TuneSpec(
        out=str(out),
        base=base,
        preset=preset,
        space=load_yaml(args.space, "search space"),
        folds=args.folds,
        objective=args.objective,
        seed=int(base.get("seed", 42)),
        trials=args.trials,
        storage=storage,
        heartbeat=args.heartbeat,
        execution={
            "threads": execution.threads,
            "data_dir": execution.data_dir,
            "device": execution.device,
        },
        shared=args.storage is not None,
    )
    print(json.dumps(run_tune(spec, workers=args.workers, extend=args.extend), indent=2))
    return 0
