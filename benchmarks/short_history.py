"""Validation-only check: how runs do on engines seen for only a few cycles.

The truncated validation score cuts validation engines among their windows, so it never
scores a history shorter than the window, while a few test engines are that short and
are front-padded (FD001: 4 of 100 test engines have fewer than 40 cycles). Before a
longer window is chosen, this scores each run on its own validation engines cut after
every third cycle from ``--first`` to ``--last`` (front-padded like a short test engine,
labels from the engine's true life), using no test data:

    python benchmarks/short_history.py runs/recipe/FD001-small-s42 runs/recipe/FD001-small-win40-s42

Each run is scored with its own normaliser, window and validation engines (the same
engines for the same seed and subset).
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
import torch

from grace_rul.checkpoint import load_checkpoint
from grace_rul.data import load_dataset
from grace_rul.data.datasets import read_dataset
from grace_rul.data.windows import make_windows
from grace_rul.model import predict
from grace_rul.rundir import RunDir
from grace_rul.scoring import load_inference_model


def short_history_errors(run: str, first: int, last: int) -> tuple[int, np.ndarray]:
    """The run's window and its signed errors on validation engines cut at first..last."""
    model, cfg = load_inference_model(load_checkpoint(RunDir(run).best))
    data = load_dataset(cfg.data, seed=cfg.seed)
    train = read_dataset(cfg.data).train
    frames, truth = [], []
    for k, unit in enumerate(sorted(data.val_units)):
        rows = train[train["unit"] == unit]
        for cut in range(first, min(last, len(rows) - 1) + 1, 3):
            frames.append(rows[rows["cycle"] <= cut].assign(unit=k * 10_000 + cut))
            truth.append(min(len(rows) - cut, cfg.data.max_rul))
    frame = pd.concat(frames).reset_index(drop=True)
    windows = make_windows(
        data.normalizer.transform(frame),
        frame,
        cfg.data.window,
        True,
        summary=cfg.data.window_features,
    )
    rul, _ = predict(model, windows.x)
    return cfg.data.window, rul.numpy() - np.asarray(truth, dtype=np.float64)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="finished run directories")
    ap.add_argument("--first", type=int, default=21, help="shortest history scored (cycles)")
    ap.add_argument("--last", type=int, default=60, help="longest history scored (cycles)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print("| run | window | cuts | RMSE | mean error (pred - true) |\n|---|---|---|---|---|")
    for run in args.runs:
        window, err = short_history_errors(run, args.first, args.last)
        rmse = float(np.sqrt(np.mean(err**2)))
        print(f"| {run} | {window} | {len(err)} | {rmse:.2f} | {err.mean():+.2f} |")


if __name__ == "__main__":
    main()
