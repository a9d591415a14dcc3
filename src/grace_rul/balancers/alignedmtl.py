"""Aligned-MTL, independent component alignment (Senushkin, Patakin, Kuznetsov & Konushin,
"Independent Component Alignment for Multi-Task Learning", CVPR 2023).

The task gradients are made orthogonal and of equal norm - the condition number of the
gradient system becomes 1 - before they are combined. With the Gram matrix
``M = G G^T = V Lambda V^T`` (K x K, eigendecomposition, float64), its rank R (eigenvalues
above ``max(Lambda) * K * float_eps``, as in the reference code) and ``sigma_min`` the
smallest non-zero singular value of ``G`` (``sqrt`` of the smallest kept eigenvalue):

    B = sigma_min * V_R Lambda_R^{-1/2} V_R^T,        aligned gradients  hat G = B G,

so ``hat G hat G^T = sigma_min^2 V_R V_R^T`` (``sigma_min^2 I`` at full rank): the principal
components of the aligned system all have the smallest singular value (the paper's
scaling, which keeps the step no larger than the weakest direction). The shared gradient is
the MEAN of the aligned task gradients, ``(1/K) 1^T B G``; the paper and LibMTL sum them
(unit task weights), GRACE takes the mean so learning rates stay comparable across
balancers. Each head gets 1/K of its task's gradient; ``raw`` holds the effective
coefficients ``(1/K) 1^T B`` of the shared gradient (they can be negative). All of it
lives in Gram space, so ``grad_source="representation"`` gives the paper's Aligned-MTL-UB.
"""

from __future__ import annotations

import torch
from torch import Tensor

from grace_rul.balancers.base import Balancer, Combination, TaskGrads
from grace_rul.balancers.registry import register


def balance_transform(gram: Tensor) -> Tensor:
    """The K x K matrix ``B`` of Aligned-MTL from the Gram matrix ``G G^T`` (float64)."""
    lam, vec = torch.linalg.eigh(gram)
    k = gram.shape[0]
    top = float(lam.max()) if lam.numel() else 0.0
    if not top > 0:
        return torch.zeros_like(gram)
    keep = lam > top * k * torch.finfo(gram.dtype).eps
    lam, vec = lam[keep], vec[:, keep]
    return lam.min().sqrt() * (vec / lam.sqrt()) @ vec.T


@register("alignedmtl")
class AlignedMTL(Balancer):
    """Mean of the task gradients after aligning their principal components (condition 1)."""

    needs_task_grads = True

    @torch.no_grad()
    def combine(self, losses: Tensor, grads: TaskGrads | None) -> Combination:
        assert grads is not None, "Aligned-MTL needs per-task gradients"
        m = grads.matrix
        b = balance_transform((m @ m.T).double().cpu())
        mix = (b.sum(dim=0) / self.num_tasks).to(m)
        return Combination(weights=self.uniform(m), shared_grad=mix @ m, raw=mix)
