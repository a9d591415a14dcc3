"""``grace data describe``: what a dataset gives before anything trains (wired into the CLI)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from grace_rul.config import DataConfig, add_setting_arguments, settings_from_args
from grace_rul.data.cmapss import COLUMNS, SETTINGS
from grace_rul.data.datasets import dataset_kind, read_dataset
from grace_rul.data.windows import Split, build_data
from grace_rul.io import load_yaml
from grace_rul.resolve import resolve_config


def describe(cfg: DataConfig, seed: int = 42, data_dir: str | Path | None = None) -> dict[str, Any]:
    """Units, rows per unit, regimes, sensors, windows and labels of ``cfg.dataset``.

    The same reading, split and scaling as a run with this ``data`` config and ``seed``.
    """
    raw = read_dataset(cfg, data_dir)
    data = build_data(raw, cfg, seed)

    def rows(frame) -> dict[str, Any]:
        sizes = frame.groupby("unit").size().to_numpy()
        return {"min": int(sizes.min()), "median": float(np.median(sizes)), "max": int(sizes.max())}

    train_rows = raw.train[raw.train["unit"].isin(data.train_units)]
    regime = data.normalizer.assign(train_rows)
    dropped = raw.notes.get("sensors_dropped")
    if dropped is None:  # C-MAPSS: the contract's fixed sensor list
        skip = {"unit", "cycle", *SETTINGS, *raw.sensors}
        dropped = {c: "constant or nearly so in C-MAPSS (fixed list)" for c in COLUMNS
                   if c not in skip}  # fmt: skip

    def labels(split: Split) -> dict[str, float]:
        return {"min": float(split.rul.min()), "max": float(split.rul.max())}

    return {
        "dataset": cfg.dataset,
        "name": raw.dataset,
        "kind": dataset_kind(cfg.dataset),
        "units": {
            "train": len(data.train_units),
            "val": len(data.val_units),
            "test": int(raw.test["unit"].nunique()),
        },
        "rows_per_unit": {"train": rows(raw.train), "test": rows(raw.test)},
        "test_split": raw.test_split,
        "normalization": data.normalizer.mode,
        "regimes": {
            "settings": list(raw.settings),
            "method": raw.regimes,
            "found": data.normalizer.n_regimes,
            "train_rows": np.bincount(regime, minlength=data.normalizer.n_regimes).tolist(),
        },
        "sensors": {"kept": list(raw.sensors), "dropped": dropped},
        "windows": {
            "window": cfg.window,
            "train": len(data.train),
            "val": len(data.val),
            "val_last": len(data.val_last),
            "test": len(data.test),
        },
        "labels": {
            "max_rul": cfg.max_rul,
            "train": labels(data.train),
            "test": labels(data.test),
            "health_train": np.bincount(data.train.health.numpy(), minlength=3).tolist(),
        },
        **(
            {"notes": {k: v for k, v in raw.notes.items() if k != "sensors_dropped"}}
            if len(raw.notes) > 1
            else {}
        ),  # fmt: skip
    }


def format_description(d: dict[str, Any]) -> str:
    """The human-readable form of :func:`describe`."""
    r, w, lab = d["rows_per_unit"], d["windows"], d["labels"]
    reg = d["regimes"]
    lines = [
        f"dataset  {d['dataset']} ({d['kind']}: {d['name']})",
        f"units    train {d['units']['train']}, val {d['units']['val']}, test {d['units']['test']}"
        f" (test: {d['test_split']})",
        "rows     per unit min/median/max: "
        + "; ".join(f"{k} {v['min']}/{v['median']:g}/{v['max']}" for k, v in r.items()),
        f"regimes  {reg['found']} ({reg['method']}; settings {', '.join(reg['settings']) or '-'})"
        f", training rows {reg['train_rows']}; normalisation {d['normalization']}",
        f"sensors  kept {len(d['sensors']['kept'])}: {', '.join(d['sensors']['kept'])}",
    ]
    for name, why in d["sensors"]["dropped"].items():
        lines.append(f"         dropped {name}: {why}")
    lines += [
        f"windows  {w['window']} rows: train {w['train']}, val {w['val']} "
        f"(last-window cuts {w['val_last']}), test {w['test']}",
        f"labels   RUL capped at {lab['max_rul']}: train {lab['train']['min']:g}..."
        f"{lab['train']['max']:g}, test {lab['test']['min']:g}...{lab['test']['max']:g}; "
        f"health classes (healthy, degrading, critical) in train {lab['health_train']}",
    ]
    return "\n".join(lines)


def add_data_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``grace data describe``."""
    p = subparsers.add_parser("data", help="inspect a dataset before training")
    sub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    d = sub.add_parser(
        "describe",
        help="units, rows, regimes, sensors, windows and labels of a dataset",
        description="Read a dataset as a run would (same split, scaling and windows) and "
        "report what it gives. --set data.KEY=VALUE changes the data settings.",
    )
    add_setting_arguments(d, ("dataset", "seed"))
    d.add_argument("--data-dir", help="directory with the twelve C-MAPSS *.txt.gz files")
    d.add_argument("--json", action="store_true", help="print JSON")
    d.set_defaults(func=cmd_describe)
    return p


def cmd_describe(args: argparse.Namespace) -> int:
    yaml_cfg = load_yaml(args.config) if args.config else {}
    cfg = resolve_config(args.preset or "tiny", yaml_cfg, settings_from_args(args))
    d = describe(cfg.data, cfg.seed, args.data_dir)
    print(json.dumps(d, indent=2) if args.json else format_description(d))
    return 0
