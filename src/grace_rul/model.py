"""The dual-task network (docs/design.md §2): a shared backbone with a RUL head and a health head.

:class:`DualTaskNet` is the part every architecture shares: whatever backbone turns a
window ``x`` (B, window rows, features) into the shared representation ``z`` (B, width),
a RUL head (1 output, in cycles) and a health head (3 logits) read ``z``. Each
architecture is a subclass in :mod:`grace_rul.backbones`, one file per architecture,
selected by ``model.arch`` (default ``cnn_bilstm_attention``, the write-up's
Conv1d-BiLSTM-attention network). A subclass builds its layers in
:meth:`DualTaskNet.build_backbone` and maps windows to ``z`` in
:meth:`DualTaskNet.representation`; the heads, the parameter partition the balancers
use (:meth:`~DualTaskNet.shared_parameters`, :meth:`~DualTaskNet.head_parameters`,
:meth:`~DualTaskNet.last_shared_layer_params`) and the data-driven RUL bias are here,
so every balancer and stabiliser works on every architecture. The backbone's layers are
registered on the network itself, before the heads: state-dict keys (``conv.0.weight``,
``rul_head.bias``) are those of every earlier model file, and the last shared layer's
parameters come just before the heads'.

The trainer sets the RUL head's bias from data (:meth:`DualTaskNet.init_rul_bias`): the
mean initial prediction over training windows equals the mean training target, instead
of sitting 100-250 cycles below zero, so the first steps learn the shape of degradation
rather than undo an offset.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from grace_rul.config import ModelConfig


class DualTaskNet(nn.Module):
    """A backbone (the subclass) -> shared representation -> RUL head and health head.

    ``forward`` returns ``(rul, health_logits, representation)``; ``rul`` is in cycles
    (the head's output times ``rul_scale``, which keeps the regression target near unit
    scale). ``window`` is the number of rows of an input window (``data.window``, plus 2
    with ``data.window_features``); only architectures that flatten the window or learn
    one vector per position need it.
    """

    arch: str = ""  # the registry name (grace_rul.backbones.register)
    poolings: tuple[str, ...] = ()  # model.pooling values it supports; the first is "auto"

    def __init__(
        self,
        n_features: int,
        cfg: ModelConfig,
        rul_scale: float = 125.0,
        n_health: int = 3,
        window: int = 30,
    ):
        super().__init__()
        self.rul_scale = float(rul_scale)
        width = self.build_backbone(n_features, window, cfg)
        self.rul_head = nn.Linear(width, 1)
        self.health_head = nn.Linear(width, n_health)
        self.reset_parameters()

    # -- what an architecture provides -----------------------------------------------------
    def build_backbone(self, n_features: int, window: int, cfg: ModelConfig) -> int:
        """Create the backbone's layers on ``self``; return the width of ``z``."""
        raise NotImplementedError

    def representation(self, x: Tensor) -> Tensor:
        """Shared representation (B, width) of windows ``x`` shaped (B, window, features)."""
        raise NotImplementedError

    def reset_backbone(self) -> None:
        """Initialise the backbone's layers (called once, before the heads are initialised)."""

    @classmethod
    def check(cls, cfg: ModelConfig) -> str | None:
        """A one-line problem with ``cfg`` for this architecture, or ``None``."""
        return None

    # -- shared by every architecture -------------------------------------------------------
    def reset_parameters(self) -> None:
        """The backbone's own initialisation, then Xavier-uniform heads with zero biases."""
        self.reset_backbone()
        for head in self.heads():
            nn.init.xavier_uniform_(head.weight)
            nn.init.zeros_(head.bias)

    @torch.no_grad()
    def init_rul_bias(self, x: Tensor, target_mean: float) -> None:
        """Shift the RUL head's bias so the mean prediction on windows ``x`` is ``target_mean``.

        Deterministic (evaluated without dropout) and consumes no random numbers.
        """
        was_training = self.training
        self.eval()
        out = self.rul_head(self.representation(x)).mean()
        self.rul_head.bias += target_mean / self.rul_scale - out
        self.train(was_training)

    def heads(self) -> tuple[nn.Linear, nn.Linear]:
        return (self.rul_head, self.health_head)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        z = self.representation(x)
        return self.rul_head(z).squeeze(-1) * self.rul_scale, self.health_head(z), z

    def shared_parameters(self) -> list[nn.Parameter]:
        """Backbone parameters in module order; the last shared layer's come last."""
        head_ids = {id(p) for h in self.heads() for p in h.parameters()}
        return [p for p in self.parameters() if id(p) not in head_ids]

    def head_parameters(self) -> list[list[nn.Parameter]]:
        """Per task (RUL, health): the parameters only that task uses."""
        return [list(h.parameters()) for h in self.heads()]

    def last_shared_layer(self) -> nn.Module:
        """The module that owns the last shared parameters (the layer that outputs ``z``)."""
        heads = {id(h) for h in self.heads()}
        owners = [
            m
            for m in self.modules()
            if id(m) not in heads and next(m.parameters(recurse=False), None) is not None
        ]
        return owners[-1]

    def last_shared_layer_params(self) -> int:
        """How many trailing entries of :meth:`shared_parameters` form the last shared layer."""
        return len(list(self.last_shared_layer().parameters(recurse=False)))


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, batch_size: int = 2048) -> tuple[Tensor, Tensor]:
    """RUL predictions and health logits for windows ``x``, in eval mode, in order."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    ruls, logits = [], []
    for start in range(0, len(x), batch_size):
        rul, health, _ = model(x[start : start + batch_size].to(device))
        ruls.append(rul.float().cpu())
        logits.append(health.float().cpu())
    model.train(was_training)
    if not ruls:
        return torch.zeros(0), torch.zeros(0, 3)
    return torch.cat(ruls), torch.cat(logits)
