"""Name -> architecture registry (``model.arch``), and the checks run before training starts."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from grace_rul.errors import GraceError

if TYPE_CHECKING:
    from grace_rul.config import ModelConfig
    from grace_rul.model import DualTaskNet

BACKBONES: dict[str, type[DualTaskNet]] = {}
Net = TypeVar("Net", bound="type[DualTaskNet]")
AUTO = "auto"  # model.pooling: the architecture's own pooling (the first of its poolings)


def register(name: str, poolings: tuple[str, ...]) -> Callable[[Net], Net]:
    """Class decorator: make a :class:`~grace_rul.model.DualTaskNet` subclass ``model.arch=name``.

    ``poolings`` are the ``model.pooling`` values it supports; the first is what ``auto``
    means for it.
    """

    def wrap(cls: Net) -> Net:
        if name in BACKBONES:
            raise RuntimeError(f"architecture '{name}' registered twice")
        cls.arch, cls.poolings = name, tuple(poolings)
        BACKBONES[name] = cls
        return cls

    return wrap


def backbone_class(name: str) -> type[DualTaskNet]:
    """The registered class of ``model.arch=name`` (an unknown name lists the known ones)."""
    if name not in BACKBONES:
        raise GraceError(
            f"invalid setting: unknown model.arch '{name}' "
            f"(choose from: {', '.join(sorted(BACKBONES))})"
        )
    return BACKBONES[name]


def resolve_pooling(cfg: ModelConfig) -> str:
    """``model.pooling`` with ``auto`` replaced by the architecture's own pooling."""
    cls = backbone_class(cfg.arch)
    return cls.poolings[0] if cfg.pooling == AUTO else cfg.pooling


def check_model(cfg: ModelConfig) -> None:
    """Refuse an unknown architecture, a pooling it does not support, or its own bad sizes."""
    cls = backbone_class(cfg.arch)
    if cfg.pooling != AUTO and cfg.pooling not in cls.poolings:
        raise GraceError(
            f"invalid setting: model.pooling={cfg.pooling} is not supported by "
            f"model.arch={cfg.arch} (choose from: {', '.join((AUTO, *cls.poolings))})"
        )
    problem = cls.check(cfg)
    if problem:
        raise GraceError(f"invalid setting: {problem}")
