"""PCGrad, projecting conflicting gradients (Yu, Kumar, Gupta, Levine, Hausman & Finn,
"Gradient Surgery for Multi-Task Learning", NeurIPS 2020).

For each task i (its copy ``g_i^PC`` starting at ``g_i``) and every other task j in a
random order: if ``g_i^PC . g_j < 0``, remove the conflicting component,
``g_i^PC -= (g_i^PC . g_j) / ||g_j||^2 * g_j``. Projections use the original ``g_j``.
The shared gradient is the MEAN of the projected gradients (the paper and LibMTL
sum them); the mean keeps GRACE's convention that weights sum to 1, so with no
conflict PCGrad gives exactly equal weighting's gradient. Each head gets 1/K of its
task's gradient.

Everything is done in the K-dimensional span of the task gradients: each projected
gradient is tracked as coefficients on the original ``g_j``, so the work is one Gram
matrix ``G G^T`` plus O(K^3) scalar work, and ``raw`` in the result holds the
effective per-task coefficients of the shared gradient (for the logs).

The task order comes from a generator seeded with the ``seed`` option (default 0);
its state is a buffer, so a resumed run draws the same orders.
"""

from __future__ import annotations

import torch
from torch import Tensor

from grace_rul.balancers.base import Balancer, Combination, TaskGrads
from grace_rul.balancers.registry import register


def pcgrad_coefficients(gram: Tensor, orders: list[list[int]]) -> Tensor:
    """Coefficients C (K, K): projected gradient i = sum_j C[i, j] g_j, from ``gram = G G^T``.

    ``orders[i]`` is the order in which task i visits the other tasks.
    """
    k = gram.shape[0]
    coef = torch.eye(k, dtype=gram.dtype, device=gram.device)
    for i in range(k):
        for j in orders[i]:
            dot = coef[i] @ gram[:, j]  # g_i^PC . g_j
            if dot < 0 and gram[j, j] > 0:
                coef[i, j] -= dot / gram[j, j]
    return coef


@register("pcgrad")
class PCGrad(Balancer):
    """Gradient surgery: drop each task gradient's component along conflicting task gradients."""

    needs_task_grads = True

    def __init__(self, num_tasks: int = 2, seed: int = 0) -> None:
        super().__init__(num_tasks)
        self.seed = int(seed)
        self._generator = torch.Generator().manual_seed(self.seed)
        self.register_buffer("rng_state", self._generator.get_state())

    def _orders(self) -> list[list[int]]:
        self._generator.set_state(self.rng_state.cpu())
        orders = []
        for i in range(self.num_tasks):
            perm = torch.randperm(self.num_tasks, generator=self._generator).tolist()
            orders.append([j for j in perm if j != i])
        self.rng_state.copy_(self._generator.get_state())
        return orders

    @torch.no_grad()
    def combine(self, losses: Tensor, grads: TaskGrads | None) -> Combination:
        assert grads is not None, "PCGrad needs per-task gradients"
        m = grads.matrix
        gram = (m @ m.T).double().cpu()  # K x K: the scalar work runs on the CPU in float64
        coef = pcgrad_coefficients(gram, self._orders())
        mix = coef.mean(dim=0).to(m)  # shared gradient = mean_i g_i^PC = mix @ G
        return Combination(weights=self.uniform(m), shared_grad=mix @ m, raw=mix)
