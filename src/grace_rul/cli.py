"""The ``grace`` command line: train, evaluate, sweep, table, report.

Every user-facing problem ends as one line on stderr and exit status 2;
no traceback reaches the user.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from grace_rul.errors import GraceError
from grace_rul.experiments.commands import add_sweep_parser, add_table_parser
from grace_rul.inference.commands import add_ensemble_parser, add_export_parser, add_predict_parser
from grace_rul.reports.commands import add_report_parser


def _balancer_option(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got '{text}'")
    key, value = text.split("=", 1)
    import yaml

    return key.strip(), yaml.safe_load(value)


def add_train_parser(sub: argparse._SubParsersAction) -> None:
    from grace_rul.config import DATASETS, PRECISIONS, PRESETS, PROTOCOLS

    p = sub.add_parser(
        "train",
        help="train one run on a C-MAPSS subset",
        description="Train the dual-task RUL + health network on one C-MAPSS subset. "
        "Settings resolve as: preset < --config YAML < flags.",
    )
    p.add_argument(
        "--dataset", type=str.upper, choices=DATASETS, help="C-MAPSS subset (default FD001)"
    )
    p.add_argument("--preset", choices=list(PRESETS), help="model/training preset (default paper)")
    p.add_argument("--balancer", help="loss balancer, e.g. equal, gaba, grace (see README for all)")
    p.add_argument(
        "--balancer-opt",
        action="append",
        type=_balancer_option,
        default=[],
        metavar="KEY=VALUE",
        help="balancer option, repeatable (e.g. beta=0.99, weights=[0.7,0.3])",
    )
    p.add_argument(
        "--grad-source",
        choices=["params", "representation"],
        help="task gradients w.r.t. shared parameters (exact) or the shared representation",
    )
    p.add_argument("--config", help="YAML file with config overrides")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--lstm-layers", type=int, help="BiLSTM layers (paper preset: 2)")
    p.add_argument("--window", type=int, help="window length in cycles (default 30)")
    p.add_argument("--seed", type=int, help="seed for every RNG (default 42)")
    p.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        help="val: select on validation units (default); paper: select on test (optimistic)",
    )
    p.add_argument("--clip", type=float, help="gradient clip threshold (default 1.0)")
    p.add_argument(
        "--clip-mode", choices=["norm", "value"], help="joint L2 norm (default) or per value"
    )
    p.add_argument("--ema-decay", type=float, help="weight-EMA decay (default 0.999)")
    p.add_argument(
        "--ema-warmup",
        action=argparse.BooleanOptionalAction,
        help="EMA decay warmup min(decay, (1+t)/(10+t)) (on in small/tiny presets)",
    )
    p.add_argument(
        "--precision", choices=PRECISIONS, help="32 (default), bf16 autocast, 16 (CUDA + scaler)"
    )
    p.add_argument(
        "--deterministic", action="store_true", default=None, help="deterministic algorithms"
    )
    p.add_argument(
        "--max-bad-steps", type=int, help="stop after this many consecutive non-finite steps"
    )
    p.add_argument(
        "--spike-factor", type=float, help="loss spike threshold over the running level (3.0)"
    )
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument(
        "--data-dir", help="directory with the twelve C-MAPSS *.txt.gz files (default: bundled)"
    )
    p.add_argument("--out", required=True, help="run directory to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    p.add_argument(
        "--resume", action="store_true", help="continue the run in --out from checkpoints/last.pt"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    from grace_rul.config import load_yaml, resolve_config
    from grace_rul.trainer import train

    yaml_cfg = load_yaml(args.config) if args.config else {}
    if args.resume and not args.config:
        # Resuming without a config file: start from the saved config, flags still override.
        saved = Path(args.out) / "config.yaml"
        yaml_cfg = load_yaml(saved) if saved.is_file() else {}
    options = dict(args.balancer_opt)
    overrides = {
        "seed": args.seed,
        "data": {"dataset": args.dataset, "window": args.window, "data_dir": args.data_dir},
        "model": {"lstm_layers": args.lstm_layers},
        "train": {
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "weight_decay": args.weight_decay,
            "protocol": args.protocol,
            "clip": args.clip,
            "clip_mode": args.clip_mode,
            "ema_decay": args.ema_decay,
            "ema_warmup": args.ema_warmup,
            "precision": args.precision,
            "deterministic": args.deterministic,
            "max_bad_steps": args.max_bad_steps,
            "spike_factor": args.spike_factor,
            "device": args.device,
            "threads": args.threads,
        },
        "balancer": {
            "name": args.balancer,
            "grad_source": args.grad_source,
            "options": options or None,
        },
    }
    cfg = resolve_config(args.preset, yaml_cfg, overrides)
    metrics = train(cfg, args.out, resume=args.resume, overwrite=args.overwrite, quiet=args.quiet)
    print(
        json.dumps(
            {
                "out": str(args.out),
                "best_epoch": metrics["best_epoch"],
                "params": metrics["params"],
                "protocol": metrics["protocol_label"],
                "test": metrics["test"],
            },
            indent=2,
        )
    )
    return 0


def add_evaluate_parser(sub: argparse._SubParsersAction) -> None:
    from grace_rul.config import DATASETS

    p = sub.add_parser(
        "evaluate",
        help="score a saved checkpoint on a test set (prints JSON)",
        description="Score a checkpoint's inference (EMA) weights on the last window of "
        "every test unit, with the normalisation stored in the checkpoint.",
    )
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--checkpoint", help="path to checkpoints/best.pt (or last.pt)")
    which.add_argument("--model", help="run, checkpoint, model or ensemble directory")
    p.add_argument(
        "--dataset", type=str.upper, choices=DATASETS, help="subset (default: the checkpoint's)"
    )
    p.add_argument("--data-dir", help="directory with the twelve C-MAPSS *.txt.gz files")
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from grace_rul.evaluation import evaluate_checkpoint

    if args.model is not None:
        from grace_rul.inference.evaluate import evaluate_model

        print(json.dumps(evaluate_model(args.model, args.dataset, args.data_dir), indent=2))
        return 0
    print(json.dumps(evaluate_checkpoint(args.checkpoint, args.dataset, args.data_dir), indent=2))
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
    add_report_parser(sub)
    add_export_parser(sub)
    add_predict_parser(sub)
    add_ensemble_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except GraceError as exc:
        print(f"grace: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("grace: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
