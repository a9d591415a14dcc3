"""The balancer interface every multi-task weighting method implements.

A balancer turns the K task losses of one mini-batch (and, if it asks for them,
each task's gradient on the shared part of the network) into a
:class:`Combination`: per-task weights, and optionally a combined shared
gradient for methods that change gradient directions (PCGrad, CAGrad, ...).
The gradient engine in :mod:`grace_rul.balancers.engine` computes each task's
gradient at most once and writes the result into ``.grad``; balancers never call
``backward`` on the model themselves.

Adding a method = one new file with a ``@register("name")`` subclass, plus its
import in ``balancers/__init__.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn


@dataclass
class TaskGrads:
    """Each task's gradient on the shared part, flattened: ``matrix[i]`` is task i's.

    ``source`` is ``"params"`` (gradients w.r.t. the shared backbone parameters) or
    ``"representation"`` (w.r.t. the shared representation, an approximation).
    ``last_layer`` selects the columns of the last shared layer (GradNorm); for the
    representation source it covers every column.
    """

    matrix: Tensor  # (K, P)
    last_layer: slice
    source: str = "params"

    def norms(self) -> Tensor:
        return self.matrix.norm(dim=1)


@dataclass
class Combination:
    """What a balancer decided for one step.

    ``weights`` (K,) are the effective task weights: the shared part receives
    ``weights @ matrix`` unless ``shared_grad`` is given, and task i's head receives
    ``head_weights[i] * grad L_i`` (``head_weights`` defaults to ``weights``; MGDA
    gives each head its own unweighted gradient). ``raw`` and ``smoothed`` are for
    logging only.
    """

    weights: Tensor
    shared_grad: Tensor | None = None
    head_weights: Tensor | None = None
    raw: Tensor | None = None
    smoothed: Tensor | None = None


class Balancer(nn.Module):
    """Base class of all multi-task loss balancers (one registry, one interface).

    Class attributes:
      * ``needs_task_grads``: the method needs per-task gradients every step.
      * ``needs_post_step_losses``: after the optimiser step the trainer forwards the same
        batch again without gradients and passes its task losses (the trainer's loss
        function) to :meth:`after_step` as ``losses_after`` (FAMO).
      * ``train_defaults``: ``train.*`` values the method brings, applied by
        :func:`grace_rul.resolve.resolve_config` where the configuration leaves them at
        their defaults (GRACE: its weight-decay schedule).

    State that must survive a resume lives in buffers or parameters, so it travels
    in ``state_dict``. Learnable parameters are added to the optimiser by the trainer.
    """

    name: ClassVar[str] = ""
    needs_task_grads: ClassVar[bool] = False
    needs_post_step_losses: ClassVar[bool] = False
    train_defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, num_tasks: int = 2) -> None:
        super().__init__()
        if num_tasks < 2:
            raise ValueError("a balancer needs at least two tasks")
        self.num_tasks = num_tasks

    def combine(self, losses: Tensor, grads: TaskGrads | None) -> Combination:
        """Weights (and optionally a combined shared gradient) for this step.

        ``losses`` are detached; ``grads`` is ``None`` unless ``needs_task_grads``
        or the trainer samples gradient statistics on this step.
        """
        raise NotImplementedError

    def auxiliary_loss(self, losses: Tensor, grads: TaskGrads | None) -> Tensor | None:
        """A loss for the balancer's own learnable parameters (``losses`` detached)."""
        return None

    def end_epoch(self, epoch: int, epoch_losses: Tensor) -> None:
        """Called once per epoch with the mean task losses of that epoch (DWA)."""

    def after_step(self, losses_after: Tensor | None = None) -> None:
        """Called by the trainer right after ``optimizer.step()`` on every applied step.

        For balancers that must project their learnable parameters back onto a
        constraint set after the optimiser moved them (GradNorm renormalises its
        weights to sum K), or that learn from the step's effect: ``losses_after`` are the
        detached task losses of the same batch after the step, given only when
        ``needs_post_step_losses`` (FAMO). The default does nothing.
        """

    def uniform(self, like: Tensor) -> Tensor:
        return torch.full(
            (self.num_tasks,), 1.0 / self.num_tasks, dtype=like.dtype, device=like.device
        )
