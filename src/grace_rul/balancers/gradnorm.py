"""GradNorm (Chen, Badrinarayanan, Lee & Rabinovich, "GradNorm: Gradient Normalization for
Adaptive Loss Balancing in Deep Multitask Networks", ICML 2018). Default alpha = 1.5.

Learnable task weights ``w`` (initialised to 1, kept summing to K). On every step,
with ``W`` the last shared layer (``TaskGrads.last_layer``; the whole representation
for ``grad_source="representation"``):

* ``G_i(w) = w_i * ||grad_W L_i||`` (the norm is detached, so the gradient reaches
  ``w`` only; the paper's second-order term through the network is dropped, as in
  the reference implementations);
* ``r_i = (L_i / L_i(0)) / mean_j (L_j / L_j(0))`` with the initial losses ``L_i(0)``
  stored at the first step (a buffer, so a resume keeps them);
* target ``mean_j G_j * r_i^alpha``, detached;
* ``auxiliary_loss = sum_i |G_i(w) - target_i|``.

After each optimiser step :meth:`after_step` renormalises ``w`` to sum K (weights are
kept at least 1e-6 first, so they stay positive). The model receives ``w / sum(w)``
(detached), i.e. weights on the simplex like every GRACE balancer. The trainer must
put ``parameters()`` in the optimiser (without weight decay).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from grace_rul.balancers.base import Balancer, Combination, TaskGrads
from grace_rul.balancers.registry import register


@register("gradnorm")
class GradNorm(Balancer):
    """Learnable weights that make each task's last-layer gradient norm track its training rate."""

    needs_task_grads = True

    def __init__(self, num_tasks: int = 2, alpha: float = 1.5) -> None:
        super().__init__(num_tasks)
        alpha = float(alpha)
        if not alpha >= 0.0:
            raise ValueError(f"gradnorm alpha must be >= 0 (got {alpha})")
        self.alpha = alpha
        self.task_weights = nn.Parameter(torch.ones(num_tasks))
        self.register_buffer("initial_losses", torch.zeros(num_tasks))
        self.register_buffer("has_initial", torch.zeros((), dtype=torch.bool))

    def combine(self, losses: Tensor, grads: TaskGrads | None) -> Combination:
        w = self.task_weights.detach()
        w = (w / w.sum()).to(losses.dtype)
        return Combination(weights=w, raw=w)

    def targets(self, losses: Tensor, norms: Tensor) -> Tensor:
        """Detached target norms ``mean(G) * r_i^alpha`` given last-layer gradient ``norms``."""
        with torch.no_grad():
            g = self.task_weights.detach() * norms
            ratio = losses / self.initial_losses.clamp_min(1e-12)
            r = ratio / ratio.mean().clamp_min(1e-12)
            return g.mean() * r.pow(self.alpha)

    def auxiliary_loss(self, losses: Tensor, grads: TaskGrads | None) -> Tensor:
        assert grads is not None, "GradNorm needs per-task gradients"
        losses = losses.detach().to(self.initial_losses.dtype)
        if not bool(self.has_initial):
            self.initial_losses.copy_(losses)
            self.has_initial.fill_(True)
        norms = grads.matrix[:, grads.last_layer].norm(dim=1).detach().to(self.task_weights.dtype)
        target = self.targets(losses, norms)
        return (self.task_weights * norms - target).abs().sum()

    @torch.no_grad()
    def after_step(self, losses_after: Tensor | None = None) -> None:
        w = self.task_weights
        w.clamp_(min=1e-6)
        w.mul_(self.num_tasks / w.sum())
