"""GABA: gradient-aware balancing by inverse gradient norms (docs/design.md §4).

Per step, with g_i the L2 norm of task i's gradient on the shared backbone:
raw weights on the simplex inverse to the norms (lambda_i ∝ 1/g_i), an EMA
``hat_lambda <- beta * hat_lambda + (1 - beta) * raw`` (hat_lambda starts at 1/K),
uniform weights during the first ``warmup_steps`` steps, then a floor on every
weight followed by renormalisation. Everything is detached; the EMA and the
step count are buffers, so they are saved in and restored from ``state_dict``.
Defaults: beta = 0.99, warmup_steps = 100, floor = 0.05.
"""

from __future__ import annotations

import torch
from torch import Tensor

from grace_rul.balancers.base import Balancer, Combination, TaskGrads
from grace_rul.balancers.registry import register


def inverse_norm_weights(norms: Tensor, eps: float = 1e-12) -> Tensor:
    """lambda_i ∝ 1/g_i on the simplex; uniform when any norm is non-finite.

    Chosen on the device (``torch.where``), so the host never waits for the norms.
    """
    inv = 1.0 / norms.clamp_min(eps)
    uniform = torch.full_like(norms, 1.0 / norms.numel())
    return torch.where(torch.isfinite(norms).all(), inv / inv.sum(), uniform)


def apply_floor(weights: Tensor, floor: float) -> Tensor:
    """Raise every weight to at least ``floor``, then renormalise to sum 1."""
    w = weights.clamp_min(floor)
    return w / w.sum()


@register("gaba")
class GABA(Balancer):
    """Gradient-Aware Balancing: inverse-gradient-norm weights, EMA-smoothed, warmed up, floored."""

    needs_task_grads = True

    def __init__(
        self, num_tasks: int = 2, beta: float = 0.99, warmup_steps: int = 100, floor: float = 0.05
    ) -> None:
        super().__init__(num_tasks)
        beta, floor, warmup_steps = float(beta), float(floor), int(warmup_steps)
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"gaba beta must be in [0, 1) (got {beta})")
        if warmup_steps < 0:
            raise ValueError(f"gaba warmup_steps must be >= 0 (got {warmup_steps})")
        if not 0.0 <= floor < 1.0 / num_tasks:
            raise ValueError(
                f"gaba floor must be in [0, 1/K = {1.0 / num_tasks:.3g}) (got {floor})"
            )
        self.beta, self.warmup_steps, self.floor = beta, warmup_steps, floor
        self.register_buffer("smoothed", torch.full((num_tasks,), 1.0 / num_tasks))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def combine(self, losses: Tensor, grads: TaskGrads | None) -> Combination:
        assert grads is not None, "GABA needs per-task gradients"
        raw = inverse_norm_weights(grads.norms().to(self.smoothed.dtype))
        self.smoothed.mul_(self.beta).add_(raw, alpha=1.0 - self.beta)
        self.step += 1
        warm = self.step <= self.warmup_steps  # a device flag: no host sync
        weights = torch.where(
            warm, self.uniform(self.smoothed), apply_floor(self.smoothed, self.floor)
        )
        return Combination(weights=weights, raw=raw, smoothed=self.smoothed.clone())
