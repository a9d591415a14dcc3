"""Scoring a trained network: split metrics, test predictions and saved checkpoints."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from grace_rul.checkpoint import load_checkpoint
from grace_rul.config import Config, config_from_dict
from grace_rul.data import (
    DATASETS,
    Normalizer,
    Split,
    dataset_name,
    read_dataset,
    resolve_normalization,
    test_windows,
)
from grace_rul.errors import GraceError
from grace_rul.metrics import evaluate_predictions
from grace_rul.model import DualTaskNet, build_model, predict


def score_split(model: nn.Module, split: Split) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Metrics of ``model`` on ``split`` plus the RUL predictions and predicted health classes."""
    rul, logits = predict(model, split.x)
    rul_np, health_np = rul.numpy(), logits.argmax(dim=1).numpy()
    metrics = evaluate_predictions(rul_np, split.rul.numpy(), health_np, split.health.numpy())
    return metrics, rul_np, health_np


def test_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """Rename a split's metrics to the test-set names of ``metrics.json``."""
    out = dict(metrics)
    out["rmse_last"] = out.pop("rmse")
    return out


def test_split(
    dataset: str, cfg: Config, normalizer: Normalizer, data_dir: str | None = None
) -> Split:
    """Test windows of ``dataset`` (any kind, :func:`~grace_rul.data.read_dataset`), scaled
    with a fitted ``normalizer``: the last window of every test unit."""
    data_cfg = replace(cfg.data, dataset=dataset_name(dataset))
    return test_windows(read_dataset(data_cfg, data_dir), normalizer, data_cfg)


def load_inference_model(
    checkpoint: dict[str, Any], device: str = "cpu"
) -> tuple[DualTaskNet, Config]:
    """The network of a checkpoint with its inference (EMA) weights loaded, in eval mode."""
    cfg = config_from_dict(checkpoint["config"])
    model = build_model(
        cfg.model, n_features=len(checkpoint["feature_names"]), max_rul=cfg.data.max_rul
    )
    model.load_state_dict(checkpoint["inference"])
    return model.to(device).eval(), cfg


def evaluate_checkpoint(
    path: str | Path, dataset: str | None = None, data_dir: str | None = None
) -> dict[str, Any]:
    """Test metrics of a saved checkpoint on its own subset (default) or another one.

    Uses the normalisation statistics stored in the checkpoint, never refitted.
    """
    ckpt = load_checkpoint(path)
    for key in ("config", "inference", "normalizer", "feature_names"):
        if key not in ckpt:
            raise GraceError(f"checkpoint {path} has no '{key}' entry (not a GRACE checkpoint?)")
    model, cfg = load_inference_model(ckpt)
    name = dataset_name(dataset or cfg.data.dataset)
    normalizer = Normalizer.from_dict(ckpt["normalizer"])
    needed = resolve_normalization(cfg.data.normalization, name)
    if name in DATASETS and needed != normalizer.mode:
        raise GraceError(
            f"checkpoint was normalised with '{normalizer.mode}' statistics of {cfg.data.dataset}; "
            f"{name} needs '{needed}' normalisation"
        )
    split = test_split(name, cfg, normalizer, data_dir)
    with torch.no_grad():
        metrics, _, _ = score_split(model, split)
    return {"dataset": name, "checkpoint": str(path), "test": test_metrics(metrics)}
