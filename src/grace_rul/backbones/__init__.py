"""Network architectures (``model.arch``): one file per architecture behind one registry.

Each is a :class:`~grace_rul.model.DualTaskNet` subclass with the same two heads, so
every balancer and stabiliser works on each. Import order registers them;
``BACKBONES`` maps names to classes (docs/architectures.md).
"""

from grace_rul.backbones import (  # noqa: F401  (registration)
    cnn_bilstm_attention,
    dcnn,
    tcn,
    transformer,
)
from grace_rul.backbones.pooling import POOLINGS, Pool
from grace_rul.backbones.registry import (
    AUTO,
    BACKBONES,
    backbone_class,
    check_model,
    register,
    resolve_pooling,
)
from grace_rul.config import ModelConfig
from grace_rul.model import DualTaskNet

DEFAULT_ARCH = "cnn_bilstm_attention"


def build_model(
    cfg: ModelConfig, n_features: int = 14, max_rul: float = 125.0, window: int = 30
) -> DualTaskNet:
    """The ``cfg.arch`` network for a config (14 informative sensors by default).

    ``window`` is the number of rows of an input window
    (:func:`grace_rul.data.windows.window_rows`).
    """
    return backbone_class(cfg.arch)(n_features, cfg, rul_scale=max_rul, window=window)


__all__ = [
    "AUTO",
    "BACKBONES",
    "DEFAULT_ARCH",
    "POOLINGS",
    "Pool",
    "backbone_class",
    "build_model",
    "check_model",
    "register",
    "resolve_pooling",
]
