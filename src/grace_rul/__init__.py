"""GRACE: remaining-useful-life prediction with a two-task network and gradient-aware balancing.

The public API is one import::

    from grace_rul import train, resolve_config, run_sweep, load_model, predict

Each name is imported from its home on first use, so that ``import grace_rul`` (and the
CLI) does not load torch.
"""

from __future__ import annotations

import functools
import platform
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the same names, seen by type checkers and the API reference
    from grace_rul.experiments.sweep import run_sweep
    from grace_rul.inference.gracemodel import GraceModel
    from grace_rul.inference.loader import load_model
    from grace_rul.inference.prediction import predict
    from grace_rul.resolve import resolve_config
    from grace_rul.trainer import train

__version__ = "0.1.0"

__all__ = [
    "GraceModel",
    "__version__",
    "load_model",
    "predict",
    "resolve_config",
    "run_sweep",
    "source_commit",
    "train",
]

_HOMES = {
    "GraceModel": "grace_rul.inference",
    "load_model": "grace_rul.inference",
    "predict": "grace_rul.inference",
    "resolve_config": "grace_rul.resolve",
    "run_sweep": "grace_rul.experiments.sweep",
    "train": "grace_rul.trainer",
}


def source_commit() -> str | None:
    """The git commit of the grace_rul source tree, when it is a git checkout (provenance)."""
    try:
        done = subprocess.run(
            ["git", "-C", str(Path(__file__).resolve().parent), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and len(commit) == 40 else None


@functools.cache
def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's model name and its widest matrix ISA, e.g. ``"AMD EPYC 7B13 (AVX2)"``.

    Stored with every run's metrics: CPU seconds, and what ``train.precision=auto`` trains in,
    depend on it (bf16 is native with AMX or AVX512-BF16 and emulated elsewhere).
    """
    name, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path(cpuinfo).read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    except OSError:
        pass
    for flag, isa in (("amx_tile", "AMX"), ("avx512f", "AVX-512"), ("avx2", "AVX2")):
        if flag in flags:
            return f"{name} ({isa})"
    return name


def __getattr__(name: str) -> object:
    """The public names of ``_HOMES``, imported from their homes on first use."""
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'grace_rul' has no attribute {name!r}")
