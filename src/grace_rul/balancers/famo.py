"""FAMO, fast adaptive multitask optimisation (Liu, Liu, Chen, Stone & Liu, "FAMO: Fast
Adaptive Multitask Optimization", NeurIPS 2023). Defaults as the reference code:
``lr = 0.025`` (Adam on the logits), ``gamma = 1e-5`` (weight decay on the logits),
``eps = 1e-8``.

Task logits ``xi`` (0 at the start), ``z = softmax(xi)``. The model minimises
``sum_i z_i log(L_i + eps) / c`` with ``c = sum_i z_i / (L_i + eps)`` (detached), i.e.
loss weights ``w_i = (z_i / (L_i + eps)) / sum_j (z_j / (L_j + eps))`` on the raw losses:
they sum to 1, so no task gradient is needed and the cost is O(1) in the number of
tasks. ``raw`` (logged) is ``z``. After the optimiser step the same batch is forwarded
again without gradients (the trainer does it: :attr:`needs_post_step_losses`; the model
stays in training mode, so dropout draws fresh masks) and the logits move with
Algorithm 1's rule, ``delta_i = log(L_i^before + eps) - log(L_i^after + eps)``,
``grad_xi = J_softmax(xi)^T delta + gamma xi`` (``J^T delta = z * (delta - z . delta)``),
applied by Adam (betas 0.9 / 0.999, eps 1e-8, as ``torch.optim.Adam(lr, weight_decay=
gamma)`` in the reference code; Algorithm 1 writes a plain gradient step). A post-step loss
that is not finite skips that logit update.

The logits and Adam's moments are buffers (not parameters: the trainer's optimiser
must not touch them), so a resume continues exactly. Each head gets ``w_i`` times
its gradient.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from grace_rul.balancers.base import Balancer, Combination, TaskGrads
from grace_rul.balancers.registry import register

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


def famo_weights(logits: Tensor, losses: Tensor, eps: float = 1e-8) -> Tensor:
    """Loss weights ``(z_i / (L_i + eps)) / sum_j z_j / (L_j + eps)``, ``z = softmax(logits)``."""
    z = torch.softmax(logits, dim=0)
    q = z / (losses + eps)
    return q / q.sum()


def famo_logit_gradient(logits: Tensor, delta: Tensor) -> Tensor:
    """``J_softmax(logits)^T delta``: the gradient of ``softmax(logits) . delta``."""
    z = torch.softmax(logits, dim=0)
    return z * (delta - (z * delta).sum())


@register("famo")
class FAMO(Balancer):
    """Softmax task logits updated from each task's log-loss decrease after the step."""

    needs_post_step_losses = True

    def __init__(
        self, num_tasks: int = 2, lr: float = 0.025, gamma: float = 1e-5, eps: float = 1e-8
    ) -> None:
        super().__init__(num_tasks)
        lr, gamma, eps = float(lr), float(gamma), float(eps)
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"famo lr must be > 0 (got {lr})")
        if not (math.isfinite(gamma) and gamma >= 0):
            raise ValueError(f"famo gamma must be >= 0 (got {gamma})")
        if not (math.isfinite(eps) and eps > 0):
            raise ValueError(f"famo eps must be > 0 (got {eps})")
        self.lr, self.gamma, self.eps = lr, gamma, eps
        self.register_buffer("logits", torch.zeros(num_tasks))
        self.register_buffer("losses_before", torch.full((num_tasks,), math.nan))
        self.register_buffer("adam_m", torch.zeros(num_tasks))
        self.register_buffer("adam_v", torch.zeros(num_tasks))
        self.register_buffer("adam_step", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def combine(self, losses: Tensor, grads: TaskGrads | None) -> Combination:
        losses = losses.detach().to(self.logits.dtype)
        self.losses_before.copy_(losses)
        w = famo_weights(self.logits, losses, self.eps)
        if not bool(torch.isfinite(w).all()):
            w = self.uniform(self.logits)
        z = torch.softmax(self.logits, dim=0)
        return Combination(weights=w.to(losses.dtype), raw=z)

    @torch.no_grad()
    def after_step(self, losses_after: Tensor | None = None) -> None:
        if losses_after is None:
            raise RuntimeError("famo needs the post-step losses of the same batch (losses_after)")
        after = losses_after.detach().to(self.logits.dtype)
        before = self.losses_before
        delta = torch.log(before + self.eps) - torch.log(after + self.eps)
        if not bool(torch.isfinite(delta).all()):
            return
        grad = famo_logit_gradient(self.logits, delta) + self.gamma * self.logits
        b1, b2 = ADAM_BETAS
        self.adam_step += 1
        step = int(self.adam_step)
        self.adam_m.mul_(b1).add_(grad, alpha=1.0 - b1)
        self.adam_v.mul_(b2).addcmul_(grad, grad, value=1.0 - b2)
        denom = (self.adam_v / (1.0 - b2**step)).sqrt() + ADAM_EPS
        self.logits.sub_(self.lr / (1.0 - b1**step) * self.adam_m / denom)
