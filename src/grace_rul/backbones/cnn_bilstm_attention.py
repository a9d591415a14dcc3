"""``cnn_bilstm_attention``: the write-up's Conv1d -> BiLSTM -> self-attention network (default).

GRACE's own backbone (docs/design.md §2), in the family of Al-Dulaimi et al. 2019
(Hybrid Deep Neural Network, Eng. Appl. AI 79) and Liu et al. 2020 (attention-based CNN-LSTM):

    x (B, W, F)
     -> [Conv1d(kernel_size, 'same') -> ReLU] per model.conv_channels    (B, W, C)
     -> BiLSTM, model.lstm_hidden per direction, model.lstm_layers        (B, W, 2H)
     -> h = LayerNorm(h + MultiheadAttention(h, h, h)), model.attn_heads  (B, W, 2H)
     -> pooling over time (model.pooling: mean (auto) | last | attention) (B, 2H)
     -> [Linear -> ReLU -> Dropout] per model.fc                          = z

Initialisation (:meth:`CnnBiLstmAttention.reset_parameters`, in this order so a seed
gives the weights of every earlier version): He (Kaiming) normal for the convolutions
and the ReLU fully connected layers, Xavier uniform for the two heads and the attention
projections, orthogonal recurrent (hidden-to-hidden, per gate) and Xavier input-to-hidden
LSTM weights, zero biases except the LSTM forget-gate bias, which starts at
``model.forget_bias`` (1, the write-up's) - set in ``bias_ih`` with ``bias_hh`` 0, since
PyTorch adds the two.
"""

from __future__ import annotations

from torch import Tensor, nn

from grace_rul.backbones.pooling import POOLINGS, Pool, fc_stack
from grace_rul.backbones.registry import register, resolve_pooling
from grace_rul.config import ModelConfig
from grace_rul.model import DualTaskNet


@register("cnn_bilstm_attention", POOLINGS)
class CnnBiLstmAttention(DualTaskNet):
    """Shared Conv1d-BiLSTM-attention backbone (the write-up's network, the default)."""

    def build_backbone(self, n_features: int, window: int, cfg: ModelConfig) -> int:
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
        self.pool = Pool(resolve_pooling(cfg), width)
        self.fc, width = fc_stack(width, cfg.fc, cfg.dropout)
        return width

    @classmethod
    def check(cls, cfg: ModelConfig) -> str | None:
        if (2 * cfg.lstm_hidden) % cfg.attn_heads:
            return (
                f"model.attn_heads ({cfg.attn_heads}) must divide 2 x lstm_hidden "
                f"({2 * cfg.lstm_hidden})"
            )
        return None

    def reset_parameters(self) -> None:
        # One pass in the order of every earlier version (heads between the He pass and the
        # attention), so a seed gives the same initial weights.
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

    def representation(self, x: Tensor) -> Tensor:
        h = self.conv(x.transpose(1, 2)).transpose(1, 2)
        h, _ = self.lstm(h)
        a, _ = self.attention(h, h, h, need_weights=False)
        h = self.norm(h + a)
        return self.fc(self.pool(h))
