"""One typed configuration for a GRACE run, and the command line that sets it.

Values are resolved in one order: dataclass defaults (the write-up's training defaults and
the ``paper`` model) < preset < YAML file (``--config``) < ``--set key=value`` and the named
flags that alias the most used keys. Every key is reachable as ``--set section.key=value``
(``--set balancer.options.beta=0.95``); values are parsed as YAML scalars or lists and
coerced to the type of the default, so ``--set train.lr=5e-4`` is a float and an unknown
key is refused with the nearest known names. A key added to a dataclass below is a setting
of ``grace train`` and ``grace sweep`` without touching the CLI.

:class:`Config` is what a run *is*: it is written to every run directory as
``config.yaml``, stored in every checkpoint and compared on resume. :class:`Execution`
is how it runs (device, threads, data directory, progress output): never saved, free to
change between a run and its resume.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from grace_rul.balancers.engine import GRAD_SOURCES
from grace_rul.balancers.grace import GRACE_WEIGHT_DECAY_SCHEDULE
from grace_rul.bounded import read_yaml_file
from grace_rul.data.cmapss import DATASETS, DataConfig, dataset_name, is_dataset_file
from grace_rul.errors import GraceError, brief
from grace_rul.metrics import PROTOCOL_LABELS, PROTOCOLS, SELECTIONS
from grace_rul.stabilisers.clipping import MODES as CLIP_MODES
from grace_rul.stabilisers.precision import MODES as PRECISIONS

__all__ = [
    "DATASETS",
    "PRESETS",
    "PROTOCOL_LABELS",
    "BalancerConfig",
    "Config",
    "DataConfig",
    "Execution",
    "ModelConfig",
    "TrainConfig",
    "config_from_dict",
    "load_yaml",
    "resolve_config",
]
DEVICES = ("auto", "cpu", "cuda")
SCHEDULES = ("plateau", "cosine", "onecycle")  # train.schedule
SECTIONS = ("data", "model", "train", "balancer")  # the mapping-valued top-level keys
# Network size limits (validate): far above every preset, far below what exhausts memory.
MAX_LAYERS = 16
MAX_WIDTH = 4096
MAX_KERNEL = 99


@dataclass
class ModelConfig:
    """Dual-task network shape (docs/design.md §2, docs/architectures.md).

    The defaults are the ``paper`` preset. ``arch`` picks the backbone
    (:mod:`grace_rul.backbones`); each architecture reads the keys its docstring names.
    """

    arch: str = "cnn_bilstm_attention"  # cnn_bilstm_attention | dcnn | transformer | tcn
    pooling: str = "auto"  # auto (the arch's own) | mean | last | attention (where supported)
    conv_channels: list[int] = field(default_factory=lambda: [32, 64, 32])
    kernel_size: int = 3
    lstm_hidden: int = 256
    lstm_layers: int = 2
    attn_heads: int = 4
    fc: list[int] = field(default_factory=lambda: [256, 128])
    dropout: float = 0.3
    forget_bias: float = 1.0  # initial LSTM forget-gate bias (the write-up: 1)
    # transformer only (attn_heads and fc are shared with cnn_bilstm_attention; tcn reads
    # conv_channels and kernel_size as its blocks' widths and kernel)
    d_model: int = 64  # token width
    depth: int = 2  # encoder layers
    ff: int = 128  # feed-forward width of an encoder layer
    positions: str = "learned"  # learned | sinusoidal


@dataclass
class TrainConfig:
    """Optimiser, schedules, stabilisers and protocol (docs/design.md §5)."""

    epochs: int = 500
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    schedule: str = "plateau"  # plateau | cosine | onecycle (trainer docstring)
    warmup_epochs: int = 10  # plateau and cosine; onecycle warms up itself
    plateau_factor: float = 0.5
    plateau_patience: int = 30
    min_lr: float = 5e-6
    early_stop_patience: int = 80
    weight_decay_schedule: list[list[float]] = field(default_factory=list)  # [[epoch, factor]]
    clip: float = 1.0
    clip_mode: str = "norm"  # norm (joint L2 over the model's parameters) | value
    swa_start: int = 0  # SWA: average the weights once per epoch from this epoch on; 0 = off
    ema_decay: float = 0.999
    ema_warmup: bool = False
    precision: str = "auto"  # auto | 32 | bf16 | 16 (fp16 needs CUDA)
    deterministic: bool = False
    max_bad_steps: int = 10  # stop after this many consecutive non-finite steps
    spike_factor: float = 3.0  # loss spike when loss > factor x running level
    grad_stats_every: int = 25  # per-task gradient stats every N steps for loss-only balancers
    protocol: str = "val"  # val: select on validation units | paper: select on test (optimistic)
    select: str = "last"  # last: truncated validation units, last window | all: every window


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


@dataclass
class Execution:
    """How a run executes, not what it is: never saved, free to differ on resume."""

    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # torch intra-op threads; 0 leaves torch's default
    data_dir: str | None = None  # the twelve C-MAPSS *.txt.gz files; None: the bundled copy
    progress: bool | None = None  # a bar per epoch; None: when stderr is a terminal
    quiet: bool = False  # no per-epoch lines or event echo on stderr (events.log still written)

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise GraceError(f"device must be one of {', '.join(DEVICES)} (got {self.device!r})")
        if self.threads < 0:
            raise GraceError(f"threads must be >= 0 (got {self.threads})")


# A CPU-sized network that trains FD001 to a useful result in a few minutes.
_SMALL: dict[str, Any] = {
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
        # 34 finished small/default runs never improved after 5 stale epochs, so 8 selects
        # the same epoch in every one and saves ~27 % of the epochs (benchmarks/patience.py).
        "early_stop_patience": 8,
        "ema_warmup": True,  # short runs: let the EMA follow the early weights
    },
}

PRESETS: dict[str, dict[str, Any]] = {
    # The network of the write-up, the write-up's training defaults (docs/design.md §5).
    "paper": {},
    "small": _SMALL,
    # The default recipe: `small` over 40-cycle windows, chosen on validation scores only
    # (README, Accuracy: FD001 seed 42, truncated validation RMSE 15.86 with 30-cycle
    # windows, 14.36 with 40, 16.71 with 50). A dataset YAML's own window still wins.
    "default": {**_SMALL, "data": {"window": 40}},
    # Seconds per epoch; for tests and smoke runs, not for results.
    "tiny": {
        "model": {
            "conv_channels": [8, 8, 8],
            "lstm_hidden": 16,
            "lstm_layers": 1,
            "attn_heads": 2,
            "fc": [16, 8],
            "dropout": 0.0,
            "d_model": 16,
            "depth": 1,
            "ff": 32,
        },
        "train": {"epochs": 2, "warmup_epochs": 1, "batch_size": 512, "ema_warmup": True},
    },
}


# What `grace train` trains without --preset: the recipe with the best validation score per
# CPU-minute measured so far (README, Accuracy). `paper` stays the write-up's exact settings.
DEFAULT_PRESET = "default"


def config_keys(cfg: Any | None = None, where: str = "") -> list[str]:
    """Every dotted key of the config (``train.lr``, ``balancer.options``, ...)."""
    cfg = Config() if cfg is None else cfg
    keys: list[str] = []
    for f in fields(cfg):
        name = f"{where}.{f.name}" if where else f.name
        value = getattr(cfg, f.name)
        keys += config_keys(value, name) if dataclasses.is_dataclass(value) else [name]
    return keys


def _merge(target: Any, updates: dict[str, Any], where: str) -> None:
    """Apply nested ``updates`` onto dataclass ``target`` in place, refusing unknown keys.

    ``None`` values are skipped, so unset command-line flags never clobber the YAML.
    """
    if not isinstance(updates, dict):
        raise GraceError(
            f"config: '{where or 'top level'}' must be a mapping, got {brief(updates)}"
        )
    known = {f.name for f in fields(target)}
    for key, value in updates.items():
        name = f"{where}.{key}" if where else str(key)
        if key not in known:
            near = difflib.get_close_matches(name, config_keys(), n=4, cutoff=0.6)
            hint = f"did you mean: {', '.join(near)}" if near else f"known: {', '.join(known)}"
            raise GraceError(f"config: unknown key '{name}' ({hint})")
        if value is None:
            continue
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
    try:
        if isinstance(current, bool):
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            if not isinstance(value, (bool, int)):
                raise ValueError(value)
            return bool(value)
        if isinstance(current, int):
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(value)
        if isinstance(current, float):
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if isinstance(current, list):
            if not isinstance(value, (list, tuple)):
                raise ValueError(value)
            kind = type(current[0]) if current else None
            return [kind(v) if kind else v for v in value]
        if isinstance(current, str) or current is None:
            if isinstance(value, (dict, list)):
                raise ValueError(value)
            return str(value)
    except (TypeError, ValueError):
        raise GraceError(f"config: '{name}' has an invalid value {brief(value)}") from None
    return value


def load_yaml(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """Read a YAML file (``what`` names it in errors) into a nested dict (one-line errors)."""
    p = Path(path)
    if not p.is_file():
        raise GraceError(f"{what} not found: {p}")
    data = read_yaml_file(p, f"{what} {p}") or {}  # bounded: an alias bomb is refused
    if not isinstance(data, dict):
        raise GraceError(f"{what} {p} must hold a mapping at the top level")
    return data


def merge_overrides(*layers: dict[str, Any] | None) -> dict[str, Any]:
    """Deep-merge nested override dicts, later layers winning; ``None`` values are dropped."""
    out: dict[str, Any] = {}
    for layer in layers:
        for key, value in (layer or {}).items():
            if key in SECTIONS and value is not None and not isinstance(value, dict):
                # `train: 5` would otherwise vanish under a later `--set train.x=...`
                raise GraceError(f"config: '{key}' must be a mapping, got {brief(value)}")
            if isinstance(value, dict):
                merged = merge_overrides(out.get(key) if isinstance(out.get(key), dict) else {},
                                         value)  # fmt: skip
                if merged:
                    out[key] = merged
            elif value is not None:
                out[key] = value
    return out


def resolve_config(
    preset: str | None = None,
    yaml_overrides: dict[str, Any] | None = None,
    overrides: dict[str, Any] | None = None,
) -> Config:
    """Build a validated :class:`Config`: defaults < preset < YAML < overrides.

    Both override layers are nested dicts like ``{"train": {"epochs": 3}}``. The
    ``grace`` balancer brings GRACE's adaptive weight-decay schedule unless the
    configuration sets ``train.weight_decay_schedule`` itself.
    """
    layers = merge_overrides(yaml_overrides, overrides)
    name = preset or layers.pop("preset", None) or DEFAULT_PRESET
    layers.pop("preset", None)
    if name not in PRESETS:
        raise GraceError(f"unknown preset '{name}' (choose from: {', '.join(PRESETS)})")
    cfg = Config(preset=name)
    _merge(cfg, PRESETS[name], "")
    _merge(cfg, layers, "")
    cfg.data.dataset = dataset_name(cfg.data.dataset)
    if is_dataset_file(cfg.data.dataset):  # absolute: runs are evaluated from anywhere
        cfg.data.dataset = str(Path(cfg.data.dataset).expanduser().absolute())
    _dataset_defaults(cfg, layers.get("data") or {})
    if cfg.balancer.name == "grace" and not cfg.train.weight_decay_schedule:
        cfg.train.weight_decay_schedule = [list(m) for m in GRACE_WEIGHT_DECAY_SCHEDULE]
    validate(cfg)
    return cfg


def _dataset_defaults(cfg: Config, explicit: dict[str, Any]) -> None:
    """A dataset YAML's ``window`` / ``max_rul`` where ``data.*`` does not set them itself."""
    from grace_rul.data.datasets import dataset_defaults

    for key, value in dataset_defaults(cfg.data.dataset).items():
        if key not in explicit:
            setattr(cfg.data, key, value)


