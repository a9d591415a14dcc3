"""From layered settings to a checked :class:`~grace_rul.config.Config`.

:mod:`grace_rul.config` is a leaf: plain settings and their plain checks. What needs the
implementations is done here: a dataset file's own ``window``/``max_rul``
(:func:`grace_rul.data.datasets.dataset_defaults`), a balancer's own training defaults
(its class's ``train_defaults``, e.g. GRACE's weight-decay schedule), and the checks of
an architecture and a balancer against their registries.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any

from grace_rul.backbones import check_model
from grace_rul.balancers import BALANCERS, check_balancer
from grace_rul.config import (
    DEFAULT_PRESET,
    PRESETS,
    Config,
    TrainConfig,
    config_diff,
    dataset_name,
    is_dataset_file,
    merge_into,
    merge_overrides,
)
from grace_rul.data.datasets import dataset_defaults
from grace_rul.errors import GraceError

if TYPE_CHECKING:
    from grace_rul.rundir import RunDir

__all__ = ["check_config", "config_from_dict", "resolve_config"]


def resolve_config(
    preset: str | None = None,
    yaml_overrides: dict[str, Any] | None = None,
    overrides: dict[str, Any] | None = None,
) -> Config:
    """Build a validated :class:`Config`: defaults < preset < YAML < overrides.

    Both override layers are nested dicts like ``{"train": {"epochs": 3}}``. A balancer's
    ``train_defaults`` (``grace``: GRACE's adaptive weight-decay schedule) apply where the
    configuration leaves those ``train.*`` keys at their defaults.
    """
    layers = merge_overrides(yaml_overrides, overrides)
    name = preset or layers.pop("preset", None) or DEFAULT_PRESET
    layers.pop("preset", None)
    if name not in PRESETS:
        raise GraceError(f"unknown preset '{name}' (choose from: {', '.join(PRESETS)})")
    cfg = Config(preset=name)
    merge_into(cfg, PRESETS[name], "")
    merge_into(cfg, layers, "")
    cfg.data.dataset = dataset_name(cfg.data.dataset)
    if is_dataset_file(cfg.data.dataset):  # absolute: runs are evaluated from anywhere
        cfg.data.dataset = str(Path(cfg.data.dataset).expanduser().absolute())
    explicit = layers.get("data") or {}
    for key, value in dataset_defaults(cfg.data.dataset).items():
        if key not in explicit:
            setattr(cfg.data, key, value)
    defaults = TrainConfig()
    balancer = BALANCERS.get(cfg.balancer.name)  # an unknown name is refused by check_config
    for key, value in (balancer.train_defaults if balancer else {}).items():
        if getattr(cfg.train, key) == getattr(defaults, key):
            setattr(cfg.train, key, copy.deepcopy(value))
    check_config(cfg)
    return cfg


def config_from_dict(data: dict[str, Any]) -> Config:
    """Rebuild a config saved by :meth:`Config.to_dict` (checkpoints, run dirs)."""
    data = dict(data)
    cfg = Config(preset=data.pop("preset", "paper"))
    # Start from bare defaults: the saved dict is complete, presets must not leak in.
    merge_into(cfg, data, "")
    check_config(cfg)
    return cfg


def check_config(cfg: Config) -> None:
    """Refuse settings that cannot train, with one line naming the setting.

    Every section's own checks (:meth:`Config.validate`), then the architecture's
    (unknown arch, unsupported pooling, its sizes) and the balancer's name and options.
    """
    cfg.validate()
    check_model(cfg.model)
    check_balancer(cfg.balancer.name, cfg.balancer.options)


# Settings a resume may change: extending a run to more epochs.
EXTENDABLE_KEYS = ("train.epochs",)


def check_resumable(run: RunDir, cfg: Config) -> None:
    """Refuse to resume with settings that differ from the saved run (naming the keys)."""
    try:
        old = config_from_dict(run.read_config())
    except GraceError as exc:
        raise GraceError(f"cannot resume: {exc}") from None
    extendable = EXTENDABLE_KEYS if cfg.train.schedule == "plateau" else ()
    diff = [k for k in config_diff(old.to_dict(), cfg.to_dict()) if k not in extendable]
    if diff:
        raise GraceError(
            f"cannot resume {run.path}: settings differ from the saved run: {', '.join(diff)}"
        )
