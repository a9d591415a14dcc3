"""``transformer``: a pre-norm Transformer encoder over the window (Vaswani et al. 2017).

The family of the strongest honest C-MAPSS results (the NAS-searched transformer of
``mohyunho/NAS_transformer``; DAST, Zhang et al. 2022). Every window row is a token:

    x (B, W, F)
     -> Linear(F -> d_model) + positions                                  (B, W, d)
        positions (model.positions): learned, one vector per row (normal, std 0.02), or
        sinusoidal, PE[t, 2i] = sin(t / 10000^(2i/d)), PE[t, 2i+1] = cos(...)
     -> Dropout(model.dropout)
     -> model.depth x pre-norm encoder layer (nn.TransformerEncoderLayer, norm_first):
            h = h + MHA(LN(h)),  h = h + FF(LN(h)),  FF = Linear(d -> ff) GELU Linear(ff -> d)
        model.attn_heads heads, model.ff feed-forward width, dropout model.dropout
     -> LayerNorm                                                         (B, W, d)
     -> pooling over time (model.pooling: mean (auto) | last | attention) (B, d)
     -> [Linear -> ReLU -> Dropout] per model.fc                          = z

``d_model`` must be even (sinusoidal positions) and divisible by ``attn_heads``.
Initialisation: Xavier uniform input projection, PyTorch's own initialisation of each
encoder layer (re-drawn per layer: ``nn.TransformerEncoder`` starts from copies of one
layer), He normal for the ReLU fully connected layers, zero biases.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from grace_rul.backbones.pooling import POOLINGS, Pool, fc_stack
from grace_rul.backbones.registry import register, resolve_pooling
from grace_rul.config import ModelConfig
from grace_rul.model import DualTaskNet

POSITIONS: tuple[str, ...] = ("learned", "sinusoidal")


def sinusoidal_positions(rows: int, width: int) -> Tensor:
    """The (rows, width) sine/cosine position table of Vaswani et al. 2017 (width even)."""
    position = torch.arange(rows, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, width, 2, dtype=torch.float32) * (-math.log(1e4) / width))
    table = torch.zeros(rows, width)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq)
    return table


@register("transformer", POOLINGS)
class Transformer(DualTaskNet):
    """Pre-norm Transformer encoder backbone with learned or sinusoidal positions."""

    def build_backbone(self, n_features: int, window: int, cfg: ModelConfig) -> int:
        d = cfg.d_model
        self.embed = nn.Linear(n_features, d)
        if cfg.positions == "learned":
            self.positions = nn.Parameter(torch.zeros(window, d))
        else:  # a constant: not saved with the weights, rebuilt from the config
            self.register_buffer("positions", sinusoidal_positions(window, d), persistent=False)
        self.drop = nn.Dropout(cfg.dropout)
        layer = nn.TransformerEncoderLayer(
            d, cfg.attn_heads, cfg.ff, cfg.dropout, activation="gelu",
            batch_first=True, norm_first=True,
        )  # fmt: skip
        self.encoder = nn.TransformerEncoder(
            layer, cfg.depth, norm=nn.LayerNorm(d), enable_nested_tensor=False
        )
        self.pool = Pool(resolve_pooling(cfg), d)
        self.fc, width = fc_stack(d, cfg.fc, cfg.dropout)
        return width

    @classmethod
    def check(cls, cfg: ModelConfig) -> str | None:
        if cfg.positions not in POSITIONS:
            return f"model.positions must be one of {', '.join(POSITIONS)} (got {cfg.positions})"
        if cfg.d_model % 2 or cfg.d_model % cfg.attn_heads:
            return (
                f"model.d_model ({cfg.d_model}) must be even and divisible by "
                f"model.attn_heads ({cfg.attn_heads})"
            )
        return None

    def reset_backbone(self) -> None:
        nn.init.xavier_uniform_(self.embed.weight)
        nn.init.zeros_(self.embed.bias)
        if isinstance(self.positions, nn.Parameter):
            nn.init.normal_(self.positions, std=0.02)
        for layer in self.encoder.layers:
            layer.self_attn._reset_parameters()
            layer.linear1.reset_parameters()
            layer.linear2.reset_parameters()
        for m in self.fc.modules():
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)
        if self.pool.score is not None:
            nn.init.xavier_uniform_(self.pool.score.weight)
            nn.init.zeros_(self.pool.score.bias)

    def representation(self, x: Tensor) -> Tensor:
        h = self.drop(self.embed(x) + self.positions)
        return self.fc(self.pool(self.encoder(h)))
