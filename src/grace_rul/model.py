"""The dual-task network (docs/design.md §2): a shared backbone with a RUL head and a health head.

Backbone: Conv1d stack over the sensor channels -> BiLSTM -> multi-head
self-attention with a residual connection (+ LayerNorm) -> mean over time ->
fully connected layers. Heads: RUL (1 output, in cycles) and health (3 logits).

Initialisation (done once, in :meth:`DualTaskNet.reset_parameters`): He (Kaiming)
normal for the convolutions and the ReLU fully connected layers, Xavier uniform
for the attention projections and the two heads, orthogonal recurrent
(hidden-to-hidden) and Xavier input-to-hidden LSTM weights, zero biases except
the LSTM forget-gate bias, which starts at ``model.forget_bias`` (1, the write-up's) -
set in ``bias_ih`` with ``bias_hh`` 0, since PyTorch adds the two. The trainer then sets
the RUL head's bias from data (:meth:`DualTaskNet.init_rul_bias`): the mean initial
prediction over training windows equals the mean training target, instead of sitting
100-250 cycles below zero, so the first steps learn the shape of degradation rather than
undo an offset.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from grace_rul.config import ModelConfig


class DualTaskNet(nn.Module):
    """Shared Conv1d-BiLSTM-attention backbone with a RUL regression head and a health head.

    ``forward`` returns ``(rul, health_logits, representation)``; ``rul`` is in
    cycles (the head's output times ``rul_scale``, which keeps the regression
    target near unit scale).
    """

    def __init__(
        self,
        n_features: int,
        cfg: ModelConfig,
        rul_scale: float = 125.0,
        n_health: int = 3,
    ):
        super().__init__()
        self.rul_scale = float(rul_scale)
        self.forget_bias = float(cfg.forget_bias)
        convs: list[nn.Module] = []
        channels = n_features
        for out in cfg.conv_channels:
            convs += [
                nn.Conv1d(channels, out, cfg.kernel_size, padding=cfg.kernel_size // 2),
                nn.ReLU(),
            ]
            channels = out
        self.conv = nn.Sequential(*convs)
        self.lstm = nn.LSTM(
            channels,
            cfg.lstm_hidden,
            num_layers=cfg.lstm_layers,
            batch_first=True,
            bidirectional=True,
            dropout=cfg.dropout if cfg.lstm_layers > 1 else 0.0,
        )
        width = 2 * cfg.lstm_hidden
        self.attention = nn.MultiheadAttention(
            width, cfg.attn_heads, dropout=cfg.dropout, batch_first=True
        )
        self.norm = nn.LayerNorm(width)
        fcs: list[nn.Module] = []
        for h in cfg.fc:
            fcs += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(cfg.dropout)]
            width = h
        self.fc = nn.Sequential(*fcs)
        self.rul_head = nn.Linear(width, 1)
        self.health_head = nn.Linear(width, n_health)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv1d) or (isinstance(m, nn.Linear) and m not in self.heads()):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)
        for head in self.heads():
            nn.init.xavier_uniform_(head.weight)
            nn.init.zeros_(head.bias)
        nn.init.xavier_uniform_(self.attention.in_proj_weight)
        nn.init.zeros_(self.attention.in_proj_bias)
        nn.init.xavier_uniform_(self.attention.out_proj.weight)
        nn.init.zeros_(self.attention.out_proj.bias)
        hidden = self.lstm.hidden_size
        for name, p in self.lstm.named_parameters():
            if name.startswith("weight_hh"):
                for gate in p.data.chunk(4, 0):
                    nn.init.orthogonal_(gate)
            elif name.startswith("weight_ih"):
                nn.init.xavier_uniform_(p)
            else:
                nn.init.zeros_(p)
                if name.startswith("bias_ih"):  # forget gate (gate order i, f, g, o)
                    p.data[hidden : 2 * hidden] = self.forget_bias

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

    def representation(self, x: Tensor) -> Tensor:
        """Shared representation (B, fc[-1]) of windows ``x`` shaped (B, window, features)."""
        h = self.conv(x.transpose(1, 2)).transpose(1, 2)
        h, _ = self.lstm(h)
        a, _ = self.attention(h, h, h, need_weights=False)
        h = self.norm(h + a)
        return self.fc(h.mean(dim=1))

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

    def last_shared_layer_params(self) -> int:
        """How many trailing entries of :meth:`shared_parameters` form the last shared layer."""
        last = [m for m in self.fc if isinstance(m, nn.Linear)]
        return len(list(last[-1].parameters())) if last else len(list(self.norm.parameters()))


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def build_model(cfg: ModelConfig, n_features: int = 14, max_rul: float = 125.0) -> DualTaskNet:
    """The network for a config (features = 14 informative sensors by default)."""
    return DualTaskNet(n_features, cfg, rul_scale=max_rul)


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
