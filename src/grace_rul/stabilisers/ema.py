"""Exponential moving average (EMA) of a model's trainable weights.

Call order matters (docs/design.md §5): ``optimizer.step()`` first, then
``ema.update(model)``, every batch. Evaluate with ``with ema.swapped(model): ...`` so the
averaged weights are used and the live ones are always put back.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from grace_rul.errors import GraceError


class ModelEma:
    """Shadow copy of every trainable parameter, blended towards the live weights after each step.

    ``shadow <- decay * shadow + (1 - decay) * param`` with one fused ``torch._foreach_lerp_``
    call (no per-tensor Python arithmetic).

    Buffers policy: buffers (BatchNorm running statistics, ``num_batches_tracked``, ...) are NOT
    averaged and not shadowed. Running statistics are already averages of the live network's
    activations, so the EMA always uses the live model's current buffers — equivalent to copying
    them from the live model on every update, without the copy. Parameters with
    ``requires_grad=False`` at construction are treated the same way (never change, never
    shadowed). ``swapped`` and ``averaged_state_dict`` therefore touch trainable
    parameters only and take everything else from the live model.

    Decay warm-up (``warmup=True``): the t-th update (t = updates already applied, from 0) uses
    ``min(decay, (1 + t) / (10 + t))`` so early, random weights are forgotten quickly.

    Device follows the model: when the model has moved, the shadow moves with it on the next
    ``update``/``swapped``.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = False) -> None:
        if not 0.0 <= decay < 1.0:
            raise GraceError(f"EMA decay must be in [0, 1) (got {decay})")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.num_updates = 0
        names, params = [], []
        for name, p in model.named_parameters():
            if p.requires_grad:
                names.append(name)
                params.append(p.detach().clone())
        if not names:
            raise GraceError("EMA needs a model with at least one trainable parameter")
        self._names: list[str] = names
        self.shadow: list[Tensor] = params
        self._swapped = False

    # -- helpers ---------------------------------------------------------------------------
    def _params(self, model: nn.Module) -> list[nn.Parameter]:
        """The model's parameters in shadow order, looked up by name (robust to re-freezing)."""
        named = dict(model.named_parameters())
        try:
            return [named[n] for n in self._names]
        except KeyError as err:
            raise RuntimeError(
                f"ModelEma: model has no parameter {err.args[0]!r}; was the EMA built for it?"
            ) from None

    def _follow_device(self, params: list[nn.Parameter]) -> None:
        if self.shadow[0].device != params[0].device:
            self.shadow = [s.to(p.device) for s, p in zip(self.shadow, params)]

    def current_decay(self) -> float:
        """Decay the next ``update`` will use (the warm-up formula when ``warmup`` is on)."""
        if not self.warmup:
            return self.decay
        t = self.num_updates
        return min(self.decay, (1.0 + t) / (10.0 + t))

    # -- the per-batch hook ----------------------------------------------------------------
    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Blend the shadow towards the model's CURRENT weights; call after optimizer.step()."""
        if self._swapped:
            raise RuntimeError("ModelEma.update called while the EMA weights are swapped in")
        params = self._params(model)
        self._follow_device(params)
        decay = self.current_decay()
        # lerp(shadow, p, w) = shadow + w * (p - shadow) = decay * shadow + (1 - decay) * p
        torch._foreach_lerp_(self.shadow, [p.detach() for p in params], 1.0 - decay)
        self.num_updates += 1

    # -- using the averaged weights --------------------------------------------------------
    @contextmanager
    def swapped(self, model: nn.Module) -> Iterator[nn.Module]:
        """Run the body with the EMA weights in ``model``; the live weights are always restored.

        The swap exchanges ``param.data`` with the shadow tensors: no copy is made, and the
        Parameter objects (hence optimizer state) are untouched. The body must not modify the
        weights in place (it would modify the EMA); evaluation only.
        """
        if self._swapped:
            raise RuntimeError("ModelEma.swapped is not re-entrant")
        params = self._params(model)
        self._follow_device(params)
        self._exchange(params)
        self._swapped = True
        try:
            yield model
        finally:
            self._exchange(params)
            self._swapped = False

    @torch.no_grad()
    def _exchange(self, params: list[nn.Parameter]) -> None:
        for i, p in enumerate(params):
            live = p.data
            p.data = self.shadow[i]
            self.shadow[i] = live

    def averaged_state_dict(self, model: nn.Module) -> OrderedDict[str, Tensor]:
        """``model.state_dict()`` with the EMA weights in place of the trainable parameters.

        This is the "inference weights" export. Buffers and frozen parameters come from the live
        model. Every tensor is a detached copy, so later training does not change the result.
        """
        if self._swapped:
            raise RuntimeError("ModelEma.averaged_state_dict called while swapped in")
        shadow = dict(zip(self._names, self.shadow))
        out: OrderedDict[str, Tensor] = OrderedDict()
        for key, value in model.state_dict(keep_vars=False).items():
            out[key] = (shadow[key] if key in shadow else value).detach().clone()
        return out

    # -- persistence -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """EMA state for checkpoints (tensors are copies)."""
        return {
            "decay": self.decay,
            "warmup": self.warmup,
            "num_updates": self.num_updates,
            "shadow": OrderedDict((n, s.clone()) for n, s in zip(self._names, self.shadow)),
        }

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from ``state_dict()``; the shadow keeps its current device and dtype.

        ``decay`` and ``warmup`` stay as constructed (the current configuration wins); only
        the update count and the averaged weights are restored.
        """
        shadow = state["shadow"]
        if set(shadow) != set(self._names):
            missing = sorted(set(self._names) - set(shadow))
            extra = sorted(set(shadow) - set(self._names))
            raise GraceError(
                f"EMA state does not match the model (missing {missing[:3]}, "
                f"unexpected {extra[:3]}); was it saved with another config?"
            )
        saved = [shadow[n] for n in self._names]
        for name, own, theirs in zip(self._names, self.shadow, saved):
            if own.shape != theirs.shape:
                raise GraceError(
                    f"EMA state for {name!r} has shape {tuple(theirs.shape)}, "
                    f"model has {tuple(own.shape)}; was it saved with another config?"
                )
        torch._foreach_copy_(
            self.shadow, [theirs.to(own.device) for own, theirs in zip(self.shadow, saved)]
        )
        self.num_updates = int(state["num_updates"])
