"""Does ``torch.compile`` pay for GRACE's network on this machine? Eager vs compiled, one run.

Times a training step (forward, the two task losses, backward, fused AdamW) of a preset's
network on FD001-shaped batches, eager and under ``torch.compile(model)`` (inductor), after
warm-up, and prints the compile time and the median step time of each with the ratio:

    python benchmarks/bench_compile.py --preset default --threads 1

The trainer does not compile: keep it that way unless this shows a gain that repays the
compile time within a run.
"""

from __future__ import annotations

import argparse
import time

import torch

from grace_rul.backbones import build_model
from grace_rul.config import DEFAULT_PRESET, PRESETS
from grace_rul.losses import task_losses
from grace_rul.resolve import resolve_config


def median_step_ms(model, opt, x, y, h, max_rul: float, steps: int) -> float:
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        rul, logits, _ = model(x)
        task_losses(rul, logits, y, h, max_rul).sum().backward()
        opt.step()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default=DEFAULT_PRESET, choices=list(PRESETS))
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = resolve_config(args.preset)
    gen = torch.Generator().manual_seed(0)
    b, w = cfg.train.batch_size, cfg.data.window
    x = torch.randn(b, w, 14, generator=gen)
    y = torch.rand(b, generator=gen) * cfg.data.max_rul
    h = torch.randint(0, 3, (b,), generator=gen)
    results = {}
    for name in ("eager", "compiled"):
        torch.manual_seed(0)
        model = build_model(cfg.model, max_rul=cfg.data.max_rul).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
        net = torch.compile(model) if name == "compiled" else model
        start = time.perf_counter()
        median_step_ms(net, opt, x, y, h, cfg.data.max_rul, 3)  # warm-up (and compilation)
        warm = time.perf_counter() - start
        results[name] = (warm, median_step_ms(net, opt, x, y, h, cfg.data.max_rul, args.steps))
    eager = results["eager"][1]
    print(f"{args.preset}, batch {b}, window {w}, {args.threads} thread(s)")
    print("| model | first 3 steps (s, incl. compile) | ms per step | × eager |\n|---|---|---|---|")
    for name, (warm, ms) in results.items():
        print(f"| {name} | {warm:.1f} | {ms:.1f} | {ms / eager:.2f} |")


if __name__ == "__main__":
    main()
