"""``tcn``: a temporal convolutional network of dilated causal residual blocks.

Bai, Kolter & Koltun 2018, "An empirical evaluation of generic convolutional and
recurrent networks for sequence modeling" (arXiv:1803.01271). Block i (one per entry of
``model.conv_channels``, dilation d = 2^i, kernel k = ``model.kernel_size``):

    y = ReLU(Dropout(CausalConv_d(ReLU(Dropout(CausalConv_d(h))))))     (two convolutions)
    h' = ReLU(y + R(h)),   R = identity, or a 1 x 1 convolution when the width changes

A causal convolution pads (k - 1) d zeros on the left only, so position t sees rows
<= t. The receptive field is 1 + 2 (k - 1)(2^L - 1) rows for L blocks (29 for k = 3,
L = 3). Then pooling over time (``model.pooling``: last (auto), the position that has
seen the most rows | mean | attention) and ``[Linear -> ReLU -> Dropout]`` per ``model.fc``.
Differences from the paper: no weight normalisation; He normal initialisation (ReLU)
instead of N(0, 0.01); zero biases.
"""

from __future__ import annotations

from torch import Tensor, nn

from grace_rul.backbones.pooling import Pool, fc_stack
from grace_rul.backbones.registry import register, resolve_pooling
from grace_rul.config import ModelConfig
from grace_rul.model import DualTaskNet


class TemporalBlock(nn.Module):
    """One residual block of two dilated causal convolutions (Bai et al. 2018, Fig. 1b)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, dilation: int, dropout: float):
        super().__init__()
        pad = (kernel - 1) * dilation
        self.net = nn.Sequential(
            nn.ConstantPad1d((pad, 0), 0.0), nn.Conv1d(c_in, c_out, kernel, dilation=dilation),
            nn.ReLU(), nn.Dropout(dropout),
            nn.ConstantPad1d((pad, 0), 0.0), nn.Conv1d(c_out, c_out, kernel, dilation=dilation),
            nn.ReLU(), nn.Dropout(dropout),
        )  # fmt: skip
        self.residual = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        self.out = nn.ReLU()

    def forward(self, h: Tensor) -> Tensor:
        return self.out(self.net(h) + self.residual(h))


@register("tcn", ("last", "mean", "attention"))
class TCN(DualTaskNet):
    """Dilated causal residual convolutions over the window (a TCN) as a backbone."""

    def build_backbone(self, n_features: int, window: int, cfg: ModelConfig) -> int:
        blocks, channels = [], n_features
        for i, out in enumerate(cfg.conv_channels):
            blocks.append(TemporalBlock(channels, out, cfg.kernel_size, 2**i, cfg.dropout))
            channels = out
        self.blocks = nn.Sequential(*blocks)
        self.pool = Pool(resolve_pooling(cfg), channels)
        self.fc, width = fc_stack(channels, cfg.fc, cfg.dropout)
        return width

    def reset_backbone(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv1d, nn.Linear)) and m not in self.heads():
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def representation(self, x: Tensor) -> Tensor:
        h = self.blocks(x.transpose(1, 2)).transpose(1, 2)
        return self.fc(self.pool(h))
