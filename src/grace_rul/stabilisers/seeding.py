"""Seeding every random stream, an opt-in deterministic mode, and RNG state capture for resume."""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch

from grace_rul.errors import GraceError

# cuBLAS needs a fixed workspace to be deterministic on CUDA >= 10.2; must be set before cuBLAS
# initialises (i.e. before the first CUDA matmul of the process).
CUBLAS_WORKSPACE = ":4096:8"


def stream_seed(seed: int, fold: int = 0) -> int:
    """The seed of a run's training streams (initialisation, data order, dropout).

    ``seed`` itself for a single run (``fold`` 0). Fold ``f`` >= 1 of a cross-validation
    draws its own from ``numpy.random.SeedSequence([seed, f])``, so the K fold models start
    from different initialisations and see their batches in different orders: an ensemble
    whose members share one initialisation and differ only in a fifth of their engines
    averages away little. Which engines are in which fold (and the validation cuts) still
    follow ``seed`` alone, so the folds partition the same units.
    """
    if fold == 0:
        return seed
    return int(np.random.SeedSequence([seed, fold]).generate_state(1)[0])


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python ``random``, NumPy's global RNG and torch (CPU and every CUDA device).

    ``deterministic=True`` also makes torch use deterministic kernels only
    (``torch.use_deterministic_algorithms(True)``, strict: an op without a deterministic
    implementation raises instead of silently breaking reproducibility), sets cuDNN to
    deterministic without autotuning, and sets ``CUBLAS_WORKSPACE_CONFIG`` (unless the user set
    a valid value already). ``deterministic=False`` puts those torch flags back to their
    defaults, so the function fully owns them.
    """
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or not 0 <= seed < 2**32:
        raise GraceError(f"seed must be an integer in [0, 2**32) (got {seed!r})")
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds CUDA devices too
    if deterministic:
        if os.environ.get("CUBLAS_WORKSPACE_CONFIG") not in (":4096:8", ":16:8"):
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_WORKSPACE
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = False


def rng_state(generator: torch.Generator | None = None) -> dict[str, Any]:
    """Snapshot of every random stream (plus ``generator``, e.g. the data-order one).

    Plain Python values and tensors only, so it survives ``torch.save``/``torch.load`` with
    ``weights_only`` True or False.
    """
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (str(name), keys.tolist(), int(pos), int(has_gauss), float(cached)),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    if generator is not None:
        state["generator"] = generator.get_state()
    return state


def set_rng_state(state: dict[str, Any], generator: torch.Generator | None = None) -> None:
    """Restore a ``rng_state`` snapshot so every stream continues exactly where it was.

    CUDA states are restored for the devices present (skipped on a machine without CUDA).
    """
    if generator is not None and "generator" not in state:
        raise GraceError("saved RNG state has no data-order generator state to restore")
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"].cpu())
    if torch.cuda.is_available():
        for device, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state.cpu(), device)
    if generator is not None:
        generator.set_state(state["generator"].cpu())


class RngStreams:
    """Every random stream of a run as one resumable component (``state_dict`` protocol).

    ``generator`` is the run's own data-order generator; the global Python, NumPy,
    torch and CUDA streams are captured with it.
    """

    def __init__(self, generator: torch.Generator) -> None:
        self.generator = generator

    def state_dict(self) -> dict[str, Any]:
        return rng_state(generator=self.generator)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        set_rng_state(state, generator=self.generator)
