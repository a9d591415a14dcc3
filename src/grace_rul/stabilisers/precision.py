"""Mixed precision: autocast context plus a gradient scaler for float16.

Per batch::

    with precision.autocast():
        losses = ...forward...
    precision.scale_loss(loss).backward()   # or scale each task loss before per-task grads
    precision.unscale_(optimizer)           # before the non-finite check and before clipping
    ...check grads, clip...
    precision.step(optimizer)
    precision.update()
"""

from __future__ import annotations

import functools
import warnings
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import Tensor

from grace_rul.config import PRECISIONS
from grace_rul.errors import GraceError

MODES = PRECISIONS


@functools.cache
def bf16_native(device_type: str) -> bool:
    """Whether ``device_type`` computes bfloat16 matrix products in hardware.

    CPU: AVX512-BF16 or AMX tiles (elsewhere PyTorch emulates bf16, several times slower
    than float32). CUDA: ``torch.cuda.is_bf16_supported()`` (Ampere and newer).
    Probed once per process.
    """
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device_type == "cpu":
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    return False


def resolve_precision(mode: str, device: torch.device | str) -> str:
    """``auto`` becomes ``bf16`` where the device computes bf16 natively, else ``32``."""
    if str(mode) != "auto":
        return str(mode)
    return "bf16" if bf16_native(torch.device(device).type) else "32"


class Precision:
    """Numeric precision of a training run: ``"auto"``, ``"32"``, ``"bf16"`` or ``"16"`` (float16).

    ``auto`` (the default) is bf16 autocast where the device computes bf16 natively
    (:func:`bf16_native`) and float32 elsewhere. Autocast covers the forward pass only:
    losses, metrics, balancer weights, the weight EMA and the optimiser state stay float32.
    An explicit ``bf16`` on a CPU without native bf16 runs (emulated) with a one-line warning.

    bf16 autocasts on CPU or CUDA and needs no scaler (bf16 has float32's exponent range).
    float16 is CUDA-only and uses ``torch.amp.GradScaler``: losses are multiplied by ``scale``
    before backward, ``unscale_`` divides the gradients back (call it before clipping and before
    checking gradients for NaN/Inf), and ``step`` skips the optimizer step when the scaled
    gradients overflowed; ``update`` then lowers the scale. Without a scaler, ``scale_loss``,
    ``unscale_`` and ``update`` do nothing and ``step`` is ``optimizer.step()``.
    """

    def __init__(self, mode: str = "32", device: torch.device | str = "cpu") -> None:
        if str(mode) not in MODES:
            raise GraceError(f"precision must be one of {', '.join(MODES)} (got {mode!r})")
        self.device = torch.device(device)
        mode = resolve_precision(mode, self.device)
        self.mode = mode
        kind = self.device.type
        if mode == "16" and (kind != "cuda" or not torch.cuda.is_available()):
            raise GraceError(
                f"precision 16 (float16 with gradient scaling) needs a CUDA device, got {kind}; "
                "use precision bf16 or 32"
            )
        if mode == "bf16":
            if kind not in ("cpu", "cuda"):
                raise GraceError(f"precision bf16 is supported on cpu and cuda, not {kind}")
            if kind == "cuda" and not torch.cuda.is_bf16_supported():
                raise GraceError("precision bf16 is not supported by this GPU; use 16 or 32")
            if kind == "cpu" and not bf16_native("cpu"):
                warnings.warn(
                    "precision bf16: this CPU has no native bf16 (AVX512-BF16/AMX), so it is "
                    "emulated and slower than 32; --precision auto picks the faster one",
                    stacklevel=2,
                )
        self.dtype: torch.dtype | None = {
            "32": None,
            "bf16": torch.bfloat16,
            "16": torch.float16,
        }[mode]
        self.scaler: torch.amp.GradScaler | None = (
            torch.amp.GradScaler("cuda") if mode == "16" else None
        )

    def autocast(self) -> AbstractContextManager[Any]:
        """Context for the forward pass and loss computation."""
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    @property
    def scale(self) -> float:
        """Current loss scale (1.0 without a scaler)."""
        return float(self.scaler.get_scale()) if self.scaler is not None else 1.0

    def scale_loss(self, loss: Tensor) -> Tensor:
        """``loss * scale`` for backward (unchanged without a scaler)."""
        return self.scaler.scale(loss) if self.scaler is not None else loss

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        """Divide the optimizer's gradients by the scale, in place; once per step."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """Optimizer step (skipped by the scaler when the scaled gradients overflowed)."""
        if self.scaler is not None:
            self.scaler.step(optimizer)
        else:
            optimizer.step()

    def update(self) -> None:
        """Adjust the scale after the step; also call it when a step was skipped after
        ``unscale_`` found NaN/Inf, so the scale backs off."""
        if self.scaler is not None:
            self.scaler.update()

    def skip(self, *, overflow: bool) -> None:
        """End a step skipped after ``unscale_`` (fp16 only; nothing to do otherwise).

        ``overflow``: the gradients were non-finite, so the loss scale shrinks. A step skipped
        for a non-finite loss keeps the scale (scaling did not cause it).
        """
        if self.scaler is not None:
            scale = self.scaler.get_scale()
            self.scaler.update(scale * self.scaler.get_backoff_factor() if overflow else scale)

    def state_dict(self) -> dict[str, Any]:
        """Mode and scaler state for resume."""
        return {
            "mode": self.mode,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the scaler state (ignored when either side has no scaler)."""
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
