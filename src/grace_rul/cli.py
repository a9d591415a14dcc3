"""The ``grace`` command line: train, evaluate, sweep, table, tune, report, export, predict, ...

Every setting of a run is reachable from ``grace train`` as ``--set KEY=VALUE`` (see
:mod:`grace_rul.config`); the named flags are aliases for the most used keys. Every
user-facing problem ends as one line on stderr and exit status 2; no traceback reaches
the user.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from grace_rul import rundir
from grace_rul.data.commands import add_data_parser
from grace_rul.errors import GraceError, first_line
from grace_rul.experiments.commands import add_sweep_parser, add_table_parser, add_tune_parser
from grace_rul.inference.commands import add_ensemble_parser, add_export_parser, add_predict_parser
from grace_rul.reports.commands import add_report_parser

if TYPE_CHECKING:
    from grace_rul.config import Config

TRAIN_ALIASES = (
    "dataset", "balancer", "seed", "folds", "epochs", "batch_size", "lr", "precision", "protocol",
)  # fmt: skip


def add_train_parser(sub: argparse._SubParsersAction) -> None:
    from grace_rul.config import add_execution_arguments, add_setting_arguments

    p = sub.add_parser(
        "train",
        help="train one run on a C-MAPSS subset",
        description="Train the dual-task RUL + health network on one C-MAPSS subset. "
        "Settings resolve as: preset < --config YAML < --set and the named flags. "
        "--balancer grace is GABA plus GRACE's adaptive weight-decay schedule "
        "(train.weight_decay_schedule [[100, 0.5], [200, 0.1]]).",
    )
    add_setting_arguments(p, TRAIN_ALIASES)
    add_execution_arguments(p)
    p.add_argument(
        "--out",
        help="run directory to write (default: runs/DATASET-BALANCER-sSEED, -foldsK with --folds)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    p.add_argument(
        "--resume", action="store_true", help="continue the run in --out from checkpoints/last.pt"
    )
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    from grace_rul.config import execution_from_args, settings_from_args
    from grace_rul.io import load_yaml
    from grace_rul.resolve import resolve_config
    from grace_rul.trainer import train

    if args.folds is not None and args.folds.strip() in ("0", "1"):
        raise GraceError(f"--folds needs K >= 2 (got {args.folds}; without --folds: one hold-out)")
    if args.resume and args.out is None:
        raise GraceError("--resume needs --out: the run directory to continue")
    yaml_cfg = load_yaml(args.config) if args.config else {}
    if args.resume and not args.config:
        # Resuming without a config file: start from the saved config, flags still override.
        saved = Path(args.out) / rundir.CONFIG
        yaml_cfg = load_yaml(saved) if saved.is_file() else {}
    cfg = resolve_config(args.preset, yaml_cfg, settings_from_args(args))
    if args.out is None:
        args.out = str(default_out(cfg))
    metrics = train(
        cfg,
        args.out,
        execution=execution_from_args(args),
        resume=args.resume,
        overwrite=args.overwrite,
    )
    summary = {
        "out": str(args.out),
        "best_epoch": metrics["best_epoch"],
        "params": metrics["params"],
        "protocol": metrics["protocol_label"],
        "test": metrics["test"],
    }
    if "cv" in metrics:
        summary["cv"] = {k: metrics["cv"][k] for k in ("rmse", "fold_rmse", "std")}
        summary["model"] = str(Path(args.out) / "model")
    print(json.dumps(summary, indent=2))
    return 0


def default_out(cfg: Config) -> Path:
    """``runs/FD001-gaba-s42`` (``-folds5`` for a cross-validation): where a run goes."""
    name = Path(cfg.data.dataset).stem if Path(cfg.data.dataset).suffix else cfg.data.dataset
    folds = f"-folds{cfg.data.folds}" if cfg.data.folds >= 2 else ""
    return Path("runs") / f"{name}-{cfg.balancer.name}-s{cfg.seed}{folds}"


def add_evaluate_parser(sub: argparse._SubParsersAction) -> None:
    from grace_rul.config import dataset_name

    p = sub.add_parser(
        "evaluate",
        help="score a model on a test set (prints JSON)",
        description="Score a model's inference (EMA) weights on the last window of every test "
        "unit, with the normalisation stored with the model, plus its conformal interval "
        "coverage. MODEL is a run directory, a checkpoint, an exported model or an ensemble.",
    )
    p.add_argument("--model", required=True, help="run, checkpoint, model or ensemble directory")
    p.add_argument(
        "--dataset",
        type=dataset_name,
        help="FD001..FD004, a dataset YAML or an N-CMAPSS .h5 file (default: the model's)",
    )
    p.add_argument("--data-dir", help="directory with the twelve C-MAPSS *.txt.gz files")
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from grace_rul.inference.evaluate import evaluate_model

    print(json.dumps(evaluate_model(args.model, args.dataset, args.data_dir), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from grace_rul import __version__

    parser = argparse.ArgumentParser(
        prog="grace",
        description="GRACE: remaining-useful-life prediction on C-MAPSS with a two-task network "
        "(RUL + health state) and gradient-aware loss balancing.",
    )
    parser.add_argument("--version", action="version", version=f"grace-rul {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_train_parser(sub)
    add_evaluate_parser(sub)
    add_sweep_parser(sub)
    add_table_parser(sub)
    add_tune_parser(sub)
    add_report_parser(sub)
    add_export_parser(sub)
    add_predict_parser(sub)
    add_ensemble_parser(sub)
    add_data_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    # Warnings (torch's included) are held back: on success they are shown after the
    # command, on failure dropped, so that nothing precedes the one error line.
    with warnings.catch_warnings(record=True) as caught:
        try:
            code = int(args.func(args) or 0)
        except GraceError as exc:
            return _fail(str(exc))
        except MemoryError:
            return _fail("out of memory (the input or model is larger than this machine holds)")
        except RuntimeError as exc:  # torch's allocators report exhaustion as RuntimeError
            if "allocate" not in str(exc) and "out of memory" not in str(exc):
                raise
            return _fail(f"out of memory ({first_line(exc)})")
        except KeyboardInterrupt:
            print("grace: interrupted", file=sys.stderr)
            return 130
        except BrokenPipeError:  # output piped into a reader that stopped early (`| head`)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        except OSError as exc:  # a last resort: the commands name their files themselves
            where = f": {exc.filename}" if exc.filename else ""
            return _fail(f"{exc.strerror or first_line(exc)}{where}")
    for w in caught:
        warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    return code


def _fail(message: str) -> int:
    """Print the one error line (never more than one, however long the cause)."""
    print(f"grace: error: {' '.join(message.split())}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
