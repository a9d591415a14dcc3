"""The accuracy search: ``grace tune`` on FD001 and FD002, resumable across sessions.

    nohup python benchmarks/search.py --dataset FD001 --workers 2 > search-fd001.log 2>&1 &
    python benchmarks/search.py --dataset FD001 --summary-only   # trials.csv, best.yaml only

A two-objective study (3-fold CV RMSE, CPU seconds per fold model) over
``benchmarks/search/space.yaml`` — architecture x window features x scaling x LR schedule x
SWA x clip x LR, window, dropout, weight decay, batch size — on top of the ``bilstm``
preset (0.1's default, then called ``default``; the space sets every key the presets differ
in), seed 42 (so every trial sees the same folds). Judged on the CV score only: a trial
builds no test split. The study lives in ``benchmarks/results/tune-DATASET/`` (``study.yaml``,
``study.db``, ``trials.csv``, ``best.yaml``, ``pareto.csv``, ``importance.csv``); ``study.db``
is committed, so a later session resumes it with the trials it has (trial run directories
under ``trials/`` are not committed: a trial killed with the session is retried from its
start). FD002's study starts where FD001's stands: its first trial is the FD001 study's best
values (:data:`WARM_START`), then TPE explores from there.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from accuracy import PINNED
from grace_rul.config import merge_overrides
from grace_rul.experiments.tune import (
    IMPORTANCE_CSV,
    STUDY_DB,
    Param,
    TuneSpec,
    open_storage,
    parse_space,
    prepare_study,
    run_tune,
    write_outputs,
)
from grace_rul.io import load_yaml
from readme_tables import replace_section

ROOT = Path(__file__).resolve().parent.parent
SPACE = ROOT / "benchmarks" / "search" / "space.yaml"
TRIALS = 100
FOLDS = 3


def spec(dataset: str, threads: int) -> TuneSpec:
    out = ROOT / "benchmarks" / "results" / f"tune-{dataset.lower()}"
    return TuneSpec(
        out=str(out),
        # float32 on every CPU (auto would train bf16 on an AMX one): trials stay comparable
        base=merge_overrides({"data": {"dataset": dataset}}, PINNED),
        preset="bilstm",  # 0.1's default, the base the FD001 study ran on
        space=load_yaml(SPACE, "search space"),
        folds=FOLDS,
        objective="rmse,cpu",
        seed=42,
        trials=TRIALS,
        storage=f"sqlite:///{(out / STUDY_DB).absolute()}",
        execution={"threads": threads},
    )


# A study -> the study whose best trial it tries first (six regimes start from one regime's
# leader: an FD002 trial costs ~3x an FD001 one, so the search cannot afford a cold start).
WARM_START = {"FD002": "FD001"}


def warm_start(dataset: str) -> int | None:
    """Queue the source study's best trial (lowest CV RMSE) as the first trial of a study that
    has none yet; the number of the trial queued, or None."""
    import optuna

    source = WARM_START.get(dataset)
    if source is None:
        return None
    target = prepare_study(spec(dataset, 1), extend=True)
    if target.trials:
        return None
    src = spec(source, 1)
    study = optuna.load_study(study_name=Path(src.out).name, storage=open_storage(src))
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = min(done, key=lambda t: t.values[0])
    target.enqueue_trial(best.params, user_attrs={"warm_start": f"{source} trial {best.number}"})
    return best.number


# fANOVA fits a random forest to the finished trials; over fewer than this it mostly
# ranks the parameters that happened to differ between two or three trials.
MIN_IMPORTANCE_TRIALS = 10


def cell_format(param: Param) -> Callable[[Any], str]:
    """How the study table writes a searched value: continuous ones to two significant
    digits, whole-number ones as integers (pandas reads a column as float once a queued
    trial leaves it empty), the rest as they are."""
    if param.kind in ("log_uniform", "uniform"):
        return lambda v: f"{v:.2g}"
    whole = all(isinstance(c, int) and not isinstance(c, bool) for c in param.choices)
    if param.kind == "int" or (param.kind == "choice" and whole):
        return lambda v: str(int(v))
    return str


SHOWN = [
    ("model.arch", "arch"), ("data.window", "window"), ("data.window_features", "features"),
    ("data.scaling", "scaling"), ("train.schedule", "schedule"), ("train.swa_start", "SWA from"),
    ("train.clip", "clip"), ("train.lr", "LR"), ("train.weight_decay", "weight decay"),
    ("train.batch_size", "batch"), ("model.dropout", "dropout"),
]  # fmt: skip


def table(trials_csv: Path) -> str:
    """The study's finished trials, best CV score first, from its ``trials.csv``."""
    df = pd.read_csv(trials_csv)
    head = "| trial | " + " | ".join(label for _, label in SHOWN)
    lines = [
        head + " | 3-fold CV RMSE (fold sd) | CPU-s per fold model |",
        "|---" * (len(SHOWN) + 3) + "|",
    ]
    formats = {p.key: cell_format(p) for p in parse_space(load_yaml(SPACE, "search space"))}
    done = df[df["state"] == "COMPLETE"].sort_values("values_0")
    for row in done.to_dict("records"):
        cells = [str(row["number"])]
        cells += [formats[key](row[f"params_{key}"]) for key, _ in SHOWN]
        cells += [f"{row['values_0']:.2f} ({row['user_attrs_cv_std']:.2f})",
                  f"{row['values_1']:.0f}"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    states = df["state"].value_counts().to_dict()
    counts = ", ".join(f"{n} {s.lower()}" for s, n in sorted(states.items()))
    text = "\n".join(lines) + f"\n\nTrials: {counts}."
    importance = trials_csv.parent / IMPORTANCE_CSV
    if importance.is_file() and len(done) >= MIN_IMPORTANCE_TRIALS:
        shares = pd.read_csv(importance).sort_values("importance", ascending=False)
        text += (
            f" What moved the CV score (fANOVA importance over the {len(done)} finished "
            "trials; rough with this few): "
            + ", ".join(f"`{r.param}` {r.importance:.2f}" for r in shares.itertuples())
            + "."
        )
    return text + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", choices=["FD001", "FD002"], required=True)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    ap.add_argument("--summary-only", action="store_true", help="no training; rewrite outputs")
    args = ap.parse_args()
    s = spec(args.dataset, args.threads)
    if args.summary_only:
        import optuna

        study = optuna.load_study(study_name=Path(s.out).name, storage=open_storage(s))
        print(json.dumps(write_outputs(s, study), indent=2))
        replace_section(f"search-{args.dataset.lower()}", table(Path(s.out) / "trials.csv"))
        return
    queued = warm_start(args.dataset)
    if queued is not None:
        print(f"first trial: {WARM_START[args.dataset]}'s trial {queued}", flush=True)
    print(json.dumps(run_tune(s, workers=args.workers, extend=True), indent=2))


if __name__ == "__main__":
    main()
