"""Pooling over time and the fully connected stack that several backbones end with.

``model.pooling`` turns a sequence ``h`` (B, T, C) into one vector (B, C):

* ``mean``: the mean over the T positions;
* ``last``: the last position, ``h[:, -1]`` (for causal backbones, the one that has seen
  the whole window);
* ``attention``: a learned softmax weighting over time (Bahdanau-style attention pooling,
  as in Chen et al. 2021, RESS 207): ``a = softmax_t(h W + b)``, ``z = sum_t a_t h_t``,
  with ``W`` of shape (C, 1).
"""

from __future__ import annotations

from torch import Tensor, nn

POOLINGS: tuple[str, ...] = ("mean", "last", "attention")


class Pool(nn.Module):
    """One ``model.pooling`` method over the time axis of (B, T, C) sequences."""

    def __init__(self, kind: str, width: int) -> None:
        super().__init__()
        if kind not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)} (got {kind!r})")
        self.kind = kind
        self.score = nn.Linear(width, 1) if kind == "attention" else None

    def forward(self, h: Tensor) -> Tensor:
        if self.kind == "mean":
            return h.mean(dim=1)
        if self.kind == "last":
            return h[:, -1]
        weights = self.score(h).softmax(dim=1)  # (B, T, 1)
        return (weights * h).sum(dim=1)


def fc_stack(width: int, sizes: list[int], dropout: float) -> tuple[nn.Sequential, int]:
    """``Linear -> ReLU -> Dropout`` per entry of ``model.fc``; returns the stack and its width."""
    layers: list[nn.Module] = []
    for h in sizes:
        layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
        width = h
    return nn.Sequential(*layers), width
