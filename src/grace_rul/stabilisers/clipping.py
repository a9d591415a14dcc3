"""Gradient clipping with a per-epoch monitor of how often the threshold bites.

Per batch, after ``backward`` (and after ``Precision.unscale_``), before ``optimizer.step()``::

    norm = clipper.clip(model.parameters())     # pre-clip joint L2 norm, a 0-d tensor
    ...
    summary = clipper.epoch_summary()           # once per epoch; resets the epoch counters
    if summary["hint"]: print(summary["hint"])

``clip`` does not synchronise with the device: the per-step norms stay there until
``epoch_summary`` (or ``state_dict``) reads them back, all in one transfer.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from grace_rul.config import CLIP_MODES
from grace_rul.errors import GraceError

log = logging.getLogger(__name__)

MODES = CLIP_MODES


def _grads(params: Iterable[Tensor] | Tensor) -> list[Tensor]:
    if isinstance(params, Tensor):
        params = [params]
    return [p.grad for p in params if p.grad is not None]


def _joint_norm(grads: list[Tensor]) -> Tensor:
    """L2 norm over all gradients together (one fused per-tensor norm, then a norm of norms)."""
    norms = torch._foreach_norm(grads)
    device = grads[0].device
    return torch.linalg.vector_norm(torch.stack([n.to(device) for n in norms]))


class GradClipper:
    """Clips gradients and watches the fraction of clipped steps per epoch.

    ``mode="norm"``: rescale all gradients together so their joint L2 norm is at most
    ``max_norm`` (direction preserved; ``torch.nn.utils.clip_grad_norm_``). ``mode="value"``:
    clamp each element to ``[-max_norm, max_norm]`` (``clip_grad_value_``; changes direction).
    Either way ``clip`` returns the pre-clip joint L2 norm (a 0-d tensor on the gradients'
    device, like ``clip_grad_norm_``), and a step counts as clipped when the
    threshold bit (norm mode: joint norm > max_norm; value mode: some |element| > max_norm).
    ``max_norm=0`` turns clipping off: the pre-clip norm is still recorded, no step counts as
    clipped and the band monitor stays silent.

    Band monitor: when the per-epoch clipped fraction stays outside ``band`` (default 10–30 %)
    for ``patience`` consecutive epochs, ``epoch_summary`` returns — once per run — a hint naming
    the threshold that would have clipped ``target`` (~20 %) of those epochs' steps: the
    empirical ``1 - target`` quantile of the per-step quantity the threshold is compared with
    (joint norm in norm mode, largest |gradient element| in value mode), and the share of those
    steps it would actually have clipped.
    """

    def __init__(
        self,
        max_norm: float = 1.0,
        mode: str = "norm",
        *,
        band: tuple[float, float] = (0.10, 0.30),
        patience: int = 3,
        target: float = 0.20,
    ) -> None:
        if not (isinstance(max_norm, int | float) and math.isfinite(max_norm) and max_norm >= 0):
            raise GraceError(
                f"clip threshold must be a finite number >= 0, 0 = no clipping (got {max_norm!r})"
            )
        if mode not in MODES:
            raise GraceError(f"clip mode must be one of {', '.join(MODES)} (got {mode!r})")
        lo, hi = band
        if not 0.0 <= lo < hi <= 1.0 or not lo <= target <= hi:
            raise GraceError(
                f"clip band must satisfy 0 <= lo <= target <= hi <= 1 (got {band}, {target})"
            )
        if patience < 1:
            raise GraceError(f"clip band patience must be >= 1 (got {patience})")
        self.max_norm = float(max_norm)
        self.mode = mode
        self.band = (float(lo), float(hi))
        self.patience = int(patience)
        self.target = float(target)
        # current epoch
        self._pending: list[tuple[Tensor, Tensor]] = []  # (norm, level) not yet read back
        self._norms: list[float] = []
        self._clipped: list[bool] = []
        self._levels: list[float] = []  # what the threshold is compared with, per step
        self._nonfinite = 0
        # band monitor
        self._out_of_band = 0  # consecutive epochs outside the band
        self._window: list[list[float]] = []  # the levels of those epochs
        self.hinted = False
        self.total_steps = 0
        self.total_clipped = 0

    # -- per batch -------------------------------------------------------------------------
    @torch.no_grad()
    def clip(self, params: Iterable[Tensor] | Tensor) -> Tensor:
        """Clip the gradients of ``params`` in place; return their pre-clip joint L2 norm.

        The norm is a 0-d tensor on the gradients' device: nothing here waits for the device.
        Parameters without a gradient are ignored (a zero and nothing recorded if none has
        one). A non-finite norm is returned and counted but kept out of the statistics; guard
        against it first with ``NonFiniteGuard.check_grads``.
        """
        params = list(params) if not isinstance(params, Tensor) else [params]
        grads = _grads(params)
        if not grads:
            return torch.zeros(())
        if self.max_norm == 0:  # clipping off: only measure
            norm = level = _joint_norm(grads)
        elif self.mode == "norm":
            norm = level = torch.nn.utils.clip_grad_norm_(params, self.max_norm, norm_type=2.0)
        else:
            norm = _joint_norm(grads)
            peaks = torch._foreach_norm(grads, float("inf"))
            level = torch.stack([p.to(grads[0].device) for p in peaks]).max()
            torch.nn.utils.clip_grad_value_(params, self.max_norm)
        self._pending.append((norm, level))
        return norm

    def _read_back(self) -> None:
        """Move the pending per-step norms to the host (one transfer) into the statistics."""
        if not self._pending:
            return
        values = torch.stack([v.double() for pair in self._pending for v in pair]).tolist()
        self._pending = []
        for norm, level in zip(values[0::2], values[1::2]):
            if math.isfinite(norm):
                self._norms.append(norm)
                self._levels.append(level)
                self._clipped.append(self.max_norm > 0 and level > self.max_norm)
            else:
                self._nonfinite += 1

    # -- per epoch -------------------------------------------------------------------------
    def epoch_summary(self) -> dict[str, Any]:
        """Statistics of this epoch's pre-clip norms, then reset for the next epoch.

        Keys: ``mean``, ``max``, ``p90`` (NaN for an epoch without steps), ``fraction`` (clipped
        steps / steps), ``steps``, ``nonfinite`` (steps with a non-finite norm, not in the
        statistics) and ``hint`` (``None``, or the one-off band hint, also logged at WARNING).
        """
        self._read_back()
        norms = np.asarray(self._norms, dtype=np.float64)
        steps = int(norms.size)
        n_clipped = int(sum(self._clipped))
        summary: dict[str, Any] = {
            "mean": float(norms.mean()) if steps else math.nan,
            "max": float(norms.max()) if steps else math.nan,
            "p90": float(np.percentile(norms, 90)) if steps else math.nan,
            "fraction": n_clipped / steps if steps else 0.0,
            "steps": steps,
            "nonfinite": self._nonfinite,
            "hint": None,
        }
        self.total_steps += steps
        self.total_clipped += n_clipped
        if steps and self.max_norm > 0:
            summary["hint"] = self._watch_band(summary["fraction"], self._levels)
        self._norms, self._levels, self._clipped, self._nonfinite = [], [], [], 0
        return summary

    def _watch_band(self, fraction: float, levels: list[float]) -> str | None:
        lo, hi = self.band
        if lo <= fraction <= hi:
            self._out_of_band, self._window = 0, []
            return None
        self._out_of_band += 1
        self._window = (self._window + [list(levels)])[-self.patience :]
        if self._out_of_band < self.patience or self.hinted:
            return None
        self.hinted = True
        hint = self.suggest()
        log.warning(hint)
        return hint

    def suggest(self) -> str:
        """The band hint for the recorded out-of-band epochs (see the class docstring)."""
        window = np.concatenate([np.asarray(w, dtype=np.float64) for w in self._window])
        if window.size == 0:
            return "no out-of-band epochs recorded"
        # The empirical (1 - target) quantile: among the recorded values, the threshold whose
        # share of values strictly above it is closest to target (robust to ties).
        values = np.sort(window)
        above = (values.size - np.searchsorted(values, values, side="right")) / values.size
        threshold = float(values[np.argmin(np.abs(above - self.target))])
        clipped_now = float(np.mean(window > self.max_norm))
        would_clip = float(np.mean(window > threshold))
        lo, hi = self.band
        return (
            f"clip fraction {clipped_now:.2f} outside {lo * 100:.0f}-{hi * 100:.0f}% for "
            f"{len(self._window)} epochs at train.clip={self.max_norm:g}; "
            f"--set train.clip={threshold:.3g} would clip ~{would_clip * 100:.0f}%"
        )

    # -- persistence -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Counters, band-monitor window and the hinted flag, for resume."""
        self._read_back()
        return {
            "max_norm": self.max_norm,
            "mode": self.mode,
            "norms": list(self._norms),
            "levels": list(self._levels),
            "clipped": list(self._clipped),
            "nonfinite": self._nonfinite,
            "out_of_band": self._out_of_band,
            "window": [list(w) for w in self._window],
            "hinted": self.hinted,
            "total_steps": self.total_steps,
            "total_clipped": self.total_clipped,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore counters; ``max_norm``/``mode`` stay as constructed (current config wins)."""
        self._pending = []
        self._norms = [float(x) for x in state["norms"]]
        self._levels = [float(x) for x in state["levels"]]
        self._clipped = [bool(x) for x in state["clipped"]]
        self._nonfinite = int(state["nonfinite"])
        self._out_of_band = int(state["out_of_band"])
        self._window = [[float(x) for x in w] for w in state["window"]][-self.patience :]
        self.hinted = bool(state["hinted"])
        self.total_steps = int(state["total_steps"])
        self.total_clipped = int(state["total_clipped"])
