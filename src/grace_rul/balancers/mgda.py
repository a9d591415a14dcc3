"""MGDA, the multiple-gradient descent algorithm as multi-objective optimisation (Sener &
Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018).

The weights are the min-norm point of the convex hull of the task gradients,
``argmin_{w in simplex} ||sum_i w_i g_i||``. For two tasks in closed form:
``w_1 = clip(((g2 - g1) . g2) / ||g1 - g2||^2, 0, 1)``, ``w_2 = 1 - w_1`` (w = (1/2, 1/2)
when the gradients coincide); for K > 2 Frank-Wolfe as in the paper's Algorithm 2,
in its pairwise variant (mass moves from the worst support vertex to the
Frank-Wolfe vertex, exact line search), which converges linearly where plain
Frank-Wolfe crawls along a face; started from uniform weights, stopped when the
duality gap is below 1e-10 of the largest squared gradient norm (at most 1000
steps). Everything uses the Gram matrix ``G G^T`` (K x K, float64), so
``grad_source="representation"`` gives MGDA-UB (the paper's upper-bound variant with
gradients w.r.t. the shared representation). The weights sum to 1 and apply to the
shared parameters only: as in the paper (Algorithm 2), each task-specific head is
updated with its own task's unweighted gradient, so a weight of 0 never starves a
head. No gradient normalisation (the paper's "none" option).
"""

from __future__ import annotations

import torch
from torch import Tensor

from grace_rul.balancers.base import Balancer, Combination, TaskGrads
from grace_rul.balancers.registry import register


def _two_point(v11: float, v12: float, v22: float) -> float:
    """gamma minimising ||gamma x1 + (1 - gamma) x2|| given the three dot products."""
    denom = v11 - 2.0 * v12 + v22
    if denom <= 0.0:
        return 0.5
    return min(max((v22 - v12) / denom, 0.0), 1.0)


def min_norm_weights(gram: Tensor, max_iter: int = 1000, tol: float = 1e-10) -> Tensor:
    """Simplex weights of the min-norm point of the task gradients' convex hull (Gram matrix in)."""
    k = gram.shape[0]
    if k == 2:
        w1 = _two_point(float(gram[0, 0]), float(gram[0, 1]), float(gram[1, 1]))
        return torch.tensor([w1, 1.0 - w1], dtype=gram.dtype)
    scale = max(float(gram.diagonal().max()), 1e-300)
    w = torch.full((k,), 1.0 / k, dtype=gram.dtype)
    for _ in range(max_iter):
        gw = gram @ w  # half the gradient of ||G^T w||^2
        s = int(torch.argmin(gw))  # Frank-Wolfe vertex
        support = torch.nonzero(w > 0).flatten()
        v = int(support[torch.argmax(gw[support])])  # away vertex
        if float(w @ gw - gw[s]) <= tol * scale or s == v:  # duality gap
            break
        # Pairwise step: move mass from v to s, exact line search on the quadratic.
        curv = float(gram[s, s] - 2.0 * gram[s, v] + gram[v, v])
        slope = float(gw[s] - gw[v])
        wv = float(w[v])
        gamma = wv if curv <= 0 else min(-slope / curv, wv)
        w[s] += gamma
        w[v] = 0.0 if gamma >= wv else wv - gamma  # a full step drops v from the support
    return w


@register("mgda")
class MGDA(Balancer):
    """Min-norm (Pareto-stationary) combination of the task gradients."""

    needs_task_grads = True

    @torch.no_grad()
    def combine(self, losses: Tensor, grads: TaskGrads | None) -> Combination:
        assert grads is not None, "MGDA needs per-task gradients"
        m = grads.matrix
        w = min_norm_weights((m @ m.T).double().cpu()).to(m)
        return Combination(weights=w, raw=w, head_weights=torch.ones_like(w))
