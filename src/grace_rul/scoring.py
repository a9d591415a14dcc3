"""Scoring a trained network: split metrics and the inference network of a checkpoint.

Scoring a saved model on a test set is :func:`grace_rul.inference.evaluate.evaluate_model`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import nn

from grace_rul.backbones import build_model
from grace_rul.config import Config
from grace_rul.data import Split, window_rows
from grace_rul.metrics import evaluate_predictions
from grace_rul.model import DualTaskNet, predict
from grace_rul.resolve import config_from_dict


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


def load_inference_model(
    checkpoint: dict[str, Any], device: str = "cpu"
) -> tuple[DualTaskNet, Config]:
    """The network of a checkpoint with its inference (EMA) weights loaded, in eval mode."""
    cfg = config_from_dict(checkpoint["config"])
    model = build_model(
        cfg.model,
        n_features=len(checkpoint["feature_names"]),
        max_rul=cfg.data.max_rul,
        window=window_rows(cfg.data),
    )
    model.load_state_dict(checkpoint["inference"])
    return model.to(device).eval(), cfg
