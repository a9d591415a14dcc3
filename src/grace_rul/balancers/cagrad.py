"""CAGrad, conflict-averse gradient descent (Liu, Liu, Jin, Stone & Liu, "Conflict-Averse
Gradient Descent for Multi-task Learning", NeurIPS 2021). Default c = 0.4.

With ``g0`` the mean task gradient and ``phi = c^2 ||g0||^2``, find ``w`` on the
simplex minimising ``w . (G g0) + sqrt(phi) ||G^T w||``, then move along
``d = g0 + sqrt(phi) / ||g_w|| * g_w`` (``g_w = G^T w``), rescaled by ``1 / (1 + c^2)``
(the reference code's and LibMTL's ``rescale=1``). c = 0 gives the mean gradient.

All of it lives in Gram space (``G G^T``, K x K, float64). For K = 2 the 1-D problem
is solved exactly: the objective is convex in ``w_1``, so its minimum over [0, 1] is at
an endpoint or at a root of the (squared) stationarity equation, and we take the
best of those candidates. For K > 2 a projected-gradient solver on the simplex
with backtracking. Each head gets 1/K of its task's gradient (the mean
convention); ``raw`` holds the effective coefficients of the shared gradient.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from grace_rul.balancers.base import Balancer, Combination, TaskGrads
from grace_rul.balancers.registry import register


def project_to_simplex(v: Tensor) -> Tensor:
    """Euclidean projection of a vector onto the probability simplex (sort-based)."""
    u, _ = torch.sort(v, descending=True)
    css = torch.cumsum(u, 0) - 1.0
    idx = torch.arange(1, v.numel() + 1, dtype=v.dtype, device=v.device)
    rho = int(torch.nonzero(u - css / idx > 0).max())
    theta = css[rho] / (rho + 1)
    return (v - theta).clamp_min(0.0)


def cagrad_objective(w: Tensor, gram: Tensor, sqrt_phi: float) -> Tensor:
    """``w . (G g0) + sqrt(phi) ||G^T w||`` from the Gram matrix ``G G^T``."""
    b = gram.mean(dim=1)
    return w @ b + sqrt_phi * (w @ gram @ w).clamp_min(0.0).sqrt()


def _solve_two(gram: Tensor, sqrt_phi: float) -> Tensor:
    g11, g12, g22 = float(gram[0, 0]), float(gram[0, 1]), float(gram[1, 1])
    # w = (x, 1 - x): ||G^T w||^2 = a x^2 + 2 bb x + cc, linear part delta * x + const.
    a, bb, cc = g11 - 2.0 * g12 + g22, g12 - g22, g22
    delta = 0.5 * (g11 + g12) - 0.5 * (g12 + g22)
    s2 = sqrt_phi**2
    # Stationarity sqrt_phi (a x + bb) / sqrt(q) = -delta, squared: A x^2 + B x + C = 0.
    qa, qb, qc = a * (s2 * a - delta**2), 2.0 * bb * (s2 * a - delta**2), s2 * bb**2 - delta**2 * cc
    candidates = [0.0, 1.0]
    scale = max(abs(qa), abs(qb), abs(qc), 1e-300)
    if abs(qa) > 1e-12 * scale:
        disc = qb * qb - 4.0 * qa * qc
        if disc >= 0:
            root = math.sqrt(disc)
            candidates += [(-qb + root) / (2.0 * qa), (-qb - root) / (2.0 * qa)]
    elif abs(qb) > 1e-12 * scale:
        candidates.append(-qc / qb)
    best, best_val = 0.0, math.inf
    for x in candidates:
        if not (math.isfinite(x) and 0.0 <= x <= 1.0):
            continue
        val = delta * x + sqrt_phi * math.sqrt(max(a * x * x + 2.0 * bb * x + cc, 0.0))
        if val < best_val:
            best, best_val = x, val
    return torch.tensor([best, 1.0 - best], dtype=gram.dtype)


def _solve_simplex(gram: Tensor, sqrt_phi: float, iters: int = 500, tol: float = 1e-12) -> Tensor:
    k = gram.shape[0]
    scale = float(gram.diagonal().max().clamp_min(1e-300))
    g = gram / scale  # the objective is homogeneous of degree 1 in the Gram matrix
    sp = sqrt_phi / math.sqrt(scale)
    b = g.mean(dim=1)

    def f(w: Tensor) -> float:
        return float(w @ b + sp * (w @ g @ w).clamp_min(0.0).sqrt())

    w = torch.full((k,), 1.0 / k, dtype=g.dtype)
    fw, step = f(w), 1.0
    for _ in range(iters):
        norm = (w @ g @ w).clamp_min(1e-30).sqrt()
        grad = b + sp * (g @ w) / norm
        while True:
            cand = project_to_simplex(w - step * grad)
            fc = f(cand)
            if fc <= fw - 1e-4 * float(grad @ (w - cand)) or step < 1e-12:
                break
            step *= 0.5
        done = fw - fc <= tol * max(1.0, abs(fw))
        if fc <= fw:
            w, fw = cand, fc
        if done:
            break
        step = min(step * 2.0, 1e6)
    return w


def cagrad_weights(gram: Tensor, c: float) -> Tensor:
    """The simplex weights ``w`` minimising the CAGrad dual objective (``gram`` float64, CPU)."""
    sqrt_phi = c * math.sqrt(max(float(gram.mean()), 0.0))  # ||g0||^2 = mean of G G^T
    if gram.shape[0] == 2:
        return _solve_two(gram, sqrt_phi)
    return _solve_simplex(gram, sqrt_phi)


@register("cagrad")
class CAGrad(Balancer):
    """Conflict-averse direction: the mean gradient bent towards the worst-off task."""

    needs_task_grads = True

    def __init__(self, num_tasks: int = 2, c: float = 0.4) -> None:
        super().__init__(num_tasks)
        c = float(c)
        if not (math.isfinite(c) and c >= 0):
            raise ValueError(f"cagrad c must be a non-negative number (got {c})")
        self.c = c

    @torch.no_grad()
    def combine(self, losses: Tensor, grads: TaskGrads | None) -> Combination:
        assert grads is not None, "CAGrad needs per-task gradients"
        m = grads.matrix
        k = m.shape[0]
        gram = (m @ m.T).double().cpu()
        mix = torch.full((k,), 1.0 / k, dtype=gram.dtype)
        if self.c > 0:
            w = cagrad_weights(gram, self.c)
            sqrt_phi = self.c * math.sqrt(max(float(gram.mean()), 0.0))
            gw_norm = math.sqrt(max(float(w @ gram @ w), 0.0))
            if gw_norm > 1e-12 * math.sqrt(max(float(gram.diagonal().max()), 1e-300)):
                mix = mix + (sqrt_phi / gw_norm) * w
            mix = mix / (1.0 + self.c**2)
        mix = mix.to(m)
        return Combination(weights=self.uniform(m), shared_grad=mix @ m, raw=mix)
