"""GRACE: remaining-useful-life prediction with a two-task network and gradient-aware balancing."""

from __future__ import annotations

import subprocess
from pathlib import Path

__version__ = "0.1.0"

__all__ = ["GraceModel", "__version__", "load_model", "predict", "source_commit"]


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


def __getattr__(name: str) -> object:
    """``grace_rul.load_model``, ``grace_rul.predict`` and ``grace_rul.GraceModel``, imported
    on first use so that ``import grace_rul`` (and the CLI) does not load torch."""
    if name in ("GraceModel", "load_model", "predict"):
        from grace_rul import inference

        return getattr(inference, name)
    raise AttributeError(f"module 'grace_rul' has no attribute {name!r}")
