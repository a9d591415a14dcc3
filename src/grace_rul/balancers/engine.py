"""The gradient engine: one balanced backward pass per mini-batch.

Loss-weighting balancers that need no gradients get one ``backward()`` of
``sum_i w_i L_i``. When a balancer needs per-task gradients (or the trainer
samples gradient statistics on this step), each task's gradient is computed
exactly once with ``torch.autograd.grad``; norms, cosines, projections and the
combined gradient are derived from those and written straight into ``.grad``
- never a further ``backward()`` of the weighted total. Heads receive their
own task's weighted gradient.

``grad_source="representation"`` takes each task's gradient w.r.t. the shared
representation instead of the shared parameters (one backbone backward in all,
an approximation of the parameter-space gradients, as in MGDA-UB).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from grace_rul.balancers.base import Balancer, Combination, TaskGrads
from grace_rul.config import GRAD_SOURCES


@dataclass
class StepGrads:
    """What one balanced backward produced, for the trainer's statistics and guards.

    ``finite`` is a 0-d bool tensor, False when a task gradient held NaN/Inf (``True`` when
    no task gradients were computed). It is not checked here: the caller does, and on False
    skips the step, restores the balancer's state and clears ``.grad``.
    """

    finite: bool | Tensor
    combination: Combination | None = None
    task_norms: Tensor | None = None  # (K,) L2 norms of each task's shared gradient
    cosine: Tensor | None = None  # 0-d: mean pairwise cosine between task gradients


def _pairwise_cosine(matrix: Tensor, norms: Tensor) -> Tensor:
    """Mean off-diagonal cosine from the Gram matrix (no normalised copy of ``matrix``)."""
    gram = matrix @ matrix.T
    cos = gram / (norms[:, None] * norms[None, :]).clamp_min(1e-24)
    k = matrix.shape[0]
    return (cos.sum() - cos.diagonal().sum()) / (k * (k - 1))


def balance_backward(
    balancer: Balancer,
    losses: Tensor,
    shared: list[nn.Parameter],
    heads: list[list[nn.Parameter]],
    *,
    representation: Tensor | None = None,
    grad_source: str = "params",
    last_layer_params: int = 0,
    want_task_grads: bool = False,
    scale: float = 1.0,
) -> StepGrads:
    """Compute gradients of the K task ``losses`` as ``balancer`` decides and fill ``.grad``.

    ``shared`` are the backbone parameters, ``heads[i]`` the parameters only task i
    uses; ``last_layer_params`` counts the trailing entries of ``shared`` that form
    the last shared layer. ``scale`` is the mixed-precision loss scale (1.0 without a
    gradient scaler): gradients written to ``.grad`` are scaled by it, the balancer
    sees unscaled ones. ``.grad`` must be cleared by the caller before the call.

    Cost: one backward for loss-weighting balancers; K backward passes through the
    backbone when per-task parameter gradients are needed (``grad_source="params"``);
    K passes through the heads plus one through the backbone for
    ``grad_source="representation"``. The balancer's weights are always detached: a
    learnable balancer trains only through its ``auxiliary_loss``.

    There is no host synchronisation here: a non-finite task gradient does not stop the
    call, so the balancer and ``.grad`` may have seen it. The caller checks ``finite`` in its
    own step check (the trainer's one sync per step) and undoes the step when it is False.
    """
    if grad_source not in GRAD_SOURCES:
        raise ValueError(f"grad_source must be 'params' or 'representation' (got {grad_source!r})")
    k = losses.numel()
    detached = losses.detach()
    if not (balancer.needs_task_grads or want_task_grads):
        comb = balancer.combine(detached, None)
        total = (comb.weights.detach().to(losses.dtype) * losses).sum()
        aux = balancer.auxiliary_loss(detached, None)
        if aux is not None:
            total = total + aux
        (total * scale).backward()
        return StepGrads(finite=True, combination=comb)

    if grad_source == "representation":
        if representation is None:
            raise ValueError("grad_source='representation' needs the shared representation")
        targets: list[Tensor] = [representation]
    else:
        targets = list(shared)
    n = len(targets)
    sizes = [target.numel() for target in targets]
    # Each task's gradient is written once, straight into its row of the (K, P) matrix.
    matrix = torch.empty(k, sum(sizes), dtype=losses.dtype, device=losses.device)
    used = [False] * n
    head_grads: list[tuple[Tensor | None, ...]] = []
    for i in range(k):
        retain = grad_source == "representation" or i < k - 1
        got = torch.autograd.grad(
            losses[i] * scale, targets + list(heads[i]), retain_graph=retain, allow_unused=True
        )
        for j, (row, g) in enumerate(zip(matrix[i].split(sizes), got[:n])):
            if g is None:
                row.zero_()  # a parameter this task does not reach
            else:
                row.copy_(g.reshape(-1))
                used[j] = True
        head_grads.append(got[n:])

    finite = torch.isfinite(matrix).all()
    true = matrix / scale if scale != 1.0 else matrix
    if grad_source == "representation" or not last_layer_params:
        last = slice(0, true.shape[1])
    else:
        last = slice(sum(sizes[: n - last_layer_params]), true.shape[1])
    grads = TaskGrads(matrix=true, last_layer=last, source=grad_source)
    comb = balancer.combine(detached, grads)
    weights = comb.weights.detach().to(true.dtype)
    combined = comb.shared_grad.detach() if comb.shared_grad is not None else weights @ true
    if scale != 1.0:
        combined = combined * scale

    if grad_source == "representation":
        representation.backward(combined.view_as(representation).to(representation.dtype))
    else:
        # The shared .grad tensors are views into the one combined vector (no per-parameter copy);
        # a parameter no task reached keeps grad None, as after a plain backward().
        for p, chunk, hit in zip(shared, combined.split(sizes), used):
            p.grad = chunk.view_as(p) if hit else None
    head_weights = weights if comb.head_weights is None else comb.head_weights.to(true.dtype)
    for i, (params, grads_i) in enumerate(zip(heads, head_grads)):
        for p, g in zip(params, grads_i):
            p.grad = None if g is None else g * head_weights[i]
    aux = balancer.auxiliary_loss(detached, grads)
    if aux is not None:
        (aux * scale).backward()
    norms = true.norm(dim=1)
    return StepGrads(
        finite=finite, combination=comb, task_norms=norms, cosine=_pairwise_cosine(true, norms)
    )
