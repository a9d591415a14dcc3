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

DEFAULT_ARCH = "cnn_bilstm_attention"

__all__ = [
    "AUTO",
    "BACKBONES",
    "DEFAULT_ARCH",
    "POOLINGS",
    "Pool",
    "backbone_class",
    "check_model",
    "register",
    "resolve_pooling",
]
