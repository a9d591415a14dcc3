"""Fixed weighting: user-chosen constant task weights (the classic hand-tuned baseline).

The K non-negative weights given as ``weights`` are normalised to sum 1, like every
balancer's weights in GRACE, so learning rates stay comparable across methods:
``weights: [1, 3]`` means lambda = (0.25, 0.75) on every step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from grace_rul.balancers.base import Balancer, Combination, TaskGrads
from grace_rul.balancers.registry import register


@register("fixed")
class Fixed(Balancer):
    """Constant user weights (option ``weights``: K values >= 0, not all 0), summed to 1."""

    def __init__(self, num_tasks: int = 2, weights: Sequence[float] | None = None) -> None:
        super().__init__(num_tasks)
        if weights is None:
            raise ValueError(
                f"fixed needs the option 'weights': a list of {num_tasks} non-negative numbers"
            )
        if isinstance(weights, (str, bytes)) or not isinstance(weights, Sequence):
            raise ValueError(
                f"fixed 'weights' must be a list of {num_tasks} numbers (got {weights!r})"
            )
        try:
            values = [float(w) for w in weights]
        except (TypeError, ValueError):
            raise ValueError(f"fixed 'weights' must be numbers (got {list(weights)!r})") from None
        if len(values) != num_tasks:
            raise ValueError(
                f"fixed 'weights' needs {num_tasks} values, one per task (got {len(values)})"
            )
        if any(not math.isfinite(v) or v < 0 for v in values):
            raise ValueError(f"fixed 'weights' must be finite and non-negative (got {values})")
        total = sum(values)
        if total <= 0:
            raise ValueError("fixed 'weights' must not all be zero")
        # Configuration, not training state: kept out of state_dict (non-persistent).
        self.register_buffer("weights", torch.tensor([v / total for v in values]), persistent=False)

    def combine(self, losses: Tensor, grads: TaskGrads | None) -> Combination:
        w = self.weights.to(losses.dtype)
        return Combination(weights=w, raw=w)
