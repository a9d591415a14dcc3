"""``dcnn``: the deep convolutional network of Li, Ding & Sun 2018 (RESS 172, 1-11).

"Remaining useful life estimation in prognostics using deep convolution neural
networks", as published: every convolution runs along time only (kernel k x 1 over the
window x sensor plane), so each sensor is filtered by the same kernels and the sensors
meet only in the fully connected layer.

    x (B, W, F) -> (B, 1, W, F)
     -> 4 x [Conv2d(10 filters, kernel 10 x 1, 'same' padding) -> tanh]   (B, 10, W, F)
     -> Conv2d(1 filter, kernel 3 x 1, 'same') -> tanh                    (B, 1, W, F)
     -> flatten                                                           (B, W * F)
     -> Dropout(0.5) -> Linear(W * F -> 100) -> tanh                      = z (B, 100)

The sizes are the paper's and fixed (``model.conv_channels``, ``kernel_size``, ``fc`` and
``dropout`` do not apply); only ``model.pooling=auto`` (``flatten``) is accepted. Xavier
normal weights and zero biases, as in the paper; the heads are GRACE's (Xavier uniform).
About 45 k parameters at W = 30 and 14 sensors.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from grace_rul.backbones.registry import register
from grace_rul.config import ModelConfig
from grace_rul.model import DualTaskNet

FILTERS, KERNEL, LAYERS, LAST_KERNEL, HIDDEN, DROPOUT = 10, 10, 4, 3, 100, 0.5


def _same(kernel: int) -> list[nn.Module]:
    """Zero padding along time that keeps W rows: PyTorch's ``padding='same'`` split
    (``(k - 1) // 2`` before, the rest after), done explicitly because the built-in one
    warns and copies the input for even kernels."""
    before = (kernel - 1) // 2
    return [nn.ZeroPad2d((0, 0, before, kernel - 1 - before))]


@register("dcnn", ("flatten",))
class DCNN(DualTaskNet):
    """Li, Ding & Sun's 2018 DCNN as a backbone: time-only convolutions, flatten, FC 100."""

    def build_backbone(self, n_features: int, window: int, cfg: ModelConfig) -> int:
        layers: list[nn.Module] = []
        channels = 1
        for _ in range(LAYERS):
            layers += [*_same(KERNEL), nn.Conv2d(channels, FILTERS, (KERNEL, 1)), nn.Tanh()]
            channels = FILTERS
        layers += [*_same(LAST_KERNEL), nn.Conv2d(channels, 1, (LAST_KERNEL, 1)), nn.Tanh()]
        self.conv = nn.Sequential(*layers)
        self.fc = nn.Sequential(
            nn.Flatten(), nn.Dropout(DROPOUT), nn.Linear(window * n_features, HIDDEN), nn.Tanh()
        )
        return HIDDEN

    def reset_backbone(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)) and m not in self.heads():
                nn.init.xavier_normal_(m.weight)
                nn.init.zeros_(m.bias)

    def representation(self, x: Tensor) -> Tensor:
        # Channels-last activations after the first layer take oneDNN's faster kernels for
        # these 10-channel k x 1 convolutions (about 2x on an AVX2 CPU); the weights and
        # the result are unchanged.
        h = self.conv[:3](x.unsqueeze(1)).contiguous(memory_format=torch.channels_last)
        return self.fc(self.conv[3:](h))