def config_from_dict(data: dict[str, Any]) -> Config:
    """Rebuild a config saved by :meth:`Config.to_dict` (checkpoints, run dirs).

    Execution settings that 0.1.0 saved with the run (``data.data_dir``,
    ``train.device``, ``train.threads``) are dropped.
    """
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for section, key in (("data", "data_dir"), ("train", "device"), ("train", "threads")):
        if isinstance(data.get(section), dict):
            data[section].pop(key, None)
    cfg = Config(preset=data.pop("preset", "paper"))
    # Start from bare defaults: the saved dict is complete, presets must not leak in.
    _merge(cfg, data, "")
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Refuse settings that cannot train, with one line naming the setting."""
    m, t, b = cfg.model, cfg.train, cfg.balancer
    cfg.data.validate()

    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise GraceError(f"invalid setting: {msg}")

    need(
        len(m.conv_channels) >= 1 and all(c > 0 for c in m.conv_channels),
        "model.conv_channels must be positive",
    )
    need(m.kernel_size >= 1 and m.kernel_size % 2 == 1, "model.kernel_size must be odd and >= 1")
    need(
        m.lstm_hidden > 0 and m.lstm_layers >= 1,
        "model.lstm_hidden and model.lstm_layers must be >= 1",
    )
    need(m.attn_heads >= 1, f"model.attn_heads must be >= 1 (got {m.attn_heads})")
    need(
        m.d_model >= 1 and m.depth >= 1 and m.ff >= 1,
        "model.d_model, model.depth and model.ff must be >= 1",
    )
    need(all(h > 0 for h in m.fc), "model.fc sizes must be positive")
    # Upper bounds, so that a config (or a shared model file) cannot ask for a network
    # that allocates for minutes before failing; far above any preset.
    need(
        len(m.conv_channels) <= MAX_LAYERS and len(m.fc) <= MAX_LAYERS,
        f"model.conv_channels and model.fc have at most {MAX_LAYERS} layers",
    )
    need(
        max(m.conv_channels) <= MAX_WIDTH and max(m.fc, default=0) <= MAX_WIDTH,
        f"model.conv_channels and model.fc sizes must be <= {MAX_WIDTH}",
    )
    need(m.kernel_size <= MAX_KERNEL, f"model.kernel_size must be <= {MAX_KERNEL}")
    need(
        m.lstm_hidden <= MAX_WIDTH and m.lstm_layers <= MAX_LAYERS,
        f"model.lstm_hidden must be <= {MAX_WIDTH} and model.lstm_layers <= {MAX_LAYERS}",
    )
    need(0 <= m.dropout < 1, f"model.dropout must be in [0, 1) (got {m.dropout})")
    from grace_rul.backbones import check_model

    check_model(m)  # unknown arch (lists the names), unsupported pooling, the arch's sizes
    need(t.epochs >= 1, f"train.epochs must be >= 1 (got {t.epochs})")
    need(t.batch_size >= 1, f"train.batch_size must be >= 1 (got {t.batch_size})")
    need(math.isfinite(t.lr) and t.lr > 0, f"train.lr must be > 0 (got {t.lr})")
    need(t.weight_decay >= 0, f"train.weight_decay must be >= 0 (got {t.weight_decay})")
    need(
        all(
            isinstance(x, (list, tuple)) and len(x) == 2 and x[0] >= 0 and x[1] >= 0
            for x in t.weight_decay_schedule
        ),
        "train.weight_decay_schedule must be a list of [epoch, factor] pairs, both >= 0",
    )
    need(
        len(t.betas) == 2 and all(0 <= x < 1 for x in t.betas),
        "train.betas must be two values in [0, 1)",
    )
    need(
        t.schedule in SCHEDULES,
        f"train.schedule must be one of {', '.join(SCHEDULES)} (got {t.schedule})",
    )
    need(t.warmup_epochs >= 0, "train.warmup_epochs must be >= 0")
    need(t.swa_start >= 0, f"train.swa_start must be >= 0, 0 = off (got {t.swa_start})")
    need(0 < t.plateau_factor < 1, "train.plateau_factor must be in (0, 1)")
    need(
        t.plateau_patience >= 0 and t.early_stop_patience >= 1,
        "patience values must be >= 0 / >= 1",
    )
    need(0 <= t.min_lr <= t.lr, "train.min_lr must be in [0, lr]")
    need(t.clip >= 0, f"train.clip must be >= 0, 0 = no clipping (got {t.clip})")
    need(
        t.clip_mode in CLIP_MODES,
        f"train.clip_mode must be one of {', '.join(CLIP_MODES)} (got {t.clip_mode})",
    )
    need(0 <= t.ema_decay < 1, f"train.ema_decay must be in [0, 1) (got {t.ema_decay})")
    need(t.precision in PRECISIONS, f"train.precision must be one of {', '.join(PRECISIONS)}")
    need(t.max_bad_steps >= 1, "train.max_bad_steps must be >= 1")
    need(t.spike_factor > 1, "train.spike_factor must be > 1")
    need(t.grad_stats_every >= 1, "train.grad_stats_every must be >= 1")
    need(t.protocol in PROTOCOLS, f"train.protocol must be one of {', '.join(PROTOCOLS)}")
    need(t.select in SELECTIONS, f"train.select must be one of {', '.join(SELECTIONS)}")
    need(
        b.grad_source in GRAD_SOURCES,
        f"balancer.grad_source must be one of {', '.join(GRAD_SOURCES)}",
    )
    from grace_rul.balancers import check_balancer

    check_balancer(b.name, b.options)


# --------------------------------------------------------------------------- command line

# Named flags for the most used keys: --NAME VALUE is --set KEY=VALUE.
ALIASES: dict[str, tuple[str, tuple[str, ...] | None, str]] = {
    "dataset": ("data.dataset", None, "FD001..FD004, a dataset YAML or an N-CMAPSS .h5 file"),
    "balancer": ("balancer.name", None, "loss balancer, e.g. equal, gaba, grace"),
    "seed": ("seed", None, "seed for every RNG"),
    "folds": ("data.folds", None, "K-fold cross-validation over engines: K fold runs + ensemble"),
    "epochs": ("train.epochs", None, "maximum epochs"),
    "batch_size": ("train.batch_size", None, "mini-batch size"),
    "lr": ("train.lr", None, "AdamW learning rate"),
    "precision": ("train.precision", PRECISIONS, "auto: bf16 where native, else 32"),
    "protocol": (
        "train.protocol",
        PROTOCOLS,
        "val: select on validation units; paper: select on test (optimistic)",
    ),
}


def parse_assignment(text: str) -> tuple[str, Any]:
    """Parse ``KEY=VALUE`` (VALUE as a YAML scalar or list) for ``--set`` and ``--vary``."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise GraceError(f"--set expects KEY=VALUE, got '{text}'")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        raise GraceError(f"--set {text}: the value is not a valid YAML scalar or list") from None
    return key.strip(), parsed


