"""NonFiniteGuard and SpikeDetector."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from grace_rul.errors import GraceError
from grace_rul.stabilisers import NonFiniteGuard, SpikeDetector, TrainingDiverged

torch.set_num_threads(1)


def _model_with_grads() -> nn.Module:
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 1))
    model(torch.randn(5, 3)).sum().backward()
    return model


def test_nan_loss_is_detected_and_named():
    guard = NonFiniteGuard()
    assert guard.check_loss(torch.tensor([0.5, 1.2]), ("rul", "health"))
    assert not guard.check_loss(torch.tensor([0.5, float("nan")]), ("rul", "health"))
    assert "health" in guard.last_problem and "rul" not in guard.last_problem
    assert not guard.check_loss(torch.tensor(float("inf")))
    assert "loss[0]" in guard.last_problem


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")])
def test_non_finite_gradient_is_detected(bad):
    model = _model_with_grads()
    guard = NonFiniteGuard()
    assert guard.check_grads(model.parameters())
    model[1].weight.grad[0, 2] = bad
    assert not guard.check_grads(model.parameters())
    assert guard.last_problem == "gradients"


def test_huge_but_finite_gradients_are_not_flagged():
    model = _model_with_grads()
    for p in model.parameters():
        p.grad.fill_(1e30)  # the sum of squares would overflow float32
    assert NonFiniteGuard().check_grads(model.parameters())


def test_check_step_is_check_loss_and_check_grads_in_one():
    guard = NonFiniteGuard()
    model = _model_with_grads()
    ok = torch.tensor([0.5, 1.2])
    assert guard.check_step(ok, model.parameters(), ("rul", "health"))
    assert not guard.check_step(ok, model.parameters(), also=torch.tensor(False))
    assert guard.last_problem == "gradients"
    model[0].bias.grad[1] = float("inf")
    assert not guard.check_step(ok, model.parameters())
    assert guard.last_problem == "gradients"
    assert not guard.check_step(
        torch.tensor([float("nan"), 1.0]), model.parameters(), ("rul", "health")
    )
    assert guard.last_problem == "loss rul=nan"  # the losses are named first
    assert guard.total_skipped == 0  # it only looks


def test_counters_and_first_bad_step():
    guard = NonFiniteGuard(max_consecutive=5)
    guard.record_bad(1, 7, "loss rul=nan")
    guard.record_bad(1, 8, "gradients")
    assert guard.consecutive == 2
    guard.record_good()
    assert guard.consecutive == 0
    guard.record_bad(3, 0, "gradients")
    assert guard.total_skipped == 3 and guard.consecutive == 1
    assert guard.first_bad == (1, 7, "loss rul=nan")
    assert guard.last_bad == (3, 0, "gradients")


def test_raises_after_max_consecutive_bad_steps():
    guard = NonFiniteGuard(max_consecutive=3)
    guard.record_bad(2, 4, "loss health=nan")
    guard.record_bad(2, 5, "gradients")
    with pytest.raises(TrainingDiverged) as info:
        guard.record_bad(2, 6, "gradients")
    assert isinstance(info.value, GraceError)
    message = str(info.value)
    assert "3 consecutive" in message and "epoch 2 batch 4, loss health=nan" in message
    assert "\n" not in message


def test_a_good_step_in_between_prevents_the_stop():
    guard = NonFiniteGuard(max_consecutive=3)
    for batch in range(20):
        guard.record_bad(0, batch, "gradients")
        if batch % 2:
            guard.record_good()
    assert guard.total_skipped == 20


def test_guard_state_dict_round_trip():
    guard = NonFiniteGuard(max_consecutive=3)
    guard.record_bad(0, 1, "gradients")
    guard.record_bad(0, 2, "gradients")
    resumed = NonFiniteGuard(max_consecutive=3)
    resumed.load_state_dict(guard.state_dict())
    assert resumed.first_bad == (0, 1, "gradients")
    with pytest.raises(TrainingDiverged):  # the streak continues across the resume
        resumed.record_bad(1, 0, "gradients")


def _warm(detector: SpikeDetector, steps: int) -> None:
    for i in range(steps):
        assert not detector.update(1.0 + 0.05 * (i % 3), epoch=0, batch=i)


def test_spike_detector_flags_10x_but_not_1_5x_after_warmup():
    detector = SpikeDetector(factor=3.0, momentum=0.98, warmup=20)
    _warm(detector, 20)
    level = detector.level
    assert not detector.update(1.5 * level, epoch=1, batch=0)
    assert detector.update(10.0 * level, epoch=1, batch=1)
    assert detector.spikes == [(1, 1, pytest.approx(10.0 * level), pytest.approx(level, rel=0.02))]


def test_spike_detector_is_quiet_during_warmup_and_ignores_non_finite():
    detector = SpikeDetector(warmup=20)
    _warm(detector, 5)
    assert not detector.update(100.0, epoch=0, batch=5)  # still warming up
    level = detector.level
    assert not detector.update(float("nan"), epoch=0, batch=6)
    assert detector.level == level and detector.steps == 6


def test_spike_detector_state_dict_round_trip():
    detector = SpikeDetector(warmup=3)
    _warm(detector, 3)
    detector.update(50.0, epoch=2, batch=9)
    resumed = SpikeDetector(warmup=3)
    resumed.load_state_dict(detector.state_dict())
    assert resumed.level == detector.level and resumed.steps == 4
    assert resumed.spikes == detector.spikes
    assert resumed.update(10.0 * resumed.level, epoch=3, batch=0)
