"""One typed configuration for a GRACE run, and the command line that sets it.

Values are resolved in one order: dataclass defaults (the write-up's training defaults and
the ``paper`` model) < preset < YAML file (``--config``) < ``--set key=value`` and the named
flags that alias the most used keys. Every key is reachable as ``--set section.key=value``
(``--set balancer.options.beta=0.95``); values are parsed as YAML scalars or lists and
coerced to the type of the default, so ``--set train.lr=5e-4`` is a float and an unknown
key is refused with the nearest known names. A key added to a dataclass below is a setting
of ``grace train`` and ``grace sweep`` without touching the CLI.

This module is a leaf: plain settings, their plain checks (each section's ``validate``)
and the constants they are checked against, importing nothing of the implementation.
:func:`grace_rul.resolve.resolve_config` builds a checked :class:`Config` from the layers
(it needs the dataset readers and the architecture and balancer registries).

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
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from grace_rul.errors import GraceError, brief

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
]
DATASETS: tuple[str, ...] = ("FD001", "FD002", "FD003", "FD004")  # the C-MAPSS subsets
HDF5_SUFFIXES: tuple[str, ...] = (".h5", ".hdf5")  # an N-CMAPSS file
DATASET_SUFFIXES: tuple[str, ...] = (".yaml", ".yml", *HDF5_SUFFIXES)  # a dataset file
DEVICES = ("auto", "cpu", "cuda")
SCHEDULES = ("plateau", "cosine", "onecycle")  # train.schedule
CLIP_MODES = ("norm", "value")  # train.clip_mode (grace_rul.stabilisers.clipping)
PRECISIONS = ("auto", "32", "bf16", "16")  # train.precision (grace_rul.stabilisers.precision)
GRAD_SOURCES = ("params", "representation")  # balancer.grad_source (grace_rul.balancers.engine)
# train.protocol: which split selects the checkpoint (grace_rul.metrics)
PROTOCOLS = ("val", "paper")
PROTOCOL_LABELS = {"val": "validation-selected", "paper": "test-selected (optimistic)"}
# train.select: the validation score used for selection: "last" windows of truncated
# validation units (built like the test set) or "all" windows of the validation units.
SELECTIONS = ("last", "all")
SECTIONS = ("data", "model", "train", "balancer")  # the mapping-valued top-level keys
# Network size limits (validate): far above every preset, far below what exhausts memory.
MAX_LAYERS = 16
MAX_WIDTH = 4096
MAX_KERNEL = 99


def _need(ok: bool, msg: str) -> None:
    if not ok:
        raise GraceError(f"invalid setting: {msg}")


NORMALIZATIONS: tuple[str, ...] = ("auto", "global", "regime")
SCALINGS: tuple[str, ...] = ("zscore", "minmax")


@dataclass
class DataConfig:
    """The data contract's settings: subset, windows, label caps, split and scaling.

    Plain values only; :meth:`validate` is the one place they are checked. The
    meaning of each is in :mod:`grace_rul.data.cmapss`'s docstring.
    """

    dataset: str = "FD001"
    window: int = 30
    max_rul: int = 125
    critical_rul: int = 30  # health class 2 when RUL <= this
    degrading_rul: int = 80  # health class 1 when critical < RUL <= this, else 0
    val_fraction: float = 0.2  # share of training units held out (whole engines)
    val_cuts: int = 10  # truncation points per validation unit for the test-like score
    normalization: str = "auto"  # auto | global | regime ("auto": regime for FD002/FD004)
    scaling: str = "zscore"  # zscore | minmax (to [-1, 1]), per regime in regime mode
    window_features: bool = False  # append each window's per-sensor mean and slope as 2 rows
    test_fraction: float = 0.2  # share of units held out for the test when a dataset has none
    downsample: int = 10  # N-CMAPSS: keep every n-th 1 Hz row (seconds between kept rows)
    folds: int = 0  # K >= 2: K-fold cross-validation over whole units; 0/1: one hold-out
    fold: int = 0  # with folds: the 1-based fold held out for validation; 0: all K folds

    def validate(self) -> None:
        """Refuse settings that cannot build windows, with one line naming the setting."""
        problems = [
            (self.dataset in DATASETS or is_dataset_file(self.dataset),
             f"data.dataset '{self.dataset}' is not one of {', '.join(DATASETS)}, a dataset "
             f"YAML (.yaml/.yml) or an N-CMAPSS HDF5 file (.h5/.hdf5)"),
            (self.window >= 1, f"data.window must be >= 1 (got {self.window})"),
            (self.max_rul > 0, f"data.max_rul must be > 0 (got {self.max_rul})"),
            (0 < self.critical_rul < self.degrading_rul,
             f"health thresholds need 0 < critical_rul < degrading_rul "
             f"(got {self.critical_rul}, {self.degrading_rul})"),
            (0 < self.val_fraction < 1,
             f"data.val_fraction must be in (0, 1) (got {self.val_fraction})"),
            (self.val_cuts >= 1, f"data.val_cuts must be >= 1 (got {self.val_cuts})"),
            (self.normalization in NORMALIZATIONS,
             f"data.normalization must be one of {', '.join(NORMALIZATIONS)}"),
            (self.scaling in SCALINGS,
             f"data.scaling must be one of {', '.join(SCALINGS)} (got {self.scaling})"),
            (not self.window_features or self.window >= 3,
             f"data.window_features needs data.window >= 3 (got {self.window})"),
            (0 < self.test_fraction < 1,
             f"data.test_fraction must be in (0, 1) (got {self.test_fraction})"),
            (self.downsample >= 1, f"data.downsample must be >= 1 (got {self.downsample})"),
            (self.folds >= 0, f"data.folds must be >= 0 (got {self.folds})"),
            (0 <= self.fold <= max(self.folds, 0) and (self.fold == 0 or self.folds >= 2),
             f"data.fold must be in 0..data.folds with data.folds >= 2 (got fold {self.fold}, "
             f"folds {self.folds})"),
        ]  # fmt: skip
        for ok, message in problems:
            if not ok:
                raise GraceError(f"invalid setting: {message}")
        if self.dataset not in DATASETS and not Path(self.dataset).expanduser().is_file():
            raise GraceError(f"data.dataset: file not found: {self.dataset}")


def is_dataset_file(name: str) -> bool:
    """True when ``name`` names a dataset YAML or an N-CMAPSS HDF5 file (by its suffix)."""
    return Path(str(name)).suffix.lower() in DATASET_SUFFIXES


def dataset_name(name: str) -> str:
    """``fd001`` -> ``FD001``; any other name (a file path) unchanged."""
    text = str(name)
    return text.upper() if text.upper() in DATASETS else text


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

    def validate(self) -> None:
        """Refuse a network that cannot be built, with one line naming the setting.

        Plain bounds only; the architecture's own checks (its name, pooling, sizes) run
        in :func:`grace_rul.resolve.check_config`.
        """
        m = self
        _need(
            len(m.conv_channels) >= 1 and all(c > 0 for c in m.conv_channels),
            "model.conv_channels must be positive",
        )
        _need(
            m.kernel_size >= 1 and m.kernel_size % 2 == 1, "model.kernel_size must be odd and >= 1"
        )
        _need(
            m.lstm_hidden > 0 and m.lstm_layers >= 1,
            "model.lstm_hidden and model.lstm_layers must be >= 1",
        )
        _need(m.attn_heads >= 1, f"model.attn_heads must be >= 1 (got {m.attn_heads})")
        _need(
            m.d_model >= 1 and m.depth >= 1 and m.ff >= 1,
            "model.d_model, model.depth and model.ff must be >= 1",
        )
        _need(all(h > 0 for h in m.fc), "model.fc sizes must be positive")
        # Upper bounds, so that a config (or a shared model file) cannot ask for a network
        # that allocates for minutes before failing; far above any preset.
        _need(
            len(m.conv_channels) <= MAX_LAYERS and len(m.fc) <= MAX_LAYERS,
            f"model.conv_channels and model.fc have at most {MAX_LAYERS} layers",
        )
        _need(
            max(m.conv_channels) <= MAX_WIDTH and max(m.fc, default=0) <= MAX_WIDTH,
            f"model.conv_channels and model.fc sizes must be <= {MAX_WIDTH}",
        )
        _need(m.kernel_size <= MAX_KERNEL, f"model.kernel_size must be <= {MAX_KERNEL}")
        _need(
            m.lstm_hidden <= MAX_WIDTH and m.lstm_layers <= MAX_LAYERS,
            f"model.lstm_hidden must be <= {MAX_WIDTH} and model.lstm_layers <= {MAX_LAYERS}",
        )
        _need(0 <= m.dropout < 1, f"model.dropout must be in [0, 1) (got {m.dropout})")


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

    def validate(self) -> None:
        """Refuse settings that cannot train, with one line naming the setting."""
        t = self
        _need(t.epochs >= 1, f"train.epochs must be >= 1 (got {t.epochs})")
        _need(t.batch_size >= 1, f"train.batch_size must be >= 1 (got {t.batch_size})")
        _need(math.isfinite(t.lr) and t.lr > 0, f"train.lr must be > 0 (got {t.lr})")
        _need(t.weight_decay >= 0, f"train.weight_decay must be >= 0 (got {t.weight_decay})")
        _need(
            all(
                isinstance(x, (list, tuple)) and len(x) == 2 and x[0] >= 0 and x[1] >= 0
                for x in t.weight_decay_schedule
            ),
            "train.weight_decay_schedule must be a list of [epoch, factor] pairs, both >= 0",
        )
        _need(
            len(t.betas) == 2 and all(0 <= x < 1 for x in t.betas),
            "train.betas must be two values in [0, 1)",
        )
        _need(
            t.schedule in SCHEDULES,
            f"train.schedule must be one of {', '.join(SCHEDULES)} (got {t.schedule})",
        )
        _need(t.warmup_epochs >= 0, "train.warmup_epochs must be >= 0")
        _need(t.swa_start >= 0, f"train.swa_start must be >= 0, 0 = off (got {t.swa_start})")
        _need(0 < t.plateau_factor < 1, "train.plateau_factor must be in (0, 1)")
        _need(
            t.plateau_patience >= 0 and t.early_stop_patience >= 1,
            "patience values must be >= 0 / >= 1",
        )
        _need(0 <= t.min_lr <= t.lr, "train.min_lr must be in [0, lr]")
        _need(t.clip >= 0, f"train.clip must be >= 0, 0 = no clipping (got {t.clip})")
        _need(
            t.clip_mode in CLIP_MODES,
            f"train.clip_mode must be one of {', '.join(CLIP_MODES)} (got {t.clip_mode})",
        )
        _need(0 <= t.ema_decay < 1, f"train.ema_decay must be in [0, 1) (got {t.ema_decay})")
        _need(t.precision in PRECISIONS, f"train.precision must be one of {', '.join(PRECISIONS)}")
        _need(t.max_bad_steps >= 1, "train.max_bad_steps must be >= 1")
        _need(t.spike_factor > 1, "train.spike_factor must be > 1")
        _need(t.grad_stats_every >= 1, "train.grad_stats_every must be >= 1")
        _need(t.protocol in PROTOCOLS, f"train.protocol must be one of {', '.join(PROTOCOLS)}")
        _need(t.select in SELECTIONS, f"train.select must be one of {', '.join(SELECTIONS)}")


@dataclass
class BalancerConfig:
    """Which multi-task balancer weighs the two task losses, and its options."""

    name: str = "gaba"
    grad_source: str = "params"  # params: shared parameters | representation (approximation)
    options: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        """Refuse an unknown gradient source (the name and options are checked against
        the balancer registry by :func:`grace_rul.resolve.check_config`)."""
        _need(
            self.grad_source in GRAD_SOURCES,
            f"balancer.grad_source must be one of {', '.join(GRAD_SOURCES)}",
        )


@dataclass
class Config:
    """Everything that defines one training run.

    The field defaults are the write-up's recipe (preset ``paper``): the base layer every
    preset sits on. What ``grace train`` trains without ``--preset`` is
    ``resolve_config()``, i.e. the ``default`` preset (:data:`DEFAULT_PRESET`).
    """

    preset: str = "paper"
    seed: int = 42
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    balancer: BalancerConfig = field(default_factory=BalancerConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def validate(self) -> None:
        """Every section's own ``validate``, data first."""
        for section in (self.data, self.model, self.train, self.balancer):
            section.validate()

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
    # The default recipe: Li et al.'s DCNN over 50-cycle windows plus the two summary rows,
    # min-max scaling, SWA from epoch 15 - the best trial of the FD001 search, confirmed by
    # CV on seeds it never saw (docs/evidence/accuracy.md); chosen on CV scores only. The
    # values are the trial's. A dataset YAML's own window still wins.
    "default": {
        "model": {**_SMALL["model"], "arch": "dcnn"},
        "data": {"window": 50, "window_features": True, "scaling": "minmax"},
        "train": {
            **_SMALL["train"],
            "schedule": "plateau",
            "swa_start": 15,
            "clip": 1.0,
            "lr": 0.00046907792233240845,
            "weight_decay": 3.642363778609368e-05,
            "batch_size": 128,
        },
    },
    # The default of 0.1 (before the search): `small` over 40-cycle windows.
    "bilstm": {**_SMALL, "data": {"window": 40}},
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


