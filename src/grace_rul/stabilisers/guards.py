"""Guards against non-finite steps and loss spikes.

Per batch::

    ...backward...; precision.unscale_(opt)
    if guard.check_step(losses, model.parameters(), ("rul", "health")):  # one host sync
        ...clip, optimizer step, EMA update...; guard.record_good()
    else:
        guard.record_bad(epoch, batch, guard.last_problem)  # zero the grads, skip the step
    spikes.update(float(total_loss), epoch, batch)  # may run later, e.g. once per epoch

``check_loss`` (before backward) and ``check_grads`` (after it) are the same checks one at
a time, each with its own host synchronisation.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from grace_rul.errors import GraceError


class TrainingDiverged(GraceError):
    """Training produced non-finite losses or gradients too many steps in a row."""


class NonFiniteGuard:
    """Detects NaN/Inf losses and gradients, counts skipped steps, stops a run that diverged.

    ``check_loss``/``check_grads`` only look; the caller skips the step and calls
    ``record_bad`` (or ``record_good`` after a clean step). ``max_consecutive`` bad steps in a
    row raise ``TrainingDiverged`` naming the first bad step.
    """

    def __init__(self, max_consecutive: int = 10) -> None:
        if max_consecutive < 1:
            raise GraceError(f"max_consecutive must be >= 1 (got {max_consecutive})")
        self.max_consecutive = int(max_consecutive)
        self.total_skipped = 0
        self.consecutive = 0
        self.first_bad: tuple[int, int, str] | None = None  # (epoch, batch, what)
        self.last_bad: tuple[int, int, str] | None = None
        self.last_problem = ""  # what the last failed check found, for record_bad

    @torch.no_grad()
    def check_loss(self, losses: Tensor, names: Sequence[str] | None = None) -> bool:
        """True when every loss is finite; otherwise ``last_problem`` names the bad ones."""
        losses = losses.detach().reshape(-1)
        finite = torch.isfinite(losses)
        if bool(finite.all()):
            return True
        if names is None:
            names = [f"loss[{i}]" for i in range(losses.numel())]
        if len(names) != losses.numel():
            raise ValueError(f"{losses.numel()} losses but {len(names)} names")
        bad = [f"{n}={v:g}" for n, v, ok in zip(names, losses.tolist(), finite.tolist()) if not ok]
        self.last_problem = "loss " + ", ".join(bad)
        return False

    @torch.no_grad()
    def check_grads(self, params: Iterable[Tensor] | Tensor) -> bool:
        """True when every gradient element is finite (one fused check over all tensors).

        Uses the per-tensor max-abs (inf-norm), which propagates NaN/Inf but cannot overflow
        the way a sum of squares of large finite values would. Call after ``unscale_``.
        """
        finite = _grads_finite(params)
        if finite is None or bool(finite):
            return True
        self.last_problem = "gradients"
        return False

    @torch.no_grad()
    def check_step(
        self,
        losses: Tensor,
        params: Iterable[Tensor] | Tensor,
        names: Sequence[str] | None = None,
        *,
        also: Tensor | bool = True,
    ) -> bool:
        """``check_loss`` and ``check_grads`` with one host synchronisation: True when the step
        may be applied (every loss and gradient element finite, and ``also`` true).

        Everything stays on the device until the one ``bool`` (like ``GradScaler``), so it runs
        after backward and ``unscale_``. ``also`` is a further 0-d bool tensor, such as the
        engine's ``StepGrads.finite``. On False, ``last_problem`` names the non-finite losses
        (as ``check_loss``) or else says ``"gradients"``.
        """
        ok = torch.isfinite(losses.detach()).all() & also
        grads = _grads_finite(params)
        if grads is not None:
            ok = ok & grads.to(ok.device)
        if bool(ok):
            return True
        if self.check_loss(losses, names):
            self.last_problem = "gradients"
        return False

    def record_bad(self, epoch: int, batch: int, what: str) -> None:
        """Count a skipped step; raise ``TrainingDiverged`` after too many in a row."""
        self.total_skipped += 1
        self.consecutive += 1
        self.last_bad = (int(epoch), int(batch), str(what))
        if self.first_bad is None:
            self.first_bad = self.last_bad
        if self.consecutive >= self.max_consecutive:
            e, b, w = self.first_bad
            raise TrainingDiverged(
                f"training diverged: {self.consecutive} consecutive steps with non-finite "
                f"values (last: epoch {epoch} batch {batch}, {what}; first bad step of the run: "
                f"epoch {e} batch {b}, {w}); try a lower learning rate"
            )

    def record_good(self) -> None:
        """A clean step: the consecutive-failure count starts again."""
        self.consecutive = 0

    def state_dict(self) -> dict[str, Any]:
        """Counters for resume."""
        return {
            "total_skipped": self.total_skipped,
            "consecutive": self.consecutive,
            "first_bad": self.first_bad,
            "last_bad": self.last_bad,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the counters saved by ``state_dict``."""
        self.total_skipped = int(state["total_skipped"])
        self.consecutive = int(state["consecutive"])
        self.first_bad = tuple(state["first_bad"]) if state["first_bad"] is not None else None
        self.last_bad = tuple(state["last_bad"]) if state["last_bad"] is not None else None


