"""Name -> balancer class registry, and the checks run before training starts."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from grace_rul.errors import GraceError

if TYPE_CHECKING:
    from grace_rul.balancers.base import Balancer

BALANCERS: dict[str, type[Balancer]] = {}
Cls = TypeVar("Cls", bound="type[Balancer]")


def register(name: str) -> Callable[[Cls], Cls]:
    """Class decorator: make a :class:`Balancer` selectable as ``--balancer name``."""

    def wrap(cls: Cls) -> Cls:
        if name in BALANCERS:
            raise RuntimeError(f"balancer '{name}' registered twice")
        cls.name = name
        BALANCERS[name] = cls
        return cls

    return wrap


def build_balancer(
    name: str, options: dict[str, Any] | None = None, num_tasks: int = 2
) -> Balancer:
    """Instantiate a registered balancer; bad names or options raise :class:`GraceError`."""
    if name not in BALANCERS:
        raise GraceError(f"unknown balancer '{name}' (choose from: {', '.join(sorted(BALANCERS))})")
    try:
        return BALANCERS[name](num_tasks=num_tasks, **(options or {}))
    except TypeError as exc:
        raise GraceError(f"balancer '{name}': bad options {options!r} ({exc})") from None
    except ValueError as exc:
        raise GraceError(f"balancer '{name}': {exc}") from None


def check_balancer(name: str, options: dict[str, Any] | None = None, num_tasks: int = 2) -> None:
    """Validate a balancer name and its options without keeping the instance."""
    build_balancer(name, options, num_tasks)
