"""One typed configuration for a GRACE run.

Values are resolved in one order: dataclass defaults (the SPEC's defaults and the
``paper`` model) < preset < YAML file (``--config``) < command-line flags.
The resolved config is written to every run directory as ``config.yaml`` and
stored inside every checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from grace_rul.data.cmapss import DATASETS
from grace_rul.errors import GraceError

PRECISIONS = ("auto", "32", "bf16", "16")
SELECTIONS = ("last", "all")
PROTOCOLS = ("val", "paper")
# How each protocol is labelled wherever its numbers are printed (SPEC §7).
PROTOCOL_LABELS = {"val": "validation-selected", "paper": "test-selected (optimistic)"}


@dataclass
class DataConfig:
    """The C-MAPSS data contract: subset, windows, label caps, split and scaling."""

    dataset: str = "FD001"
    data_dir: str | None = None  # None: the copy bundled inside the package
    window: int = 30
    max_rul: int = 125
    critical_rul: int = 30  # health class 2 when RUL <= this
    degrading_rul: int = 80  # health class 1 when critical < RUL <= this, else 0
    val_fraction: float = 0.2  # share of training units held out (whole engines)
    val_cuts: int = 10  # truncation points per validation unit for the test-like score
    normalization: str = "auto"  # auto | global | regime ("auto": regime for FD002/FD004)


@dataclass
class ModelConfig:
    """Dual-task network shape (SPEC §2); the defaults are the ``paper`` preset."""

    conv_channels: list[int] = field(default_factory=lambda: [32, 64, 32])
    kernel_size: int = 3
    lstm_hidden: int = 256
    lstm_layers: int = 2
    attn_heads: int = 4
    fc: list[int] = field(default_factory=lambda: [256, 128])
    dropout: float = 0.3


@dataclass
class TrainConfig:
    """Optimiser, schedules, stabilisers and protocol (SPEC §5)."""

    epochs: int = 500
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_epochs: int = 10
    plateau_factor: float = 0.5
    plateau_patience: int = 30
    min_lr: float = 5e-6
    early_stop_patience: int = 80
    clip: float = 1.0
    clip_mode: str = "norm"  # norm (joint L2 over all parameters) | value
    ema_decay: float = 0.999
    ema_warmup: bool = False
    precision: str = "auto"  # auto | 32 | bf16 | 16 (fp16 needs CUDA)
    deterministic: bool = False
    max_bad_steps: int = 10  # stop after this many consecutive non-finite steps
    spike_factor: float = 3.0  # loss spike when loss > factor x running level
    grad_stats_every: int = 25  # per-task gradient stats every N steps for loss-only balancers
    protocol: str = "val"  # val: select on validation units | paper: select on test (optimistic)
    select: str = "last"  # last: truncated validation units, last window | all: every window
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # torch intra-op threads; 0 leaves torch's default


@dataclass
class BalancerConfig:
    """Which multi-task balancer weighs the two task losses, and its options."""

    name: str = "gaba"
    grad_source: str = "params"  # params: shared parameters | representation (approximation)
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class Config:
    """Everything that defines one training run."""

    preset: str = "paper"
    seed: int = 42
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    balancer: BalancerConfig = field(default_factory=BalancerConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


PRESETS: dict[str, dict[str, Any]] = {
    # The network of the write-up, SPEC defaults for training.
    "paper": {},
    # A CPU-sized network that trains FD001 to a useful result in a few minutes.
    "small": {
        "model": {
            "conv_channels": [16, 32, 16],
            "lstm_hidden": 48,
            "lstm_layers": 1,
            "attn_heads": 2,
            "fc": [64, 32],
            "dropout": 0.1,
        },
        "train": {
            "epochs": 40,
            "warmup_epochs": 3,
            "plateau_patience": 8,
            "early_stop_patience": 15,
            "ema_warmup": True,  # short runs: let the EMA follow the early weights
        },
    },
    # Seconds per epoch; for tests and smoke runs, not for results.
    "tiny": {
        "model": {
            "conv_channels": [8, 8, 8],
            "lstm_hidden": 16,
            "lstm_layers": 1,
            "attn_heads": 2,
            "fc": [16, 8],
            "dropout": 0.0,
        },
        "train": {"epochs": 2, "warmup_epochs": 1, "batch_size": 512, "ema_warmup": True},
    },
}


def _merge(target: Any, updates: dict[str, Any], where: str) -> None:
    """Apply nested ``updates`` onto dataclass ``target`` in place, refusing unknown keys."""
    if not isinstance(updates, dict):
        raise GraceError(f"config: '{where or 'top level'}' must be a mapping, got {updates!r}")
    known = {f.name: f for f in fields(target)}
    for key, value in updates.items():
        name = f"{where}.{key}" if where else str(key)
        if key not in known:
            raise GraceError(f"config: unknown key '{name}' (known: {', '.join(known)})")
        current = getattr(target, key)
        if dataclasses.is_dataclass(current):
            _merge(current, value, name)
        elif isinstance(current, dict):
            if not isinstance(value, dict):
                raise GraceError(f"config: '{name}' must be a mapping")
            current.update(value)
        else:
            setattr(target, key, _coerce(current, value, name))


def _coerce(current: Any, value: Any, name: str) -> Any:
    """Convert ``value`` to the type of the default ``current`` (YAML and flags give strings)."""
    if value is None:
        return None
    try:
        if isinstance(current, bool):
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if isinstance(current, int):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if isinstance(current, float):
            return float(value)
        if isinstance(current, list):
            if not isinstance(value, (list, tuple)):
                raise ValueError(value)
            kind = type(current[0]) if current else None
            return [kind(v) if kind else v for v in value]
        if isinstance(current, str) or current is None:
            return str(value)
    except (TypeError, ValueError):
        raise GraceError(f"config: '{name}' has an invalid value {value!r}") from None
    return value


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into a nested dict (one-line errors on failure)."""
    p = Path(path)
    if not p.is_file():
        raise GraceError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise GraceError(f"config file {p} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise GraceError(f"config file {p} must hold a mapping at the top level")
    return data


def resolve_config(
    preset: str | None = None,
    yaml_overrides: dict[str, Any] | None = None,
    overrides: dict[str, Any] | None = None,
) -> Config:
    """Build a validated :class:`Config`: defaults < preset < YAML < flag overrides.

    ``overrides`` are nested dicts like ``{"train": {"epochs": 3}}``; ``None`` values
    are ignored so unset CLI flags never clobber the YAML.
    """
    yaml_overrides = dict(yaml_overrides or {})
    name = preset or yaml_overrides.pop("preset", None) or "paper"
    yaml_overrides.pop("preset", None)
    if name not in PRESETS:
        raise GraceError(f"unknown preset '{name}' (choose from: {', '.join(PRESETS)})")
    cfg = Config(preset=name)
    _merge(cfg, PRESETS[name], "")
    _merge(cfg, yaml_overrides, "")
    _merge(cfg, _drop_none(overrides or {}), "")
    validate(cfg)
    return cfg


def config_from_dict(data: dict[str, Any]) -> Config:
    """Rebuild a config saved by :meth:`Config.to_dict` (checkpoints, run dirs)."""
    data = dict(data)
    cfg = Config(preset=data.pop("preset", "paper"))
    # Start from bare defaults: the saved dict is complete, presets must not leak in.
    _merge(cfg, data, "")
    validate(cfg)
    return cfg


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            sub = _drop_none(v)
            if sub:
                out[k] = sub
        elif v is not None:
            out[k] = v
    return out


def validate(cfg: Config) -> None:
    """Refuse settings that cannot train, with one line naming the setting."""
    d, m, t, b = cfg.data, cfg.model, cfg.train, cfg.balancer

    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise GraceError(f"invalid setting: {msg}")

    need(d.dataset in DATASETS, f"data.dataset '{d.dataset}' is not one of {', '.join(DATASETS)}")
    need(d.window >= 1, f"data.window must be >= 1 (got {d.window})")
    need(d.max_rul > 0, f"data.max_rul must be > 0 (got {d.max_rul})")
    need(
        0 < d.critical_rul < d.degrading_rul,
        f"health thresholds need 0 < critical_rul < degrading_rul "
        f"(got {d.critical_rul}, {d.degrading_rul})",
    )
    need(0 < d.val_fraction < 1, f"data.val_fraction must be in (0, 1) (got {d.val_fraction})")
    need(d.val_cuts >= 1, f"data.val_cuts must be >= 1 (got {d.val_cuts})")
    need(
        d.normalization in ("auto", "global", "regime"),
        "data.normalization must be auto, global or regime",
    )
    need(
        len(m.conv_channels) >= 1 and all(c > 0 for c in m.conv_channels),
        "model.conv_channels must be positive",
    )
    need(m.kernel_size >= 1 and m.kernel_size % 2 == 1, "model.kernel_size must be odd and >= 1")
    need(
        m.lstm_hidden > 0 and m.lstm_layers >= 1,
        "model.lstm_hidden and model.lstm_layers must be >= 1",
    )
    need(
        m.attn_heads >= 1 and (2 * m.lstm_hidden) % m.attn_heads == 0,
        f"model.attn_heads ({m.attn_heads}) must divide 2 x lstm_hidden ({2 * m.lstm_hidden})",
    )
    need(all(h > 0 for h in m.fc), "model.fc sizes must be positive")
    need(0 <= m.dropout < 1, f"model.dropout must be in [0, 1) (got {m.dropout})")
    need(t.epochs >= 1, f"train.epochs must be >= 1 (got {t.epochs})")
    need(t.batch_size >= 1, f"train.batch_size must be >= 1 (got {t.batch_size})")
    need(math.isfinite(t.lr) and t.lr > 0, f"train.lr must be > 0 (got {t.lr})")
    need(t.weight_decay >= 0, f"train.weight_decay must be >= 0 (got {t.weight_decay})")
    need(
        len(t.betas) == 2 and all(0 <= x < 1 for x in t.betas),
        "train.betas must be two values in [0, 1)",
    )
    need(t.warmup_epochs >= 0, "train.warmup_epochs must be >= 0")
    need(0 < t.plateau_factor < 1, "train.plateau_factor must be in (0, 1)")
    need(
        t.plateau_patience >= 0 and t.early_stop_patience >= 1,
        "patience values must be >= 0 / >= 1",
    )
    need(0 <= t.min_lr <= t.lr, "train.min_lr must be in [0, lr]")
    need(t.clip > 0, f"train.clip must be > 0 (got {t.clip})")
    need(
        t.clip_mode in ("norm", "value"),
        f"train.clip_mode must be norm or value (got {t.clip_mode})",
    )
    need(0 <= t.ema_decay < 1, f"train.ema_decay must be in [0, 1) (got {t.ema_decay})")
    need(t.precision in PRECISIONS, f"train.precision must be one of {', '.join(PRECISIONS)}")
    need(t.max_bad_steps >= 1, "train.max_bad_steps must be >= 1")
    need(t.spike_factor > 1, "train.spike_factor must be > 1")
    need(t.grad_stats_every >= 1, "train.grad_stats_every must be >= 1")
    need(t.protocol in PROTOCOLS, f"train.protocol must be one of {', '.join(PROTOCOLS)}")
    need(t.select in SELECTIONS, f"train.select must be one of {', '.join(SELECTIONS)}")
    need(t.device in ("auto", "cpu", "cuda"), "train.device must be auto, cpu or cuda")
    need(t.threads >= 0, "train.threads must be >= 0")
    need(
        b.grad_source in ("params", "representation"),
        "balancer.grad_source must be params or representation",
    )
    from grace_rul.balancers import check_balancer  # late: the registry imports torch

    check_balancer(b.name, b.options)
