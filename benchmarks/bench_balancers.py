"""Step time of the gradient-based balancers relative to equal weighting.

One training step = forward + inner losses + balanced backward (the gradient
engine) + joint-norm gradient clip + AdamW step (+ ``after_step``). Every method
gets its own copy of the same initial model and its own optimiser; the methods
are timed in interleaved rounds (rotating order) on the same random batch, and
the step times (median and minimum wall time, median process CPU time) are
reported as ratios to ``equal`` measured in the same run. Random inputs are fine
here: this measures compute, not learning.

Rows:
  equal, gaba, pcgrad, cagrad,  the engine with grad_source="params"
  dbmtl, famo, nashmtl,         (famo: + one no-grad forward after the step, as the trainer)
  alignedmtl
  gaba@rep                      GABA with grad_source="representation" (one backbone backward)
  naive-gaba                    reference kept only here: per-task autograd.grad for the
                                norms, then another full backward() of the weighted sum

Usage: python benchmarks/bench_balancers.py --steps 12 --preset paper --threads 2
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from grace_rul.backbones import build_model
from grace_rul.balancers import TaskGrads, balance_backward, build_balancer
from grace_rul.losses import task_losses
from grace_rul.model import DualTaskNet
from grace_rul.resolve import resolve_config

MAX_RUL = 125.0


def naive_gaba_backward(balancer, losses: Tensor, shared: list[nn.Parameter]) -> Tensor:
    """The textbook way: K extra autograd passes for the norms, then one more backward."""
    norms = []
    for i in range(losses.numel()):
        grads = torch.autograd.grad(losses[i], shared, retain_graph=True, allow_unused=True)
        parts = [g.norm() for g in grads if g is not None]
        norms.append(torch.linalg.vector_norm(torch.stack(parts)))
    column = torch.stack(norms)[:, None]  # GABA only reads the norms of the matrix rows
    comb = balancer.combine(losses.detach(), TaskGrads(matrix=column, last_layer=slice(0, 1)))
    (comb.weights * losses).sum().backward()
    return comb.weights


def make_step(
    kind: str, model: DualTaskNet, batch: tuple[Tensor, Tensor, Tensor], lr: float = 1e-3
) -> Callable[[], None]:
    """A closure running one full training step of ``model`` with the method ``kind``."""
    name, _, mode = kind.partition("@")
    naive = name == "naive-gaba"
    balancer = build_balancer("gaba" if naive else name)
    params = list(model.parameters()) + list(balancer.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    shared, heads = model.shared_parameters(), model.head_parameters()
    last = model.last_shared_layer_params()
    source = "representation" if mode == "rep" else "params"
    x, rul, health = batch

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        rul_pred, logits, z = model(x)
        losses = task_losses(rul_pred, logits, rul, health, MAX_RUL)
        if naive:
            naive_gaba_backward(balancer, losses, shared)
        else:
            out = balance_backward(
                balancer, losses, shared, heads, representation=z, grad_source=source,
                last_layer_params=last,
            )  # fmt: skip
            assert out.finite
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        after = None
        if balancer.needs_post_step_losses:  # FAMO: the trainer's extra no-grad forward
            with torch.no_grad():
                after = task_losses(*model(x)[:2], rul, health, MAX_RUL)
        balancer.after_step(losses_after=after)

    return step


def breakdown(model: DualTaskNet, batch: tuple[Tensor, Tensor, Tensor], reps: int) -> None:
    """Median CPU seconds of a step's pieces: forward, one backward, two per-task grad passes."""
    x, rul, health = batch
    shared = model.shared_parameters()
    times: dict[str, list[float]] = {"forward": [], "backward (sum)": [], "autograd.grad x2": []}
    for _ in range(reps):
        model.zero_grad(set_to_none=True)
        t0 = time.process_time()
        rul_pred, logits, _ = model(x)
        losses = task_losses(rul_pred, logits, rul, health, MAX_RUL)
        t1 = time.process_time()
        losses.sum().backward()
        t2 = time.process_time()
        losses = task_losses(*model(x)[:2], rul, health, MAX_RUL)
        t3 = time.process_time()
        for i in range(2):
            torch.autograd.grad(losses[i], shared, retain_graph=i == 0)
        t4 = time.process_time()
        times["forward"].append(t1 - t0)
        times["backward (sum)"].append(t2 - t1)
        times["autograd.grad x2"].append(t4 - t3)
    for key, values in times.items():
        print(f"  {key:<18} {statistics.median(values):8.3f} cpu s")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=12, help="timed steps per method (median)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    ap.add_argument("--preset", default="paper", help="model preset (paper|small|tiny)")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument(
        "--methods",
        default="equal,gaba,pcgrad,cagrad,dbmtl,famo,nashmtl,alignedmtl,gaba@rep,naive-gaba",
    )
    ap.add_argument("--breakdown", action="store_true", help="also time forward/backward pieces")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    base = build_model(resolve_config(args.preset).model)
    base.train()
    n_params = sum(p.numel() for p in base.parameters())
    x = torch.randn(args.batch, 30, 14)
    batch = (x, torch.rand(args.batch) * MAX_RUL, torch.randint(0, 3, (args.batch,)))
    kinds = [k.strip() for k in args.methods.split(",") if k.strip()]
    if "equal" not in kinds:
        kinds.insert(0, "equal")
    steps = {k: make_step(k, copy.deepcopy(base), batch) for k in kinds}
    print(f"preset {args.preset} ({n_params:,} parameters), batch {args.batch}, "
          f"threads {args.threads}, {args.steps} timed steps per method, interleaved")  # fmt: skip

    wall: dict[str, list[float]] = {k: [] for k in kinds}
    cpu: dict[str, list[float]] = {k: [] for k in kinds}
    for r in range(args.warmup + args.steps):
        order = kinds[r % len(kinds) :] + kinds[: r % len(kinds)]
        for k in order:
            t0, c0 = time.perf_counter(), time.process_time()
            steps[k]()
            dt, dc = time.perf_counter() - t0, time.process_time() - c0
            if r >= args.warmup:
                wall[k].append(dt)
                cpu[k].append(dc)

    # On a shared machine wall time is inflated by other people's jobs: the process CPU
    # time (all torch threads) and the minimum wall time are the steadier estimates.
    med = statistics.median
    ref_wall, ref_min, ref_cpu = med(wall["equal"]), min(wall["equal"]), med(cpu["equal"])
    print(
        "seconds per step (wall median / wall min / CPU median) and ratios to equal "
        "(wall median, paired same-round wall median, wall min, CPU median)"
    )
    print(f"{'method':<11} {'wall':>7} {'min':>7} {'cpu':>7} | {'r_wall':>6} {'r_pair':>6} "
          f"{'r_min':>6} {'r_cpu':>6}")  # fmt: skip
    for k in kinds:
        paired = med(a / b for a, b in zip(wall[k], wall["equal"]))  # same-round ratios
        print(f"{k:<11} {med(wall[k]):7.3f} {min(wall[k]):7.3f} {med(cpu[k]):7.3f} | "
              f"{med(wall[k]) / ref_wall:6.2f} {paired:6.2f} "
              f"{min(wall[k]) / ref_min:6.2f} {med(cpu[k]) / ref_cpu:6.2f}")  # fmt: skip
    if args.breakdown:
        print("breakdown (median):")
        breakdown(copy.deepcopy(base), batch, max(3, args.steps // 2))


if __name__ == "__main__":
    main()