def add_setting_arguments(parser: argparse.ArgumentParser, aliases: tuple[str, ...]) -> None:
    """``--preset``, ``--config``, repeatable ``--set KEY=VALUE`` and the named ``aliases``."""
    parser.add_argument(
        "--preset",
        choices=list(PRESETS),
        help=f"base preset (default: {DEFAULT_PRESET}, small over 40-cycle windows; "
        "paper = the write-up's network)",
    )
    parser.add_argument("--config", help="YAML file with config overrides")
    parser.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set any config key, repeatable: --set train.lr=5e-4 --set model.dropout=0.2 "
        "--set balancer.options.beta=0.95 (see config.yaml of a run for every key)",
    )
    parser.set_defaults(setting_aliases=aliases)  # which named flags settings_from_args reads
    for name in aliases:
        key, choices, text = ALIASES[name]
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            type=dataset_name if name == "dataset" else str,
            choices=choices,
            help=f"{text} (= --set {key}=...)",
        )


def settings_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Nested overrides from ``--set`` and the named aliases present in ``args``."""
    pairs = [parse_assignment(text) for text in args.settings]
    pairs += [
        (key, yaml.safe_load(getattr(args, name)))
        for name, (key, _, _) in ALIASES.items()
        if name in getattr(args, "setting_aliases", ALIASES)
        and getattr(args, name, None) is not None
    ]
    out: dict[str, Any] = {}
    for dotted, value in pairs:
        *parents, leaf = dotted.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise GraceError(f"--set {dotted}: '{part}' is not a section")
        node[leaf] = value
    return out


def add_execution_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of :class:`Execution`: how a run executes (not saved with the run)."""
    parser.add_argument("--device", choices=DEVICES, help="auto (default), cpu or cuda")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument(
        "--data-dir", help="directory with the twelve C-MAPSS *.txt.gz files (default: bundled)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars or event lines")


def execution_from_args(args: argparse.Namespace, **fixed: Any) -> Execution:
    """The :class:`Execution` of parsed ``add_execution_arguments`` flags."""
    values = {
        "device": args.device or "auto",
        "threads": args.threads or 0,
        "data_dir": args.data_dir,
        "quiet": args.quiet,
    }
    return Execution(**{**values, **fixed})