def _grads_finite(params: Iterable[Tensor] | Tensor) -> Tensor | None:
    """0-d bool tensor: every gradient element of ``params`` is finite (None: no gradients)."""
    if isinstance(params, Tensor):
        params = [params]
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return None
    peaks = torch._foreach_norm(grads, float("inf"))
    device = grads[0].device
    return torch.isfinite(torch.stack([p.to(device) for p in peaks])).all()


class SpikeDetector:
    """Flags loss spikes: a loss above ``factor`` x its running level (for losses >= 0).

    The level is an exponential moving average (``momentum``) of the finite losses seen,
    started at the first one; spikes also feed it, so a lasting shift in the loss stops being
    flagged after a while. Nothing is flagged during the first ``warmup`` finite losses.
    Non-finite losses are ignored (that is ``NonFiniteGuard``'s job).
    """

    def __init__(self, factor: float = 3.0, momentum: float = 0.98, warmup: int = 20) -> None:
        if not factor > 1:
            raise GraceError(f"spike factor must be > 1 (got {factor})")
        if not 0 <= momentum < 1:
            raise GraceError(f"spike momentum must be in [0, 1) (got {momentum})")
        if warmup < 0:
            raise GraceError(f"spike warmup must be >= 0 (got {warmup})")
        self.factor = float(factor)
        self.momentum = float(momentum)
        self.warmup = int(warmup)
        self.level: float | None = None
        self.steps = 0  # finite losses seen
        self.spikes: list[tuple[int, int, float, float]] = []  # (epoch, batch, loss, level)
        self.per_epoch: dict[int, int] = {}

    def update(self, loss: float, epoch: int, batch: int) -> bool:
        """Feed one step's loss; True when it is a spike (recorded in ``spikes``)."""
        loss = float(loss)
        if not math.isfinite(loss):
            return False
        spike = (
            self.level is not None and self.steps >= self.warmup and loss > self.factor * self.level
        )
        if spike:
            self.spikes.append((int(epoch), int(batch), loss, float(self.level)))
            self.per_epoch[int(epoch)] = self.per_epoch.get(int(epoch), 0) + 1
        if self.level is None:
            self.level = loss
        else:
            self.level = self.momentum * self.level + (1.0 - self.momentum) * loss
        self.steps += 1
        return spike

    def state_dict(self) -> dict[str, Any]:
        """Level, step count and the spike record, for resume."""
        return {
            "level": self.level,
            "steps": self.steps,
            "spikes": [tuple(s) for s in self.spikes],
            "per_epoch": dict(self.per_epoch),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the state saved by ``state_dict``."""
        self.level = None if state["level"] is None else float(state["level"])
        self.steps = int(state["steps"])
        self.spikes = [tuple(s) for s in state["spikes"]]
        self.per_epoch = {int(k): int(v) for k, v in state["per_epoch"].items()}
