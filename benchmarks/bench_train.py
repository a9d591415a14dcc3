"""Training throughput (samples/s) of the GRACE trainer against a plain PyTorch loop.

Both run in this process on the same model and FD001 windows, so the printed
ratios are comparable even on a noisy machine:

* ``plain``: what one writes by hand - ``DataLoader(TensorDataset)`` with per-sample
  ``__getitem__`` + default collate, ``(L_rul + L_health).backward()``, AdamW, float32.
* ``grace``: one real epoch of :func:`grace_rul.trainer.train` (in-memory tensor
  indexing, balancer, joint-norm clipping, non-finite guard, weight EMA, stats);
  its samples/s counts the training windows over the epoch's wall time, which
  also includes one validation pass and the checkpoint writes. Default settings, so
  ``--precision auto``: bf16 autocast where the CPU computes bf16 natively, else float32.

    python benchmarks/bench_train.py --preset paper --threads 2
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time

import torch
from torch.utils.data import DataLoader, TensorDataset

from grace_rul.backbones import build_model
from grace_rul.config import Execution
from grace_rul.data import load_dataset
from grace_rul.losses import task_losses
from grace_rul.resolve import resolve_config
from grace_rul.stabilisers.precision import resolve_precision
from grace_rul.trainer import train


def plain_loop(cfg, data, batches: int) -> float:
    """Samples/s of a hand-written loop over ``batches`` mini-batches."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, max_rul=cfg.data.max_rul)
    opt = torch.optim.AdamW(
        model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay
    )
    ds = TensorDataset(data.train.x, data.train.rul, data.train.health)
    loader = DataLoader(ds, batch_size=cfg.train.batch_size, shuffle=True)
    seen, start = 0, time.perf_counter()
    for i, (x, y, h) in enumerate(loader):
        if i == batches:
            break
        opt.zero_grad()
        rul, logits, _ = model(x)
        task_losses(rul, logits, y, h, cfg.data.max_rul).sum().backward()
        opt.step()
        seen += len(x)
    return seen / (time.perf_counter() - start)


def grace_epoch(cfg, threads: int) -> tuple[float, int]:
    """Samples/s of one real GRACE epoch, and the number of batches it ran."""
    with tempfile.TemporaryDirectory() as out:
        train(cfg, out, execution=Execution(threads=threads, quiet=True, progress=False))
        with open(f"{out}/history.csv") as f:
            epoch_seconds = float(next(csv.DictReader(f))["seconds"])
    n = len(load_dataset(cfg.data, cfg.seed).train)
    return n / epoch_seconds, -(-n // cfg.train.batch_size)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--balancers", nargs="+", default=["equal", "gaba"])
    ap.add_argument("--precision", default="auto", help="the GRACE runs' train.precision")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results = {}
    for name in args.balancers:
        cfg = resolve_config(
            args.preset,
            overrides={
                "train": {"epochs": 1, "precision": args.precision},
                "balancer": {"name": name},
            },
        )
        results[name], batches = grace_epoch(cfg, args.threads)
    data = load_dataset(cfg.data, cfg.seed)
    results["plain"] = plain_loop(cfg, data, batches)
    resolved = resolve_precision(args.precision, "cpu")
    print(
        f"preset {args.preset}, {args.threads} threads, batch {cfg.train.batch_size}, FD001; "
        f"GRACE precision {args.precision} -> {resolved} on this CPU, plain loop fp32"
    )
    print(f"{'loop':<14}{'samples/s':>12}{'ratio vs plain':>16}")
    for name, sps in results.items():
        label = name if name == "plain" else f"grace/{name}"
        print(f"{label:<14}{sps:>12.0f}{sps / results['plain']:>16.2f}")


if __name__ == "__main__":
    main()
