"""ModelEma: update maths, call order, swap/restore, persistence, buffers policy."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from grace_rul.errors import GraceError
from grace_rul.stabilisers import ModelEma

torch.set_num_threads(1)


def _linear(w: list[float], b: float = 0.0) -> nn.Linear:
    m = nn.Linear(len(w), 1)
    with torch.no_grad():
        m.weight.copy_(torch.tensor([w]))
        m.bias.fill_(b)
    return m


def _set(model: nn.Linear, w: list[float], b: float) -> None:
    with torch.no_grad():
        model.weight.copy_(torch.tensor([w]))
        model.bias.fill_(b)


def test_hand_computed_after_one_and_two_updates():
    model = _linear([1.0, 2.0], b=4.0)
    ema = ModelEma(model, decay=0.9)
    _set(model, [11.0, 12.0], 14.0)
    ema.update(model)
    # 0.9 * [1, 2, 4] + 0.1 * [11, 12, 14]
    assert torch.allclose(ema.shadow[0], torch.tensor([[2.0, 3.0]]))
    assert torch.allclose(ema.shadow[1], torch.tensor([5.0]))
    _set(model, [0.0, 0.0], 0.0)
    ema.update(model)
    # 0.9 * [2, 3, 5] + 0.1 * 0
    assert torch.allclose(ema.shadow[0], torch.tensor([[1.8, 2.7]]))
    assert torch.allclose(ema.shadow[1], torch.tensor([4.5]))
    assert ema.num_updates == 2


def _train_step(model, opt, ema, x, y, ema_first: bool = False) -> list[torch.Tensor]:
    """One step of a training loop; returns the shadow before the EMA update.

    The correct order (docs/design.md §5) is optimizer.step() THEN ema.update(model).
    """
    old = [s.clone() for s in ema.shadow]
    opt.zero_grad()
    nn.functional.mse_loss(model(x).squeeze(-1), y).backward()
    if ema_first:  # the pitfall: averages the pre-step weights
        ema.update(model)
        opt.step()
    else:
        opt.step()
        ema.update(model)
    return old


@pytest.mark.parametrize("ema_first", [False, True])
def test_update_after_optimizer_step_uses_the_new_weights(ema_first):
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    ema = ModelEma(model, decay=0.9)
    x, y = torch.randn(8, 3), torch.randn(8)
    before_step = [p.detach().clone() for p in model.parameters()]
    old = _train_step(model, opt, ema, x, y, ema_first=ema_first)
    new = [p.detach() for p in model.parameters()]
    expected = [0.9 * o + 0.1 * n for o, n in zip(old, new)]
    matches = all(torch.allclose(s, e, atol=1e-6) for s, e in zip(ema.shadow, expected))
    # the correct order matches the formula on the post-step weights; the wrong order does not
    assert matches is (not ema_first)
    if ema_first:
        wrong = [0.9 * o + 0.1 * b for o, b in zip(old, before_step)]
        assert all(torch.allclose(s, w, atol=1e-6) for s, w in zip(ema.shadow, wrong))


def test_swapped_puts_ema_in_and_restores_live_exactly():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ema = ModelEma(model, decay=0.5)
    x, y = torch.randn(16, 3), torch.randn(16)
    for _ in range(3):
        _train_step(model, opt, ema, x, y)
    live = [p.detach().clone() for p in model.parameters()]
    params_before = list(model.parameters())
    shadow = [s.clone() for s in ema.shadow]
    assert not all(torch.equal(a, b) for a, b in zip(live, shadow))
    with ema.swapped(model) as m:
        assert m is model
        assert all(torch.equal(p, s) for p, s in zip(model.parameters(), shadow))
        inside = model(x)
    assert all(torch.equal(p, v) for p, v in zip(model.parameters(), live))
    assert all(torch.equal(s, v) for s, v in zip(ema.shadow, shadow))
    assert all(a is b for a, b in zip(model.parameters(), params_before))
    # the exported inference weights give the same outputs as the swapped-in model
    fresh = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    fresh.load_state_dict(ema.averaged_state_dict(model))
    assert torch.equal(fresh(x), inside)
    # training continues on the live weights (optimizer still bound to the same parameters)
    _train_step(model, opt, ema, x, y)
    assert not all(torch.equal(p, v) for p, v in zip(model.parameters(), live))


def test_swapped_restores_live_weights_when_the_body_raises():
    model = _linear([1.0, 2.0], b=3.0)
    ema = ModelEma(model, decay=0.9)
    _set(model, [5.0, 6.0], 7.0)
    ema.update(model)
    live = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match="boom"):
        with ema.swapped(model):
            assert not torch.equal(model.weight, live[0])
            raise ValueError("boom")
    assert all(torch.equal(p, v) for p, v in zip(model.parameters(), live))
    # and the EMA itself is intact and usable again
    assert torch.allclose(ema.shadow[0], torch.tensor([[1.4, 2.4]]))
    with ema.swapped(model):
        pass
    ema.update(model)


def test_update_while_swapped_is_refused():
    model = _linear([1.0])
    ema = ModelEma(model)
    with ema.swapped(model), pytest.raises(RuntimeError):
        ema.update(model)


def test_state_dict_round_trip_through_torch_save():
    model = _linear([1.0, 2.0], b=0.0)
    ema = ModelEma(model, decay=0.9, warmup=True)
    for v in (3.0, 5.0, 9.0):
        _set(model, [v, v], v)
        ema.update(model)
    buf = io.BytesIO()
    torch.save(ema.state_dict(), buf)
    buf.seek(0)
    other = ModelEma(_linear([0.0, 0.0]), decay=0.9, warmup=True)
    other.load_state_dict(torch.load(buf, weights_only=False))
    assert other.num_updates == 3
    assert all(torch.equal(a, b) for a, b in zip(other.shadow, ema.shadow))
    assert other.current_decay() == ema.current_decay()
    # the saved state is a copy: later updates do not change it
    saved = ema.state_dict()
    ema.update(model)
    assert not torch.equal(saved["shadow"]["weight"], ema.shadow[0])


def test_load_state_dict_for_another_model_is_a_grace_error():
    ema = ModelEma(_linear([1.0, 2.0]))
    with pytest.raises(GraceError, match="shape"):
        ModelEma(_linear([1.0, 2.0, 3.0])).load_state_dict(ema.state_dict())
    with pytest.raises(GraceError, match="does not match"):
        ModelEma(nn.Sequential(nn.Linear(2, 1))).load_state_dict(ema.state_dict())


def test_warmup_decay_formula():
    model = _linear([0.0])
    ema = ModelEma(model, decay=0.99, warmup=True)
    seen = []
    for t in range(1000):
        seen.append(ema.current_decay())
        if t == 0:
            _set(model, [10.0], 0.0)
        ema.update(model)
        if t == 0:
            # decay 0.1 on the first update: 0.1 * 0 + 0.9 * 10
            assert torch.allclose(ema.shadow[0], torch.tensor([[9.0]]))
    assert seen[0] == pytest.approx(0.1)
    assert seen[1] == pytest.approx(2 / 11)
    assert seen[100] == pytest.approx(101 / 110)
    assert seen[889] < 0.99  # (1 + t) / (10 + t) reaches 0.99 at t = 890 ...
    assert seen[890] == pytest.approx(0.99) and seen[-1] == 0.99  # ... and is capped there
    assert max(seen) == 0.99
    assert ModelEma(model, decay=0.99).current_decay() == 0.99


def test_buffers_come_from_the_live_model_not_averaged():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ema = ModelEma(model, decay=0.9)
    assert len(ema.shadow) == len(list(model.parameters()))  # parameters only
    for _ in range(4):
        x = torch.randn(32, 3) * 3 + 1
        _train_step(model, opt, ema, x, torch.randn(32))
    bn = model[1]
    live_mean = bn.running_mean.clone()
    assert not torch.equal(live_mean, torch.zeros(4))
    with ema.swapped(model):
        assert torch.equal(bn.running_mean, live_mean)
        assert int(bn.num_batches_tracked) == 4
    exported = ema.averaged_state_dict(model)
    assert torch.equal(exported["1.running_mean"], live_mean)
    assert torch.equal(exported["1.running_var"], bn.running_var)
    assert torch.equal(exported["0.weight"], ema.shadow[0])
    # a copy: training on does not change the export
    _train_step(model, opt, ema, torch.randn(32, 3), torch.randn(32))
    assert torch.equal(exported["1.running_mean"], live_mean)
    assert not torch.equal(exported["0.weight"], ema.shadow[0])


def test_frozen_parameters_are_not_shadowed_and_export_live():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    model[0].weight.requires_grad_(False)
    ema = ModelEma(model, decay=0.5)
    assert len(ema.shadow) == 3
    exported = ema.averaged_state_dict(model)
    assert torch.equal(exported["0.weight"], model[0].weight)


def test_bad_decay_is_a_grace_error():
    with pytest.raises(GraceError):
        ModelEma(_linear([1.0]), decay=1.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_shadow_follows_the_model_device():
    model = _linear([1.0, 2.0])
    ema = ModelEma(model, decay=0.5)
    model.cuda()
    ema.update(model)
    assert ema.shadow[0].device.type == "cuda"
    with ema.swapped(model):
        assert model.weight.device.type == "cuda"


@pytest.mark.parametrize("warmup", [False, True])
def test_decay_zero_means_no_averaging(warmup):
    """``train.ema_decay=0`` (the sweep's "EMA off"): the EMA weights are the live weights."""
    model = _linear([1.0, 2.0], 0.5)
    ema = ModelEma(model, decay=0.0, warmup=warmup)
    _set(model, [3.0, -4.0], 0.25)
    ema.update(model)
    with ema.swapped(model):
        assert torch.equal(model.weight.detach(), torch.tensor([[3.0, -4.0]]))
        assert torch.equal(model.bias.detach(), torch.tensor([0.25]))
