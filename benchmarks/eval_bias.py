"""Mean signed error (prediction - truth) of finished runs on their training and validation
windows, in eval mode with the inference (EMA) weights - no test data:

    python benchmarks/eval_bias.py runs/accuracy-small/runs/FD001-gaba-s42 \
        runs/recipe/FD001-small-drop0-s42

A model that over-predicts on the very windows it was trained on has a systematic offset
(for example dropout's train/eval variance shift in front of the regression head).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from grace_rul.checkpoint import load_checkpoint
from grace_rul.data import load_dataset
from grace_rul.rundir import RunDir
from grace_rul.scoring import load_inference_model, score_split


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="finished run directories")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print("| run | dropout | train: RMSE, mean error | validation (truncated): RMSE, mean error |")
    print("|---|---|---|---|")
    for run in args.runs:
        model, cfg = load_inference_model(load_checkpoint(RunDir(run).best))
        data = load_dataset(cfg.data, seed=cfg.seed)
        cells = []
        for split in (data.train, data.val_last):
            _, pred, _ = score_split(model, split)
            err = np.asarray(pred, dtype=np.float64) - split.rul.numpy()
            cells.append(f"{np.sqrt(np.mean(err**2)):.2f}, {err.mean():+.2f}")
        print(f"| {run} | {cfg.model.dropout} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