# What `grace train` trains without --preset (docs/evidence/accuracy.md); the dataclass
# defaults are `paper`, the write-up's exact settings, kept as the reference point.
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


def merge_into(target: Any, updates: dict[str, Any], where: str) -> None:
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
            merge_into(current, value, name)
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


def config_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two config dicts (``options`` whole)."""
    keys = []
    for k in sorted(set(a) | set(b)):
        name = f"{prefix}{k}"
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict) and not name.endswith("options"):
            keys += config_diff(va, vb, name + ".")
        elif va != vb:
            keys.append(name)
    return keys


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
        help=f"base preset (default: {DEFAULT_PRESET}, the DCNN over 50-cycle windows; "
        "bilstm = 0.1's default; paper = the write-up's network)",
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
    return nested(pairs)


def nested(pairs: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """Dotted keys to nested dicts: ``[("train.lr", 1e-3)]`` -> ``{"train": {"lr": 1e-3}}``."""
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


def flatten(tree: dict[str, Any], where: str = "") -> dict[str, Any]:
    """Nested dicts to dotted keys, the inverse of :func:`nested`:
    ``{"train": {"lr": 1e-3}}`` -> ``{"train.lr": 1e-3}``."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{where}.{key}" if where else str(key)
        out.update(flatten(value, name) if isinstance(value, dict) else {name: value})
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
