"""IMTL-G, impartial multi-task learning, gradient part (Liu, Li, Kuang, Xue, Chen, Yang,
Liao & Zhang, "Towards Impartial Multi-task Learning", ICLR 2021).

The weights ``w`` (summing to 1) make the combined gradient ``g = sum_i w_i g_i`` have
equal projections on every task's unit gradient ``u_i = g_i / ||g_i||``. Closed form
(the paper's eq. 9): with ``D`` the rows ``g_1 - g_i`` and ``U`` the rows ``u_1 - u_i``
(i = 2..K), ``w_{2:K} = g_1 U^T (D U^T)^{-1}`` and ``w_1 = 1 - sum w_{2:K}``. Computed from
the Gram matrix (float64), so it works with ``grad_source="representation"`` too.
For two tasks this reduces to ``w = (||g_2||, ||g_1||) / (||g_1|| + ||g_2||)``, the inverse-
norm rule. When ``D U^T`` is singular (parallel gradients, for which any weights
give equal projections) the inverse-norm weights are used. Only the gradient part:
the loss-scale part of IMTL (IMTL-L) is not included. Each head gets ``w_i`` times
its gradient: a choice. The paper scales task-specific parameters with IMTL-L's loss
scales, which are absent here; using the IMTL-G weights keeps every method's weights
summing to 1 so learning rates stay comparable across balancers.
"""

from __future__ import annotations

import torch
from torch import Tensor

from grace_rul.balancers.base import Balancer, Combination, TaskGrads
from grace_rul.balancers.gaba import inverse_norm_weights
from grace_rul.balancers.registry import register


def imtl_weights(gram: Tensor) -> Tensor:
    """IMTL-G weights from the Gram matrix ``G G^T`` (float64)."""
    norms = gram.diagonal().clamp_min(0.0).sqrt()
    fallback = inverse_norm_weights(norms)
    if not bool((norms > 0).all()):
        return fallback
    # dots[a, b] = g_a . u_b
    dots = gram / norms[None, :]
    # D U^T [i, j] = (g_1 - g_i) . (u_1 - u_j) for i, j = 2..K
    diff = dots[0:1, :] - dots  # row a: (g_1 - g_a) . u_b
    du = diff[1:, 0:1] - diff[1:, 1:]
    rhs = dots[0, 0] - dots[0, 1:]  # g_1 . (u_1 - u_j)
    # D U^T scales like ||g||^(K-1); near-singular means (nearly) parallel gradients.
    scale = float(norms.max())
    if abs(float(torch.linalg.det(du))) <= 1e-6 * scale ** du.shape[0]:
        return fallback
    tail = torch.linalg.solve(du.T, rhs)
    w = torch.cat([1.0 - tail.sum().reshape(1), tail])
    return w if bool(torch.isfinite(w).all()) else fallback


@register("imtl")
class IMTL(Balancer):
    """IMTL-G: weights giving the combined gradient equal projections on all task directions."""

    needs_task_grads = True

    @torch.no_grad()
    def combine(self, losses: Tensor, grads: TaskGrads | None) -> Combination:
        assert grads is not None, "IMTL needs per-task gradients"
        m = grads.matrix
        w = imtl_weights((m @ m.T).double().cpu()).to(m)
        return Combination(weights=w, raw=w)
