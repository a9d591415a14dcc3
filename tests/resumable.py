"""Resume checks shared by the architecture and ingredient tests: one straight run whose
directory is copied after an epoch (the state a stopped run leaves), resumed, compared."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path
from typing import Any
from unittest import mock

import torch

from conftest import QUIET
from grace_rul import trainer
from grace_rul.config import Config


def train_copying(cfg: Config, out: Path, after_epoch: int, copy_to: Path) -> dict[str, Any]:
    """Train ``cfg`` into ``out``; copy the run directory to ``copy_to`` right after the
    ``last.pt`` of epoch ``after_epoch`` (counted from 1) is written."""
    original = trainer._save_last

    def save_last(run, parts, cfg_, state, wall, cpu):
        original(run, parts, cfg_, state, wall, cpu)
        if state.epoch == after_epoch:
            shutil.copytree(run.path, copy_to)

    with mock.patch.object(trainer, "_save_last", save_last):
        return trainer.train(cfg, out, execution=QUIET)


def same(a: Any, b: Any, where: str = "") -> None:
    """Assert two saved states are bit-identical (tensors with ``torch.equal``)."""
    if isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            same(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    else:
        assert a == b or (a != a and b != b), where  # NaN == NaN


def history(path: Path) -> list[dict[str, str]]:
    with open(path / "history.csv", newline="") as f:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]


def assert_resumes_identically(cfg: Config, straight: Path, copy: Path) -> None:
    """Resume ``copy`` (a copied mid-run directory) to the end; it must equal ``straight``."""
    trainer.train(cfg, copy, execution=QUIET, resume=True)
    a = torch.load(straight / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(copy / "checkpoints" / "last.pt", weights_only=True)
    same(a["components"], b["components"], "components")
    for timing in ("seconds", "cpu_seconds"):
        a["loop"].pop(timing), b["loop"].pop(timing)
    same(a["loop"], b["loop"], "loop")
    assert history(straight) == history(copy)
