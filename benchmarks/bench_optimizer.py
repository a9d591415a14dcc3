"""AdamW step time of the three PyTorch implementations on a preset's network.

The trainer builds ``AdamW(..., fused=True)``; this prints, for the same parameters and
gradients in one run, the per-step time of the default implementation (a per-tensor loop
on CPU), ``foreach=True`` and ``fused=True``, and each as a ratio of the default:

    python benchmarks/bench_optimizer.py --preset small --threads 1
"""

from __future__ import annotations

import argparse
import time

import torch

from grace_rul.backbones import build_model
from grace_rul.config import PRESETS
from grace_rul.model import count_parameters
from grace_rul.resolve import resolve_config


def step_ms(params: list[torch.nn.Parameter], steps: int, **kind) -> float:
    """Median milliseconds of one AdamW step over ``steps`` steps (after 5 warm-up steps)."""
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4, **kind)
    for _ in range(5):
        opt.step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        opt.step()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="small", choices=list(PRESETS))
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model(resolve_config(args.preset).model)
    params = list(model.parameters())
    for p in params:
        p.grad = torch.randn_like(p)
    print(f"{args.preset}: {count_parameters(model):,} parameters, {args.threads} thread(s)")
    base = step_ms(params, args.steps)
    print("| AdamW | ms per step | × default |\n|---|---|---|")
    for name, kind in (
        ("default", {}),
        ("foreach=True", {"foreach": True}),
        ("fused=True", {"fused": True}),
    ):  # noqa: E501
        ms = base if not kind else step_ms(params, args.steps, **kind)
        print(f"| {name} | {ms:.2f} | {ms / base:.2f} |")


if __name__ == "__main__":
    main()
