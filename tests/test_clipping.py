"""GradClipper: joint-norm clipping, value mode, per-epoch statistics, band hint, resume."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch import nn

from grace_rul.errors import GraceError
from grace_rul.stabilisers import GradClipper

torch.set_num_threads(1)


def _params_with_grads(*grads: list[float]) -> list[nn.Parameter]:
    params = []
    for g in grads:
        p = nn.Parameter(torch.zeros(len(g)))
        p.grad = torch.tensor(g)
        params.append(p)
    return params


def _flat(params) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in params])


def _feed(clipper: GradClipper, norms) -> None:
    """One step per value: a single-element gradient whose joint norm is that value."""
    for n in norms:
        clipper.clip(_params_with_grads([float(n)]))


def test_gradient_spike_is_clipped_to_the_threshold_with_direction_kept():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    model(torch.randn(16, 4)).pow(2).mean().backward()
    for p in model.parameters():
        p.grad.mul_(1000.0)  # a x1000 spike
    before = _flat(model.parameters()).clone()
    clipper = GradClipper(max_norm=1.0)
    norm = clipper.clip(model.parameters())
    after = _flat(model.parameters())
    assert norm == pytest.approx(float(before.norm()), rel=1e-5)
    assert norm > 1.0
    assert float(after.norm()) == pytest.approx(1.0, rel=1e-4)  # joint norm == max_norm
    cosine = torch.nn.functional.cosine_similarity(before, after, dim=0)
    assert float(cosine) == pytest.approx(1.0, abs=1e-6)
    assert clipper.epoch_summary()["fraction"] == 1.0


def test_joint_norm_not_per_tensor():
    # each tensor alone is under the threshold, together they are over it
    params = _params_with_grads([0.6, 0.0], [0.0, 0.6])
    clipper = GradClipper(max_norm=0.5)
    norm = clipper.clip(params)
    assert norm == pytest.approx(0.6 * 2**0.5, rel=1e-6)
    assert float(_flat(params).norm()) == pytest.approx(0.5, rel=1e-5)


def test_value_mode_clips_elements_and_changes_direction():
    grads = ([3.0, 0.5], [-4.0, 0.1])
    params = _params_with_grads(*grads)
    before = _flat(params).clone()
    clipper = GradClipper(max_norm=1.0, mode="value")
    norm = clipper.clip(params)
    after = _flat(params)
    assert norm == pytest.approx(float(before.norm()), rel=1e-6)  # pre-clip joint norm
    assert float(after.abs().max()) <= 1.0
    cosine = torch.nn.functional.cosine_similarity(before, after, dim=0)
    assert float(cosine) < 0.99  # per-element clipping turns the gradient
    # the same gradients under joint-norm clipping keep their direction
    joint = _params_with_grads(*grads)
    GradClipper(max_norm=1.0).clip(joint)
    cosine = torch.nn.functional.cosine_similarity(before, _flat(joint), dim=0)
    assert float(cosine) == pytest.approx(1.0, abs=1e-6)


def test_value_mode_counts_a_step_clipped_only_when_an_element_exceeds():
    clipper = GradClipper(max_norm=1.0, mode="value")
    clipper.clip(_params_with_grads([0.9, 0.9, 0.9]))  # joint norm 1.56, no element > 1
    clipper.clip(_params_with_grads([1.5, 0.0, 0.0]))
    s = clipper.epoch_summary()
    assert s["steps"] == 2 and s["fraction"] == 0.5


def test_epoch_summary_on_known_norms_then_reset():
    clipper = GradClipper(max_norm=5.5)
    _feed(clipper, range(1, 11))
    s = clipper.epoch_summary()
    assert s["steps"] == 10
    assert s["mean"] == pytest.approx(5.5)
    assert s["max"] == pytest.approx(10.0)
    assert s["p90"] == pytest.approx(9.1)
    assert s["fraction"] == pytest.approx(0.5)  # 6..10 clipped
    assert s["hint"] is None
    empty = clipper.epoch_summary()
    assert empty["steps"] == 0 and empty["fraction"] == 0.0 and np.isnan(empty["mean"])
    assert clipper.total_steps == 10 and clipper.total_clipped == 5


def test_non_finite_norm_is_counted_but_kept_out_of_the_statistics():
    clipper = GradClipper(max_norm=1.0)
    _feed(clipper, [0.5])
    assert clipper.clip(_params_with_grads([float("nan")])).isnan()
    s = clipper.epoch_summary()
    assert s["steps"] == 1 and s["nonfinite"] == 1 and s["mean"] == pytest.approx(0.5)


def _hint_threshold(hint: str) -> float:
    return float(re.search(r"train.clip=([0-9.e+-]+) would clip", hint).group(1))


def test_band_hint_once_after_patience_epochs_with_a_threshold_giving_about_20_percent():
    rng = np.random.default_rng(0)
    clipper = GradClipper(max_norm=1.0, patience=3)
    recorded = []
    hints = []
    for _ in range(5):
        norms = rng.lognormal(mean=1.0, sigma=0.5, size=50)  # almost all > 1: fraction ~0.98
        recorded.append(norms)
        _feed(clipper, norms)
        hints.append(clipper.epoch_summary()["hint"])
    assert hints[0] is None and hints[1] is None
    assert hints[2] is not None and hints[3:] == [None, None]  # once
    assert "outside 10-30% for 3 epochs" in hints[2]
    threshold = _hint_threshold(hints[2])
    window = np.concatenate(recorded[:3])
    assert np.mean(window > threshold) == pytest.approx(0.20, abs=0.03)
    assert clipper.hinted


def test_band_hint_also_when_clipping_too_rarely_and_streak_resets_in_band():
    clipper = GradClipper(max_norm=100.0, patience=2)
    _feed(clipper, range(1, 11))  # 0 % clipped
    assert clipper.epoch_summary()["hint"] is None
    _feed(clipper, [50.0] * 8 + [200.0] * 2)  # 20 %: back in band, streak resets
    assert clipper.epoch_summary()["hint"] is None
    _feed(clipper, range(1, 11))
    assert clipper.epoch_summary()["hint"] is None
    _feed(clipper, range(1, 11))
    hint = clipper.epoch_summary()["hint"]
    assert hint is not None and "clip fraction 0.00" in hint
    threshold = _hint_threshold(hint)
    assert np.mean(np.arange(1, 11) > threshold) == pytest.approx(0.2)


def test_state_dict_resume_keeps_streak_and_hinted_flag():
    clipper = GradClipper(max_norm=1.0, patience=3)
    for _ in range(2):
        _feed(clipper, [5.0, 6.0, 7.0])
        assert clipper.epoch_summary()["hint"] is None
    resumed = GradClipper(max_norm=1.0, patience=3)
    resumed.load_state_dict(clipper.state_dict())
    _feed(resumed, [5.0, 6.0, 7.0])
    hint = resumed.epoch_summary()["hint"]  # third epoch counted across the resume
    assert hint is not None
    # ties: of 5/6/7 the closest to 20 % clipped is a threshold of 6 (clips the 7s, 33 %)
    assert _hint_threshold(hint) == 6.0 and "would clip ~33%" in hint
    again = GradClipper(max_norm=1.0, patience=3)
    again.load_state_dict(resumed.state_dict())
    for _ in range(3):
        _feed(again, [5.0, 6.0, 7.0])
        assert again.epoch_summary()["hint"] is None  # already hinted before the resume
    assert again.total_steps == 18


def test_bad_settings_are_grace_errors():
    with pytest.raises(GraceError):
        GradClipper(max_norm=-1.0)
    with pytest.raises(GraceError):
        GradClipper(mode="elementwise")


@pytest.mark.parametrize("mode", ["norm", "value"])
def test_threshold_zero_turns_clipping_off_but_keeps_measuring(mode):
    clipper = GradClipper(max_norm=0.0, mode=mode, patience=1)
    params = _params_with_grads([300.0, 400.0])
    assert clipper.clip(params) == pytest.approx(500.0)
    assert torch.equal(_flat(params), torch.tensor([300.0, 400.0]))  # untouched
    summary = clipper.epoch_summary()
    assert summary["fraction"] == 0.0 and summary["mean"] == pytest.approx(500.0)
    assert summary["hint"] is None  # no band hint without a threshold
