"""The ``grace export``, ``grace predict`` and ``grace ensemble`` subcommands.

Wired into :mod:`grace_rul.cli` like the sweep commands; heavy imports happen inside the
command functions so that ``grace --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from grace_rul.errors import GraceError


def _add_model_dir_options(p: argparse.ArgumentParser, metavar: str, what: str) -> None:
    """``--out`` and the options shared by the commands that write a model directory."""
    p.add_argument("--out", required=True, metavar=metavar, help=f"{what} to write")
    p.add_argument(
        "--onnx", action="store_true", help="also write model.onnx (needs grace-rul[deploy])"
    )
    p.add_argument("--overwrite", action="store_true", help="replace a model directory in --out")
    p.add_argument("--data-dir", help="directory with the twelve C-MAPSS *.txt.gz files")


def add_export_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``grace export``: a run (or any model) to a shareable model directory."""
    p = subparsers.add_parser(
        "export",
        help="write a run's model as a directory safe to share (safetensors + JSON)",
        description="Write RUN_DIR's inference (EMA) weights to MODEL_DIR/model.safetensors and "
        "its data contract, normaliser, conformal calibration and provenance to "
        "MODEL_DIR/grace_model.json. Loading it never unpickles anything.",
    )
    p.add_argument(
        "run", metavar="RUN_DIR", help="run directory, checkpoint, or model/ensemble directory"
    )
    _add_model_dir_options(p, "MODEL_DIR", "model directory")
    p.set_defaults(func=cmd_export)
    return p


def cmd_export(args: argparse.Namespace) -> int:
    from grace_rul.inference.ensemble import export_model

    out = export_model(
        args.run, args.out, onnx=args.onnx, overwrite=args.overwrite, data_dir=args.data_dir
    )
    print(f"wrote {out} ({', '.join(sorted(p.name for p in Path(out).iterdir()))})")
    return 0


def add_ensemble_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``grace ensemble``: combine finished runs into one model directory."""
    p = subparsers.add_parser(
        "ensemble",
        help="combine finished runs (e.g. seeds) into one model directory",
        description="Combine finished runs of one subset and data contract into a model "
        "directory whose RUL is the mean of its members' and whose health probabilities are the "
        "mean of theirs. Scores it on the subset's test set into DIR/metrics.json.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="finished run directories")
    _add_model_dir_options(p, "DIR", "ensemble directory")
    p.set_defaults(func=cmd_ensemble)
    return p


def cmd_ensemble(args: argparse.Namespace) -> int:
    from grace_rul.inference.ensemble import build_ensemble

    metrics = build_ensemble(
        args.runs, args.out, onnx=args.onnx, overwrite=args.overwrite, data_dir=args.data_dir
    )
    keys = ("dataset", "members", "test", "intervals", "single_model")
    print(json.dumps({"out": str(args.out), **{k: metrics[k] for k in keys}}, indent=2))
    return 0


def add_predict_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``grace predict``: per-engine RUL with intervals for a file of cycles."""
    p = subparsers.add_parser(
        "predict",
        help="predict RUL, interval and health state of every engine in a file",
        description="One row per engine: unit, cycles_seen, rul, rul_lower, rul_upper, health, "
        "p_healthy, p_degrading, p_critical, flags (short_history, unseen_regime). INPUT is "
        "C-MAPSS text (e.g. test_FD001.txt, gzip allowed) or a CSV/Parquet table with columns "
        "unit, cycle, setting1..3 and the model's sensors (s1..s21); other columns are ignored. "
        "A model of a dataset YAML reads that YAML's unit, time, setting and sensor columns.",
    )
    p.add_argument(
        "--model",
        required=True,
        help="model directory, ensemble directory, run directory or checkpoint",
    )
    p.add_argument("--input", required=True, metavar="FILE", help="engines to predict")
    p.add_argument("--out", metavar="FILE", help="write here (atomically) instead of stdout")
    p.add_argument(
        "--format",
        choices=("csv", "json"),
        help="output format (default: json when --out ends in .json, else csv)",
    )
    p.add_argument(
        "--coverage", default="0.9", help="nominal interval coverage in (0, 1) (default 0.9)"
    )
    p.add_argument(
        "--backend",
        choices=("torch", "onnx"),
        default="torch",
        help="run the networks with PyTorch (default) or onnxruntime (model.onnx)",
    )
    p.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads (default: torch's choice; 1 is fastest on a busy machine)",
    )
    p.set_defaults(func=cmd_predict)
    return p


def cmd_predict(args: argparse.Namespace) -> int:
    from grace_rul.inference.conformal import check_coverage
    from grace_rul.inference.loader import load_model
    from grace_rul.inference.onnx_export import require
    from grace_rul.inference.prediction import format_predictions, predict_file
    from grace_rul.io import atomic_write_text

    coverage = check_coverage(args.coverage)
    fmt = args.format or ("json" if str(args.out or "").lower().endswith(".json") else "csv")
    out = Path(args.out) if args.out else None
    if out is not None and out.is_dir():
        raise GraceError(f"--out {out} is a directory; give a file name")
    if out is not None and _same_file(out, Path(args.input)):
        raise GraceError(f"--out {out} is the --input file; refusing to overwrite the input")
    if args.threads is not None:
        if args.threads < 1:
            raise GraceError(f"--threads must be >= 1 (got {args.threads})")
        import torch

        torch.set_num_threads(args.threads)
    if args.backend == "onnx":
        require("onnxruntime")
    model = load_model(args.model)
    text = format_predictions(predict_file(model, args.input, coverage, backend=args.backend), fmt)
    if out is None:
        sys.stdout.write(text)
        return 0
    try:
        atomic_write_text(out, text)
    except OSError as exc:
        raise GraceError(f"cannot write --out {out} ({exc.strerror or exc})") from None
    print(f"wrote {out}", file=sys.stderr)
    return 0


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file (through links too); ``False`` when one is absent."""
    try:
        return a.exists() and b.exists() and a.samefile(b)
    except OSError:
        return False
