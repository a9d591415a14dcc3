"""Prognostics metrics (docs/design.md §6): last-window RMSE, NASA score, MAE, health accuracy."""

from __future__ import annotations

import numpy as np


def rmse(pred: np.ndarray, true: np.ndarray) -> float:
    """Root-mean-square error in cycles."""
    return float(np.sqrt(np.mean((np.asarray(pred, float) - np.asarray(true, float)) ** 2)))


def mae(pred: np.ndarray, true: np.ndarray) -> float:
    """Mean absolute error in cycles."""
    return float(np.mean(np.abs(np.asarray(pred, float) - np.asarray(true, float))))


def nasa_score(pred: np.ndarray, true: np.ndarray) -> float:
    """PHM08 score, sum over units: exp(-d/13) - 1 for early (d < 0), exp(d/10) - 1 for late."""
    d = np.asarray(pred, float) - np.asarray(true, float)
    return float(np.sum(np.where(d < 0, np.exp(-d / 13.0) - 1.0, np.exp(d / 10.0) - 1.0)))


def confusion_matrix(pred: np.ndarray, true: np.ndarray, n_classes: int = 3) -> np.ndarray:
    """Counts with rows = true class, columns = predicted class."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(true, int), np.asarray(pred, int)), 1)
    return cm


def evaluate_predictions(
    rul_pred: np.ndarray, rul_true: np.ndarray, health_pred: np.ndarray, health_true: np.ndarray
) -> dict:
    """All metrics of one split; on the test split ``rmse`` is ``rmse_last``."""
    return {
        "rmse": rmse(rul_pred, rul_true),
        "mae": mae(rul_pred, rul_true),
        "nasa_score": nasa_score(rul_pred, rul_true),
        "health_accuracy": float(np.mean(np.asarray(health_pred) == np.asarray(health_true))),
        "confusion": confusion_matrix(health_pred, health_true).tolist(),
    }
