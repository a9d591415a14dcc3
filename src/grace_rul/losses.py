"""The two inner task losses (docs/design.md §3). The outer combination belongs to the balancers."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

TASKS = ("rul", "health")


def failure_weights(target: Tensor, max_rul: float) -> Tensor:
    """w(y) = 1 + clip(1 - y / max_rul, 0, 1): weight 2 at failure, 1 at and beyond max_rul."""
    return 1.0 + (1.0 - target / max_rul).clamp(0.0, 1.0)


def weighted_mse(pred: Tensor, target: Tensor, max_rul: float) -> Tensor:
    """Failure-weighted MSE: mean(w(y) * (y_hat - y)^2), in cycles squared."""
    return (failure_weights(target, max_rul) * (pred - target) ** 2).mean()


def task_losses(
    rul_pred: Tensor, health_logits: Tensor, rul: Tensor, health: Tensor, max_rul: float
) -> Tensor:
    """Stacked (RUL, health) inner losses of one batch, in float32 even under autocast."""
    return torch.stack(
        [
            weighted_mse(rul_pred.float(), rul, max_rul),
            F.cross_entropy(health_logits.float(), health),
        ]
    )
