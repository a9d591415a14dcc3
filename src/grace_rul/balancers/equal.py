"""Equal weighting: every task weighs 1/K. The baseline every method is compared to."""

from __future__ import annotations

from torch import Tensor

from grace_rul.balancers.base import Balancer, Combination, TaskGrads
from grace_rul.balancers.registry import register


@register("equal")
class Equal(Balancer):
    """Uniform weights 1/K on every step; no state, no task gradients needed."""

    def combine(self, losses: Tensor, grads: TaskGrads | None) -> Combination:
        w = self.uniform(losses)
        return Combination(weights=w, raw=w)
