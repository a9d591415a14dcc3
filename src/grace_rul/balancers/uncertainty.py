"""Uncertainty weighting (Kendall, Gal & Cipolla, "Multi-Task Learning Using Uncertainty
to Weigh Losses for Scene Geometry and Semantics", CVPR 2018).

Each task has a learnable log-variance ``s_i = log sigma_i^2`` (initialised to 0, i.e.
sigma = 1). The full objective is ``sum_i exp(-s_i) L_i + s_i``: we use this exp(-s)
form for every task (Kendall et al.'s classification form, and the form of most
implementations) rather than the regression form ``L_i / (2 sigma_i^2) + log sigma_i``.
Both have the same optimum ``s_i = log L_i``; ours gives the model twice the
gradient of the regression form. Defaults: s = 0.

The model receives the detached weights ``exp(-s_i)`` (not renormalised: their scale
is part of the method). The log-variances learn through :meth:`auxiliary_loss`,
``sum_i exp(-s_i) * L_i.detach() + s_i``, whose gradient in ``s`` equals that of the
full objective. The trainer must put ``parameters()`` in the optimiser (without
weight decay, which would pull ``s`` towards 0).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from grace_rul.balancers.base import Balancer, Combination, TaskGrads
from grace_rul.balancers.registry import register


@register("uncertainty")
class Uncertainty(Balancer):
    """Learnable homoscedastic-uncertainty weights exp(-s_i) with log-variances s_i."""

    def __init__(self, num_tasks: int = 2) -> None:
        super().__init__(num_tasks)
        self.log_var = nn.Parameter(torch.zeros(num_tasks))

    def combine(self, losses: Tensor, grads: TaskGrads | None) -> Combination:
        w = torch.exp(-self.log_var).detach().to(losses.dtype)
        return Combination(weights=w, raw=w)

    def auxiliary_loss(self, losses: Tensor, grads: TaskGrads | None) -> Tensor:
        s = self.log_var
        return (torch.exp(-s) * losses.detach().to(s.dtype) + s).sum()
