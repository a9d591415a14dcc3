"""DB-MTL, dual balancing (Lin, Ye, Xu, Shi & Zhang, "Dual-Balancing for Multi-Task
Learning", arXiv:2308.12029, 2023). Defaults: beta = 0.9, beta_sigma = 0.5, eps = 1e-8.

Two balancing steps per training step t (t = 1, 2, ...):

* **loss scale**: each task's gradient is taken of ``log(L_i + eps)``, i.e.
  ``g_i = grad L_i / (L_i + eps)`` (computed from the engine's gradient of ``L_i``);
* an EMA of each task's gradient **vector**,
  ``hat g_i <- beta_t * hat g_i + (1 - beta_t) * g_i`` with ``beta_t = beta / t^beta_sigma``
  and ``hat g_i`` starting at 0 (LibMTL's update ``buf = g + beta_t (buf - g)``; the
  paper's Algorithm 1 decays ``beta_t`` in ``t``; LibMTL's command-line default is
  ``beta_sigma = 0``, a constant ``beta``: pass ``beta_sigma=0`` for that);
* **gradient magnitude**: every EMA gradient is rescaled to the largest EMA norm,
  ``alpha_i = max_j ||hat g_j|| / ||hat g_i||``, and the shared gradient is
  ``(1/K) sum_i alpha_i hat g_i``. The paper (and LibMTL) sum without the ``1/K``; GRACE
  divides by K so the shared gradient has the scale of a mean (learning rates stay
  comparable; with the trainer's joint-norm clip and AdamW the scale matters little).

Each head receives ``1/K`` of its own log-loss gradient, ``grad L_i / (K (L_i + eps))``
(LibMTL's heads get the unweighted log-loss gradients; ``1/K`` is the mean convention).
``weights`` (logged) are ``alpha / sum(alpha)``; ``raw`` is ``alpha``.

The EMA buffer (K x P) is sized on the first step and saved in ``state_dict``. With
``grad_source="representation"`` the rows are gradients w.r.t. one batch's
representation, so an EMA across batches mixes different windows: an approximation
with no counterpart in the paper (LibMTL refuses it); a batch of another size restarts
the EMA.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from grace_rul.balancers.base import Balancer, Combination, TaskGrads
from grace_rul.balancers.registry import register


def dbmtl_beta(beta: float, sigma: float, step: int) -> float:
    """The EMA coefficient of step ``step`` (1-based): ``beta / step^sigma``."""
    return beta / step**sigma


@register("dbmtl")
class DBMTL(Balancer):
    """Log-loss gradients, an EMA of each task's gradient, all rescaled to the largest norm."""

    needs_task_grads = True

    def __init__(
        self, num_tasks: int = 2, beta: float = 0.9, beta_sigma: float = 0.5, eps: float = 1e-8
    ) -> None:
        super().__init__(num_tasks)
        beta, beta_sigma, eps = float(beta), float(beta_sigma), float(eps)
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"dbmtl beta must be in [0, 1) (got {beta})")
        if not (math.isfinite(beta_sigma) and beta_sigma >= 0):
            raise ValueError(f"dbmtl beta_sigma must be >= 0 (got {beta_sigma})")
        if not (math.isfinite(eps) and eps > 0):
            raise ValueError(f"dbmtl eps must be > 0 (got {eps})")
        self.beta, self.beta_sigma, self.eps = beta, beta_sigma, eps
        self.register_buffer("ema_grads", torch.zeros(0))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def _load_from_state_dict(self, state_dict, prefix, *args: Any, **kwargs: Any) -> None:
        # The EMA buffer's size is known only after the first step: adopt the saved one's.
        saved = state_dict.get(prefix + "ema_grads")
        if saved is not None and saved.shape != self.ema_grads.shape:
            self.ema_grads = torch.zeros_like(saved, device=self.ema_grads.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def combine(self, losses: Tensor, grads: TaskGrads | None) -> Combination:
        assert grads is not None, "DB-MTL needs per-task gradients"
        m = grads.matrix
        scale = 1.0 / (losses.to(m.dtype) + self.eps)  # d log(L + eps) = dL / (L + eps)
        log_grads = m * scale[:, None]
        if self.ema_grads.shape != m.shape:
            self.ema_grads = torch.zeros_like(m)
            self.step.zero_()
        self.step += 1
        beta_t = dbmtl_beta(self.beta, self.beta_sigma, int(self.step))
        self.ema_grads.mul_(beta_t).add_(log_grads.to(self.ema_grads.dtype), alpha=1.0 - beta_t)
        ema = self.ema_grads.to(m.dtype)
        norms = ema.norm(dim=1)
        k = self.num_tasks
        if not bool(torch.isfinite(norms).all()) or not bool((norms > 0).all()):
            alpha = torch.ones(k, dtype=m.dtype, device=m.device)
        else:
            alpha = norms.max() / norms
        shared = (alpha @ ema) / k
        return Combination(
            weights=alpha / alpha.sum(), shared_grad=shared, head_weights=scale / k, raw=alpha
        )
