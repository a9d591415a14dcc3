"""Hand-computed checks of the inner losses and the prognostics metrics."""

import math

import numpy as np
import pytest
import torch

from grace_rul.losses import failure_weights, task_losses, weighted_mse
from grace_rul.metrics import confusion_matrix, evaluate_predictions, mae, nasa_score, rmse


def test_failure_weights_are_two_at_failure_and_one_beyond_cap():
    y = torch.tensor([0.0, 62.5, 125.0, 200.0])
    assert failure_weights(y, 125).tolist() == [2.0, 1.5, 1.0, 1.0]


def test_weighted_mse_by_hand():
    pred = torch.tensor([10.0, 100.0, 130.0])
    true = torch.tensor([0.0, 125.0, 125.0])
    # w = (2, 1, 1); squared errors (100, 625, 25) -> (200 + 625 + 25) / 3
    assert weighted_mse(pred, true, 125).item() == pytest.approx(850 / 3)


def test_task_losses_stack_wmse_and_cross_entropy():
    logits = torch.tensor([[2.0, 0.0, 0.0]])
    losses = task_losses(torch.tensor([5.0]), logits, torch.tensor([5.0]), torch.tensor([0]), 125)
    expected_ce = -math.log(math.exp(2) / (math.exp(2) + 2))
    assert losses[0].item() == 0.0
    assert losses[1].item() == pytest.approx(expected_ce, rel=1e-6)


def test_nasa_score_penalises_late_more_than_early():
    # d = -13 -> e^1 - 1 ; d = +10 -> e^1 - 1 ; d = 0 -> 0
    assert nasa_score(np.array([87.0]), np.array([100.0])) == pytest.approx(math.e - 1)
    assert nasa_score(np.array([110.0]), np.array([100.0])) == pytest.approx(math.e - 1)
    assert nasa_score(np.array([5.0, 10.0]), np.array([5.0, 0.0])) == pytest.approx(math.e - 1)
    late, early = (
        nasa_score(np.array([20.0]), np.array([0.0])),
        nasa_score(np.array([0.0]), np.array([20.0])),
    )
    assert late > early


def test_rmse_mae_confusion():
    pred, true = np.array([1.0, 2.0, 5.0]), np.array([1.0, 4.0, 1.0])
    assert rmse(pred, true) == pytest.approx(math.sqrt((0 + 4 + 16) / 3))
    assert mae(pred, true) == pytest.approx(2.0)
    cm = confusion_matrix(np.array([0, 1, 2, 2]), np.array([0, 2, 2, 1]))
    assert cm.tolist() == [[1, 0, 0], [0, 0, 1], [0, 1, 1]]
    m = evaluate_predictions(pred, true, np.array([0, 1, 2]), np.array([0, 1, 1]))
    assert m["health_accuracy"] == pytest.approx(2 / 3)
