"""Dynamic Weight Average (Liu, Johns & Davison, "End-to-End Multi-Task Learning with
Attention", CVPR 2019). Default temperature T = 2.

Weights for epoch t come from how fast each task's epoch-mean loss fell:
``r_i = L_i(t-1) / L_i(t-2)``, ``w_i = softmax(r / T)_i``; the first two epochs use
uniform weights. The paper (and LibMTL) scale the softmax to sum K; GRACE sums to 1
for every balancer so learning rates are comparable across methods. The last two
epoch losses and the number of recorded epochs are buffers, so a resume continues
with the same weights. An epoch whose mean losses are not finite is not recorded.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from grace_rul.balancers.base import Balancer, Combination, TaskGrads
from grace_rul.balancers.registry import register


@register("dwa")
class DWA(Balancer):
    """Softmax of epoch-over-epoch loss ratios at temperature T; uniform for two epochs."""

    def __init__(self, num_tasks: int = 2, temperature: float = 2.0) -> None:
        super().__init__(num_tasks)
        temperature = float(temperature)
        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"dwa temperature must be a positive number (got {temperature})")
        self.temperature = temperature
        # history[0] = L(t-2), history[1] = L(t-1)
        self.register_buffer("history", torch.zeros(2, num_tasks))
        self.register_buffer("epochs_seen", torch.zeros((), dtype=torch.long))

    def current_weights(self) -> Tensor:
        """The weights for the coming epoch from the recorded loss history."""
        if int(self.epochs_seen) < 2:
            return torch.full((self.num_tasks,), 1.0 / self.num_tasks, device=self.history.device)
        ratio = self.history[1] / self.history[0].clamp_min(1e-12)
        return torch.softmax(ratio / self.temperature, dim=0)

    def combine(self, losses: Tensor, grads: TaskGrads | None) -> Combination:
        w = self.current_weights().to(losses.dtype)
        return Combination(weights=w, raw=w)

    @torch.no_grad()
    def end_epoch(self, epoch: int, epoch_losses: Tensor) -> None:
        latest = epoch_losses.detach().to(self.history)
        if latest.shape != (self.num_tasks,):
            raise ValueError(
                f"dwa expects {self.num_tasks} epoch losses (got shape {tuple(latest.shape)})"
            )
        if not torch.isfinite(latest).all():
            return
        self.history[0] = self.history[1]
        self.history[1] = latest
        self.epochs_seen += 1
