"""Nash-MTL, multi-task learning as a bargaining game (Navon, Shamsian, Achituve, Maron,
Kawaguchi, Chechik & Fetaya, "Multi-Task Learning as a Bargaining Game", ICML 2022).
Default ``update_weights_every = 1``.

The Nash bargaining solution is ``d = sum_i alpha_i g_i`` with ``alpha > 0`` solving
``G G^T alpha = 1 / alpha`` (elementwise), i.e. ``g_i . d = 1 / alpha_i`` for every task.
As in the reference code the Gram matrix is first divided by its Frobenius norm (so
``alpha`` is scale free). ``alpha`` is the minimiser of the strictly convex
``f(alpha) = alpha^T M alpha / 2 - sum_i log alpha_i`` (its stationarity condition is
the equation above), found by damped Newton steps in float64 - no cvxpy. For two tasks
in closed form: with norms ``n_i`` and cosine ``cos``,
``alpha_i = 1 / (n_i sqrt(1 + cos))`` - the inverse-norm direction (GABA's raw weights,
IMTL-G for K = 2), with a magnitude that grows as the gradients conflict.

Normalisation: GRACE uses ``alpha / sum(alpha)`` as the task weights (the bargaining
direction at the scale of a mean, like every balancer's weights summing to 1); the
reference code applies ``alpha`` of the normalised Gram matrix directly and clips the
gradient norm to 1. With the trainer's joint-norm clip and AdamW the scale matters
little, so for K = 2 ``nashmtl`` trains like ``imtl``. Each head gets ``w_i`` times its
gradient. When no positive solution exists (opposite or zero gradients: no direction
improves every task) the previous weights are kept (uniform at the start), as the
reference keeps its previous ``alpha`` when the solver fails.

``update_weights_every = N`` (the paper's speed-up) solves on steps 0, N, 2N, ... and
reuses the weights in between; task gradients are computed only on solving steps.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from grace_rul.balancers.base import Balancer, Combination, TaskGrads
from grace_rul.balancers.registry import register


def _nash_two(m: Tensor) -> Tensor | None:
    a, b, c = float(m[0, 0]), float(m[0, 1]), float(m[1, 1])
    if a <= 0 or c <= 0:
        return None
    n1, n2 = math.sqrt(a), math.sqrt(c)
    one_plus_cos = 1.0 + b / (n1 * n2)
    if one_plus_cos <= 1e-12:
        return None
    root = math.sqrt(one_plus_cos)
    return torch.tensor([1.0 / (n1 * root), 1.0 / (n2 * root)], dtype=m.dtype)


def _nash_newton(m: Tensor, iters: int = 100, tol: float = 1e-12) -> Tensor | None:
    k = m.shape[0]
    diag = m.diagonal()
    if not bool((diag > 0).all()):
        return None
    alpha = 1.0 / diag.sqrt() / math.sqrt(k)

    def f(x: Tensor) -> float:
        return float(0.5 * x @ m @ x - torch.log(x).sum())

    fx = f(alpha)
    for _ in range(iters):
        grad = m @ alpha - 1.0 / alpha
        if float(grad.abs().max() * alpha.abs().max()) < tol:
            return alpha
        hess = m + torch.diag(1.0 / alpha**2)
        step = torch.linalg.solve(hess, grad)
        step_size = 1.0
        while True:  # backtracking: stay positive and decrease f
            cand = alpha - step_size * step
            if bool((cand > 0).all()):
                fc = f(cand)
                if fc <= fx - 1e-4 * step_size * float(grad @ step):
                    break
            step_size *= 0.5
            if step_size < 1e-12:
                return None
        alpha, fx = cand, fc
        if float(alpha.max()) > 1e12:  # unbounded: no positive solution
            return None
    grad = m @ alpha - 1.0 / alpha
    return alpha if float(grad.abs().max() * alpha.abs().max()) < 1e-8 else None


def nash_alpha(gram: Tensor) -> Tensor | None:
    """``alpha > 0`` with ``M alpha = 1 / alpha``, ``M = gram / ||gram||_F`` (float64, CPU);
    ``None`` when no positive solution exists."""
    fro = float(torch.linalg.matrix_norm(gram))
    if not (math.isfinite(fro) and fro > 0):
        return None
    m = gram / fro
    alpha = _nash_two(m) if m.shape[0] == 2 else _nash_newton(m)
    if alpha is None or not bool(torch.isfinite(alpha).all()):
        return None
    return alpha


@register("nashmtl")
class NashMTL(Balancer):
    """Bargaining weights: G G^T alpha = 1 / alpha, normalised to sum 1."""

    def __init__(self, num_tasks: int = 2, update_weights_every: int = 1) -> None:
        super().__init__(num_tasks)
        try:
            every = int(float(update_weights_every))
            whole = float(update_weights_every) == every
        except (TypeError, ValueError):
            every, whole = 0, False
        if every < 1 or not whole:
            raise ValueError(
                "nashmtl update_weights_every must be an integer >= 1 "
                f"(got {update_weights_every!r})"
            )
        self.update_weights_every = every
        self.register_buffer("weights", torch.full((num_tasks,), 1.0 / num_tasks))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    @property
    def needs_task_grads(self) -> bool:  # type: ignore[override]
        """Task gradients only on the steps that solve for new weights."""
        return int(self.step) % self.update_weights_every == 0

    @torch.no_grad()
    def combine(self, losses: Tensor, grads: TaskGrads | None) -> Combination:
        solve = self.needs_task_grads
        self.step += 1
        if solve:
            assert grads is not None, "Nash-MTL needs per-task gradients on solving steps"
            m = grads.matrix
            alpha = nash_alpha((m @ m.T).double().cpu())
            if alpha is not None:
                self.weights.copy_((alpha / alpha.sum()).to(self.weights))
        w = self.weights.to(losses.dtype)
        return Combination(weights=w, raw=w)
