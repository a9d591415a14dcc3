"""Balancer zoo: each method against its paper's formula on tiny hand-built problems,
the gradient engine against plain autograd, and every registered balancer training
the real DualTaskNet for a few steps."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from grace_rul.backbones import build_model
from grace_rul.balancers import BALANCERS, TaskGrads, balance_backward, build_balancer
from grace_rul.balancers.alignedmtl import balance_transform
from grace_rul.balancers.cagrad import cagrad_objective, cagrad_weights
from grace_rul.balancers.gaba import GABA
from grace_rul.balancers.imtl import imtl_weights
from grace_rul.balancers.mgda import min_norm_weights
from grace_rul.balancers.nashmtl import nash_alpha
from grace_rul.balancers.pcgrad import pcgrad_coefficients
from grace_rul.errors import GraceError
from grace_rul.losses import task_losses
from grace_rul.resolve import resolve_config

torch.set_num_threads(1)

LOSSES = torch.tensor([1.0, 2.0])


def tg(rows, last: slice | None = None) -> TaskGrads:
    m = torch.tensor(rows, dtype=torch.float32)
    return TaskGrads(matrix=m, last_layer=last or slice(0, m.shape[1]))


# ---------------------------------------------------------------- GABA / GRACE


def test_gaba_worked_example():
    gaba = build_balancer("gaba", {"warmup_steps": 0, "beta": 0.0})
    comb = gaba.combine(LOSSES, tg([[41.5, 0.0], [0.0, 0.082]]))
    assert torch.allclose(comb.raw, torch.tensor([0.001972, 0.998028]), atol=1e-6)
    assert torch.allclose(comb.weights, torch.tensor([0.0477, 0.9523]), atol=1e-4)
    # the floor: 0.05 / (0.05 + 0.998028) exactly
    assert comb.weights[0].item() == pytest.approx(0.05 / 1.048028, abs=1e-6)


def test_gaba_ema_step_response():
    gaba = build_balancer("gaba", {"warmup_steps": 0, "floor": 0.0})
    grads = tg([[0.998, 0.0], [0.0, 0.002]])  # inverse-norm weights exactly (0.002, 0.998)
    for _ in range(100):
        comb = gaba.combine(LOSSES, grads)
    assert torch.allclose(comb.raw, torch.tensor([0.002, 0.998]), atol=1e-6)
    assert torch.allclose(comb.smoothed, torch.tensor([0.184284, 0.815718]), atol=2e-6)
    assert torch.allclose(comb.weights, comb.smoothed, atol=1e-6)


def test_gaba_warmup_is_uniform_for_100_steps_then_not():
    gaba = build_balancer("gaba")
    grads = tg([[5.0, 0.0], [0.0, 0.1]])
    for _ in range(100):
        assert torch.equal(gaba.combine(LOSSES, grads).weights, torch.tensor([0.5, 0.5]))
    after = gaba.combine(LOSSES, grads).weights
    assert after[1] > 0.6  # the EMA has moved towards the small-norm task meanwhile


def test_gaba_state_dict_round_trip_does_not_rewarm():
    gaba = build_balancer("gaba", {"warmup_steps": 5})
    grads = tg([[3.0, 0.0], [0.0, 1.0]])
    for _ in range(7):
        gaba.combine(LOSSES, grads)
    state = gaba.state_dict()
    assert set(state) == {"smoothed", "step"}
    fresh = build_balancer("gaba", {"warmup_steps": 5})
    fresh.load_state_dict(state)
    assert int(fresh.step) == 7
    assert torch.equal(fresh.smoothed, gaba.smoothed)
    nxt = fresh.combine(LOSSES, grads)
    assert not torch.allclose(nxt.weights, torch.tensor([0.5, 0.5]))
    assert torch.allclose(nxt.weights, gaba.combine(LOSSES, grads).weights)


def test_gaba_weights_are_detached():
    gaba = build_balancer("gaba", {"warmup_steps": 0})
    m = torch.tensor([[2.0, 1.0], [0.5, 0.0]], requires_grad=True)
    comb = gaba.combine(LOSSES, TaskGrads(matrix=m * 1.0, last_layer=slice(0, 2)))
    assert not comb.weights.requires_grad
    assert not gaba.smoothed.requires_grad
    assert not comb.smoothed.requires_grad


def test_gaba_without_smoothing_is_the_raw_inverse_norm_rule():
    gen = torch.Generator().manual_seed(0)
    gaba = build_balancer("gaba", {"warmup_steps": 0, "beta": 0.0, "floor": 0.0}, num_tasks=3)
    for _ in range(25):
        m = torch.randn(3, 7, generator=gen) * torch.rand(3, 1, generator=gen) * 10
        n = m.norm(dim=1)
        expected = (1 / n) / (1 / n).sum()
        got = gaba.combine(torch.ones(3), TaskGrads(matrix=m, last_layer=slice(0, 7))).weights
        assert torch.allclose(got, expected, rtol=1e-5)


def test_grace_is_gaba_plus_the_weight_decay_schedule_setting():
    grace = build_balancer("grace")
    assert isinstance(grace, GABA) and grace.needs_task_grads
    chosen = resolve_config("tiny", overrides={"balancer": {"name": "grace"}})
    assert chosen.train.weight_decay_schedule == [[100, 0.5], [200, 0.1]]
    assert resolve_config("tiny").train.weight_decay_schedule == []  # gaba: none
    own = {"balancer": {"name": "grace"}, "train": {"weight_decay_schedule": [[5, 0.2]]}}
    assert resolve_config("tiny", overrides=own).train.weight_decay_schedule == [[5, 0.2]]


# ---------------------------------------------------------------- loss-weighting methods


def test_fixed_weights_are_normalised():
    comb = build_balancer("fixed", {"weights": [1, 3]}).combine(LOSSES, None)
    assert torch.allclose(comb.weights, torch.tensor([0.25, 0.75]))
    comb = build_balancer("fixed", {"weights": [0, 2, 2]}, num_tasks=3).combine(torch.ones(3), None)
    assert torch.allclose(comb.weights, torch.tensor([0.0, 0.5, 0.5]))


def test_uncertainty_loss_and_weights():
    unc = build_balancer("uncertainty")
    assert torch.equal(unc.log_var.detach(), torch.zeros(2))
    with torch.no_grad():
        unc.log_var.copy_(torch.tensor([0.5, -1.0]))
    losses = torch.tensor([2.0, 3.0])
    w = unc.combine(losses, None).weights
    assert torch.allclose(w, torch.tensor([math.exp(-0.5), math.exp(1.0)]))
    assert not w.requires_grad
    aux = unc.auxiliary_loss(losses, None)
    assert aux.item() == pytest.approx(math.exp(-0.5) * 2 + 0.5 + math.exp(1.0) * 3 - 1.0, rel=1e-6)
    aux.backward()
    # d/ds [exp(-s) L + s] = 1 - exp(-s) L
    expected = torch.tensor([1 - math.exp(-0.5) * 2, 1 - math.exp(1.0) * 3])
    assert torch.allclose(unc.log_var.grad, expected, rtol=1e-6)


def test_dwa_weights_from_loss_history():
    dwa = build_balancer("dwa")
    assert torch.equal(dwa.combine(LOSSES, None).weights, torch.tensor([0.5, 0.5]))
    dwa.end_epoch(0, torch.tensor([1.0, 2.0]))
    assert torch.equal(dwa.combine(LOSSES, None).weights, torch.tensor([0.5, 0.5]))
    dwa.end_epoch(1, torch.tensor([0.5, 1.8]))
    r = [0.5 / 1.0, 1.8 / 2.0]
    e = [math.exp(x / 2.0) for x in r]
    expected = torch.tensor([e[0] / sum(e), e[1] / sum(e)])
    assert torch.allclose(dwa.combine(LOSSES, None).weights, expected, atol=1e-6)
    dwa.end_epoch(2, torch.tensor([0.25, 1.8]))  # ratios now (0.5, 1.0)
    e = [math.exp(0.25), math.exp(0.5)]
    assert torch.allclose(dwa.combine(LOSSES, None).weights, torch.tensor(e) / sum(e), atol=1e-6)
    resumed = build_balancer("dwa")
    resumed.load_state_dict(dwa.state_dict())
    assert torch.equal(resumed.combine(LOSSES, None).weights, dwa.combine(LOSSES, None).weights)
    dwa.end_epoch(3, torch.tensor([float("nan"), 1.0]))  # not recorded
    assert int(dwa.epochs_seen) == 3


def test_gradnorm_targets_and_gradient_on_w():
    gn = build_balancer("gradnorm")
    # last-layer columns 2:4, norms (1, 2)
    grads = tg([[3.0, 4.0, 1.0, 0.0], [0.0, 0.0, 0.0, 2.0]], last=slice(2, 4))
    # step 1 stores L(0); r = 1 so every target is mean(G) = 1.5
    first = gn.combine(torch.tensor([2.0, 4.0]), grads).weights
    assert torch.equal(first, torch.tensor([0.5, 0.5]))
    aux = gn.auxiliary_loss(torch.tensor([2.0, 4.0]), grads)
    assert torch.equal(gn.initial_losses, torch.tensor([2.0, 4.0]))
    assert aux.item() == pytest.approx(1.0)
    aux.backward()
    assert torch.allclose(gn.task_weights.grad, torch.tensor([-1.0, 2.0]))  # sign(G - t) * norm
    # step 2 with w = (1.2, 0.8) and losses (1, 3)
    gn.task_weights.grad = None
    with torch.no_grad():
        gn.task_weights.copy_(torch.tensor([1.2, 0.8]))
    losses = torch.tensor([1.0, 3.0])
    rates = [1.0 / 2.0, 3.0 / 4.0]
    r = [x / (sum(rates) / 2) for x in rates]
    g = [1.2 * 1.0, 0.8 * 2.0]
    target = [sum(g) / 2 * ri**1.5 for ri in r]
    assert torch.allclose(gn.targets(losses, torch.tensor([1.0, 2.0])), torch.tensor(target))
    aux = gn.auxiliary_loss(losses, grads)
    assert aux.item() == pytest.approx(abs(g[0] - target[0]) + abs(g[1] - target[1]), rel=1e-6)
    aux.backward()
    assert torch.allclose(gn.task_weights.grad, torch.tensor([1.0, -2.0]))
    assert torch.allclose(gn.combine(losses, grads).weights, torch.tensor([0.6, 0.4]))
    with torch.no_grad():
        gn.task_weights.copy_(torch.tensor([1.5, 1.0]))
    gn.after_step()
    assert torch.allclose(gn.task_weights.detach(), torch.tensor([1.2, 0.8]))
    fresh = build_balancer("gradnorm")
    fresh.load_state_dict(gn.state_dict())
    assert bool(fresh.has_initial) and torch.equal(fresh.initial_losses, gn.initial_losses)


# ---------------------------------------------------------------- gradient-direction methods


def test_pcgrad_projects_conflicting_gradients():
    pc = build_balancer("pcgrad")
    # g1 . g2 = -1: g1' = g1 + g2 / 2 = (0.5, 0.5), g2' = g2 + g1 = (0, 1); mean (0.25, 0.75)
    comb = pc.combine(LOSSES, tg([[1.0, 0.0], [-1.0, 1.0]]))
    assert torch.allclose(comb.shared_grad, torch.tensor([0.25, 0.75]))
    assert torch.equal(comb.weights, torch.tensor([0.5, 0.5]))
    # no conflict: untouched, the plain mean
    comb = pc.combine(LOSSES, tg([[1.0, 0.0], [1.0, 1.0]]))
    assert torch.allclose(comb.shared_grad, torch.tensor([1.0, 0.5]))


def _pcgrad_direct(g: torch.Tensor, orders: list[list[int]]) -> torch.Tensor:
    out = []
    for i in range(g.shape[0]):
        v = g[i].clone()
        for j in orders[i]:
            dot = v @ g[j]
            if dot < 0:
                v = v - dot / (g[j] @ g[j]) * g[j]
        out.append(v)
    return torch.stack(out).mean(0)


def test_pcgrad_coefficients_match_vector_space_algorithm():
    gen = torch.Generator().manual_seed(3)
    g = torch.randn(3, 6, generator=gen, dtype=torch.float64)
    for orders in ([[1, 2], [0, 2], [0, 1]], [[2, 1], [2, 0], [1, 0]]):
        coef = pcgrad_coefficients(g @ g.T, orders)
        assert torch.allclose(coef.mean(0) @ g, _pcgrad_direct(g, orders))


def test_pcgrad_random_order_resumes():
    a = build_balancer("pcgrad", {"seed": 5}, num_tasks=4)
    for _ in range(3):
        a._orders()
    b = build_balancer("pcgrad", {"seed": 5}, num_tasks=4)
    b.load_state_dict(a.state_dict())
    assert [a._orders() for _ in range(5)] == [b._orders() for _ in range(5)]


def _cagrad_direct(g: torch.Tensor, w: torch.Tensor, c: float) -> torch.Tensor:
    g0 = g.mean(0)
    gw = w @ g
    return (g0 + c * g0.norm() / gw.norm() * gw) / (1 + c**2)


@pytest.mark.parametrize("seed", range(6))
def test_cagrad_two_tasks_matches_grid_minimisation(seed):
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(2, 5, generator=gen, dtype=torch.float64)
    g[1] *= float(torch.rand(1, generator=gen)) * 4
    if seed % 2:
        g[1] = -0.8 * g[0] + 0.3 * g[1]  # strongly conflicting
    gram, c = g @ g.T, 0.4
    w = cagrad_weights(gram, c)
    sqrt_phi = c * g.mean(0).norm().item()
    grid = torch.linspace(0, 1, 200_001, dtype=torch.float64)
    ws = torch.stack([grid, 1 - grid], 1)
    vals = ws @ gram.mean(1) + sqrt_phi * ((ws @ gram) * ws).sum(1).clamp_min(0).sqrt()
    best = ws[vals.argmin()]
    assert cagrad_objective(w, gram, sqrt_phi).item() <= vals.min().item() + 1e-12
    assert torch.allclose(w, best, atol=1e-4)
    comb = build_balancer("cagrad").combine(LOSSES, TaskGrads(matrix=g, last_layer=slice(0, 5)))
    assert torch.allclose(comb.shared_grad, _cagrad_direct(g, w, c), atol=1e-9)


def test_cagrad_three_tasks_matches_grid_and_c0_is_mean():
    gen = torch.Generator().manual_seed(11)
    g = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    gram = g @ g.T
    w = cagrad_weights(gram, 0.4)
    assert torch.all(w >= 0) and w.sum().item() == pytest.approx(1.0)
    sqrt_phi = 0.4 * g.mean(0).norm().item()
    n = 400
    pts = [(i / n, j / n, (n - i - j) / n) for i in range(n + 1) for j in range(n + 1 - i)]
    ws = torch.tensor(pts, dtype=torch.float64)
    vals = ws @ gram.mean(1) + sqrt_phi * ((ws @ gram) * ws).sum(1).clamp_min(0).sqrt()
    assert cagrad_objective(w, gram, sqrt_phi).item() <= vals.min().item() + 1e-9
    comb = build_balancer("cagrad", {"c": 0.0}, num_tasks=3).combine(
        torch.ones(3), TaskGrads(matrix=g, last_layer=slice(0, 4))
    )
    assert torch.allclose(comb.shared_grad, g.mean(0))


def test_mgda_two_task_closed_form_and_frank_wolfe():
    g1, g2 = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])
    alpha = ((g2 - g1) @ g2 / (g1 - g2).norm() ** 2).clamp(0, 1).item()  # 3 / 5
    comb = build_balancer("mgda").combine(LOSSES, TaskGrads(torch.stack([g1, g2]), slice(0, 2)))
    assert torch.allclose(comb.weights, torch.tensor([alpha, 1 - alpha]))
    assert alpha == pytest.approx(0.6)
    # one gradient inside the other's half-space: clipped to the smaller gradient
    comb = build_balancer("mgda").combine(LOSSES, tg([[2.0, 0.0], [0.5, 0.1]]))
    assert torch.allclose(comb.weights, torch.tensor([0.0, 1.0]))
    gen = torch.Generator().manual_seed(2)
    g = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    w = min_norm_weights(g @ g.T)
    n = 300
    pts = [(i / n, j / n, (n - i - j) / n) for i in range(n + 1) for j in range(n + 1 - i)]
    ws = torch.tensor(pts, dtype=torch.float64)
    assert (w @ g).norm().item() <= (ws @ g).norm(dim=1).min().item() + 1e-6


@pytest.mark.parametrize("k", [2, 3, 4])
def test_imtl_equal_projections(k):
    gen = torch.Generator().manual_seed(k)
    g = torch.randn(k, 8, generator=gen, dtype=torch.float64) * torch.rand(k, 1, generator=gen) * 5
    w = imtl_weights(g @ g.T)
    assert w.sum().item() == pytest.approx(1.0)
    proj = (w @ g) @ (g / g.norm(dim=1, keepdim=True)).T
    assert torch.allclose(proj, proj[0].expand_as(proj), rtol=1e-8)
    if k == 2:  # reduces to the inverse-norm rule
        n = g.norm(dim=1)
        assert torch.allclose(w, torch.stack([n[1], n[0]]) / n.sum())
    comb = build_balancer("imtl", num_tasks=k).combine(
        torch.ones(k), TaskGrads(matrix=g.float(), last_layer=slice(0, 8))
    )
    assert torch.allclose(comb.weights.double(), w, atol=1e-5)


# ---------------------------------------------------------------- GABA's nearest relatives


@pytest.mark.parametrize("k", [2, 3])
def test_dbmtl_log_gradients_ema_and_max_norm_rescaling(k):
    """DB-MTL against Lin et al.'s rule, written out with vectors over three steps."""
    gen = torch.Generator().manual_seed(10 + k)
    db = build_balancer("dbmtl", num_tasks=k)  # beta 0.9, beta_t = 0.9 / t^0.5
    ema = torch.zeros(k, 5, dtype=torch.float64)
    for t in range(1, 4):
        g = torch.randn(k, 5, generator=gen, dtype=torch.float64) * torch.rand(k, 1, generator=gen)
        losses = torch.rand(k, generator=gen, dtype=torch.float64) * 50 + 0.1
        comb = db.combine(losses, TaskGrads(matrix=g, last_layer=slice(0, 5)))
        beta_t = 0.9 / t**0.5
        ema = beta_t * ema + (1 - beta_t) * g / (losses[:, None] + 1e-8)
        n = ema.norm(dim=1)
        expected = sum(n.max() / n[i] * ema[i] for i in range(k)) / k
        assert torch.allclose(comb.shared_grad, expected, rtol=1e-10)
        # every rescaled EMA gradient has the largest norm
        assert torch.allclose((n.max() / n)[:, None].mul(ema).norm(dim=1), n.max().expand(k))
        assert torch.allclose(comb.head_weights, 1 / (k * (losses + 1e-8)))
        assert comb.weights.sum().item() == pytest.approx(1.0)
    # a constant beta (LibMTL's beta_sigma = 0) and a resume that keeps the EMA vectors
    const = build_balancer("dbmtl", {"beta_sigma": 0}, num_tasks=k)
    g = torch.ones(k, 5, dtype=torch.float64)
    const.combine(torch.ones(k, dtype=torch.float64), TaskGrads(g, slice(0, 5)))
    assert torch.allclose(const.ema_grads, 0.1 * g / (1 + 1e-8))
    fresh = build_balancer("dbmtl", num_tasks=k)
    fresh.load_state_dict(db.state_dict())
    assert torch.equal(fresh.ema_grads, db.ema_grads) and int(fresh.step) == 3
    empty = build_balancer("dbmtl", num_tasks=k).state_dict()
    db.load_state_dict(empty)  # a skipped first step restores the empty buffer
    assert db.ema_grads.numel() == 0


def test_famo_weights_and_logit_update_follow_algorithm_1():
    famo = build_balancer("famo", num_tasks=3)
    logits = torch.tensor([0.3, -0.2, 0.1])
    with torch.no_grad():
        famo.logits.copy_(logits)
    before = torch.tensor([4.0, 0.5, 2.0])
    comb = famo.combine(before, None)
    z = torch.softmax(logits, 0)
    # the gradient of sum z_i log L_i / c with c = sum z_i / L_i, on the raw losses
    w = (z / (before + 1e-8)) / (z / (before + 1e-8)).sum()
    assert torch.allclose(comb.weights, w) and comb.weights.sum().item() == pytest.approx(1.0)
    lp = before.clone().requires_grad_(True)
    c = (z / lp).sum().detach()
    (torch.log(lp) * z / c).sum().backward()
    assert torch.allclose(lp.grad, w, atol=1e-6)
    after = torch.tensor([3.0, 0.45, 2.2])
    famo.after_step(losses_after=after)
    # reference: autograd of softmax(xi) . delta, plus gamma xi, through torch's Adam
    xi = logits.clone().requires_grad_(True)
    opt = torch.optim.Adam([xi], lr=0.025, weight_decay=1e-5)
    delta = torch.log(before + 1e-8) - torch.log(after + 1e-8)
    xi.grad = torch.autograd.grad(torch.softmax(xi, 0) @ delta, xi)[0]
    opt.step()
    assert torch.allclose(famo.logits, xi.detach(), atol=1e-7)
    # a second step, and the state survives a round trip
    famo.combine(after, None)
    famo.after_step(losses_after=after * 0.9)
    xi.grad = torch.autograd.grad(
        torch.softmax(xi, 0) @ (-torch.log(torch.tensor(0.9)).expand(3)), xi
    )[0]
    opt.step()
    assert torch.allclose(famo.logits, xi.detach(), atol=1e-7)
    fresh = build_balancer("famo", num_tasks=3)
    fresh.load_state_dict(famo.state_dict())
    assert torch.equal(fresh.combine(after, None).weights, famo.combine(after, None).weights)
    famo.after_step(losses_after=torch.tensor([float("nan"), 1.0, 1.0]))  # ignored
    assert torch.allclose(famo.logits, fresh.logits)
    with pytest.raises(RuntimeError, match="losses_after"):
        famo.after_step()


def test_famo_favours_the_task_that_improves_less():
    famo = build_balancer("famo")
    for _ in range(20):
        famo.combine(torch.tensor([1.0, 1.0]), None)
        famo.after_step(losses_after=torch.tensor([0.9, 1.0]))  # task 1 improves, task 2 not
    z = torch.softmax(famo.logits, 0)
    assert z[1] > z[0]


@pytest.mark.parametrize("k", [2, 3])
def test_nashmtl_solves_the_bargaining_equation(k):
    gen = torch.Generator().manual_seed(20 + k)
    for _ in range(5):
        g = torch.randn(k, 6, generator=gen, dtype=torch.float64) * torch.rand(k, 1, generator=gen)
        gram = g @ g.T
        alpha = nash_alpha(gram)
        m = gram / torch.linalg.matrix_norm(gram)
        assert bool((alpha > 0).all())
        assert torch.allclose(m @ alpha, 1 / alpha, rtol=1e-8)
        if k == 2:  # closed form: alpha_i = 1 / (n_i sqrt(1 + cos)) of the normalised Gram
            n = m.diagonal().sqrt()
            cos = m[0, 1] / (n[0] * n[1])
            assert torch.allclose(alpha, 1 / (n * (1 + cos).sqrt()))
        comb = build_balancer("nashmtl", num_tasks=k).combine(
            torch.ones(k), TaskGrads(matrix=g, last_layer=slice(0, 6))
        )
        assert torch.allclose(comb.weights, (alpha / alpha.sum()).to(comb.weights))
    # exactly opposite gradients: no positive solution, the previous weights are kept
    assert nash_alpha(torch.tensor([[1.0, -1.0], [-1.0, 1.0]], dtype=torch.float64)) is None
    nash = build_balancer("nashmtl")
    assert torch.equal(nash.combine(LOSSES, tg([[1.0, 0.0], [-1.0, 0.0]])).weights,
                       torch.tensor([0.5, 0.5]))  # fmt: skip


def test_nashmtl_update_weights_every_reuses_weights_without_task_grads():
    nash = build_balancer("nashmtl", {"update_weights_every": 3})
    assert nash.needs_task_grads
    first = nash.combine(LOSSES, tg([[3.0, 0.0], [0.0, 1.0]])).weights
    assert torch.allclose(first, torch.tensor([0.25, 0.75]))
    for _ in range(2):
        assert not nash.needs_task_grads
        assert torch.equal(nash.combine(LOSSES, None).weights, first)
    assert nash.needs_task_grads
    assert torch.allclose(nash.combine(LOSSES, tg([[1.0, 0.0], [0.0, 1.0]])).weights,
                          torch.tensor([0.5, 0.5]))  # fmt: skip


@pytest.mark.parametrize("k", [2, 3])
def test_alignedmtl_aligned_gradients_are_orthogonal_with_the_smallest_singular_value(k):
    gen = torch.Generator().manual_seed(30 + k)
    g = torch.randn(k, 7, generator=gen, dtype=torch.float64) * torch.rand(k, 1, generator=gen) * 3
    b = balance_transform(g @ g.T)
    aligned = b @ g
    sigma_min = torch.linalg.svdvals(g).min()
    # condition number 1: every principal component has the smallest singular value
    assert torch.allclose(aligned @ aligned.T, sigma_min**2 * torch.eye(k, dtype=g.dtype))
    assert torch.allclose(torch.linalg.svdvals(aligned), sigma_min.expand(k))
    # the aligned system keeps G's principal directions (B = sigma_min V L^-1/2 V^T)
    u, s, vh = torch.linalg.svd(g, full_matrices=False)
    assert torch.allclose(b, sigma_min * u @ torch.diag(1 / s) @ u.T)
    comb = build_balancer("alignedmtl", num_tasks=k).combine(
        torch.ones(k), TaskGrads(matrix=g, last_layer=slice(0, 7))
    )
    assert torch.allclose(comb.shared_grad, aligned.mean(0))
    # rank 1 (parallel gradients): the aligned system collapses onto the one direction
    par = torch.tensor([[1.0, 2.0], [2.0, 4.0]], dtype=torch.float64)
    out = balance_transform(par @ par.T) @ par
    assert torch.allclose(torch.linalg.svdvals(out)[0], torch.linalg.svdvals(par)[0])


# ---------------------------------------------------------------- options and registry


@pytest.mark.parametrize(
    ("name", "options", "words"),
    [
        ("fixed", {"weights": [1.0, -0.5]}, "non-negative"),
        ("fixed", {"weights": [1.0, 2.0, 3.0]}, "needs 2 values"),
        ("fixed", {"weights": [0.0, 0.0]}, "all be zero"),
        ("fixed", {}, "needs the option 'weights'"),
        ("dwa", {"temperature": 0}, "temperature"),
        ("dwa", {"temperature": -2}, "temperature"),
        ("gaba", {"floor": 0.5}, "floor"),
        ("grace", {"floor": 0.7}, "floor"),
        ("cagrad", {"c": -0.1}, "c must be"),
        ("gradnorm", {"alpha": -1}, "alpha"),
        ("pcgrad", {"bogus": 1}, "bad options"),
        ("dbmtl", {"beta": 1.0}, "beta"),
        ("famo", {"lr": 0}, "lr"),
        ("nashmtl", {"update_weights_every": 0}, "update_weights_every"),
        ("nashmtl", {"update_weights_every": 2.5}, "update_weights_every"),
    ],
)
def test_bad_options_raise_grace_error(name, options, words):
    with pytest.raises(GraceError, match=words):
        build_balancer(name, options)


def test_unknown_balancer_lists_valid_names():
    with pytest.raises(GraceError) as err:
        build_balancer("nope")
    for name in ("gaba", "grace", "pcgrad", "cagrad", "mgda", "imtl", "dwa", "gradnorm", "dbmtl",
                 "famo", "nashmtl", "alignedmtl"):  # fmt: skip
        assert name in str(err.value)


# ---------------------------------------------------------------- the gradient engine


class _CountBackward(torch.autograd.Function):
    calls = 0

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        _CountBackward.calls += 1
        return grad


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.shared = nn.Linear(3, 4)
        self.unused = nn.Parameter(torch.ones(2))  # in the shared list, reached by no task
        self.heads = nn.ModuleList([nn.Linear(4, 1), nn.Linear(4, 2)])

    def forward(self, x, y):
        z = _CountBackward.apply(torch.tanh(self.shared(x)))
        l1 = ((self.heads[0](z).squeeze(-1) - y) ** 2).mean()
        l2 = (self.heads[1](z) ** 2).mean()
        return torch.stack([l1, l2]), z


def _data():
    gen = torch.Generator().manual_seed(1)
    return torch.randn(5, 3, generator=gen), torch.randn(5, generator=gen)


def _params(model):
    return [model.shared.weight, model.shared.bias, model.unused], [
        list(h.parameters()) for h in model.heads
    ]


def _reference(model, weights):
    """Plain autograd: the gradient of sum_i w_i L_i on every parameter."""
    x, y = _data()
    losses, _ = model(x, y)
    shared, heads = _params(model)
    params = shared[:2] + [p for h in heads for p in h]
    return torch.autograd.grad((weights * losses).sum(), params)


@pytest.mark.parametrize("scale", [1.0, 8.0])
def test_engine_params_mode_writes_weighted_task_grads_with_k_backwards(scale):
    model = _Tiny()
    x, y = _data()
    losses, _ = model(x, y)
    shared, heads = _params(model)
    # per-task gradients by hand, for the expected weights
    g = [torch.cat([t.reshape(-1) for t in torch.autograd.grad(losses[i], shared[:2],
                                                               retain_graph=True)])
         for i in range(2)]  # fmt: skip
    n = torch.stack([gi.norm() for gi in g])
    w = (1 / n) / (1 / n).sum()
    gaba = build_balancer("gaba", {"warmup_steps": 0, "beta": 0.0, "floor": 0.0})
    _CountBackward.calls = 0
    out = balance_backward(gaba, losses, shared, heads, last_layer_params=2, scale=scale)
    assert _CountBackward.calls == 2  # one backward per task, none of the weighted total
    assert out.finite and torch.allclose(out.combination.weights, w)
    assert torch.allclose(out.task_norms, n)
    ref = _reference(model, w)
    got = [model.shared.weight.grad, model.shared.bias.grad] + [p.grad for h in heads for p in h]
    for a, b in zip(got, ref):
        assert torch.allclose(a, b * scale, rtol=1e-5, atol=1e-7)
    assert model.unused.grad is None
    # each head carries only its own task's weighted gradient
    head0 = torch.autograd.grad(model(x, y)[0][0], list(model.heads[0].parameters()))
    assert torch.allclose(model.heads[0].weight.grad, w[0] * head0[0] * scale, rtol=1e-5)


def test_engine_loss_only_balancer_single_backward_and_sampled_stats():
    model = _Tiny()
    x, y = _data()
    shared, heads = _params(model)
    fixed = build_balancer("fixed", {"weights": [1.0, 3.0]})
    w = torch.tensor([0.25, 0.75])
    _CountBackward.calls = 0
    out = balance_backward(fixed, model(x, y)[0], shared, heads)
    assert _CountBackward.calls == 1 and out.task_norms is None
    first = [p.grad.clone() for p in shared[:2]]
    for a, b in zip(first, _reference(model, w)):
        assert torch.allclose(a, b, rtol=1e-5)
    model.zero_grad(set_to_none=True)
    _CountBackward.calls = 0
    out = balance_backward(fixed, model(x, y)[0], shared, heads, want_task_grads=True)
    assert _CountBackward.calls == 2 and out.task_norms is not None and -1 <= out.cosine <= 1
    for a, b in zip(first, [p.grad for p in shared[:2]]):
        assert torch.allclose(a, b, rtol=1e-5)


@pytest.mark.parametrize("name", ["gaba", "mgda", "imtl"])
def test_engine_representation_mode_one_backbone_backward(name):
    model = _Tiny()
    x, y = _data()
    losses, z = model(x, y)
    zg = torch.stack([torch.autograd.grad(losses[i], z, retain_graph=True)[0].reshape(-1)
                      for i in range(2)])  # fmt: skip
    opts = {"warmup_steps": 0, "beta": 0.0, "floor": 0.0} if name == "gaba" else {}
    expected_w = (
        build_balancer(name, opts)
        .combine(losses.detach(), TaskGrads(zg, slice(0, zg.shape[1]), "representation"))
        .weights
    )
    shared, heads = _params(model)
    _CountBackward.calls = 0
    out = balance_backward(build_balancer(name, opts), losses, shared, heads,
                           representation=z, grad_source="representation")  # fmt: skip
    assert _CountBackward.calls == 1
    assert torch.allclose(out.combination.weights, expected_w)
    got = [model.shared.weight.grad, model.shared.bias.grad] + [p.grad for h in heads for p in h]
    head_w = torch.ones(2) if name == "mgda" else expected_w  # MGDA: heads unweighted
    want = _reference(model, expected_w)[:2] + _reference(model, head_w)[2:]
    for a, b in zip(got, want):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)


def test_mgda_heads_get_their_own_unweighted_gradient():
    """Sener & Koltun update task-specific parameters with each task's own gradient: with
    MGDA weights like (0, 1) the first head still learns."""
    model = _Tiny()
    x, y = _data()
    losses, _ = model(x, y)
    shared, heads = _params(model)
    # g1 = -g2 on the shared part -> the min-norm point puts weight 1/2 each; scale task 2's
    # loss so that its gradient dominates and the min-norm weights become one-sided.
    losses = losses * torch.tensor([1.0, 0.0]) + torch.tensor([0.0, 1.0]) * losses.detach()
    out = balance_backward(build_balancer("mgda"), losses, shared, heads)
    w = out.combination.weights
    assert torch.allclose(out.combination.head_weights, torch.ones(2))
    own = torch.autograd.grad(model(x, y)[0][0], list(model.heads[0].parameters()))
    assert torch.allclose(model.heads[0].weight.grad, own[0], rtol=1e-5)  # not w[0] * own
    assert float(w.sum()) == pytest.approx(1.0)


def test_engine_can_leave_the_finite_check_to_the_caller():
    model = _Tiny()
    x, y = _data()
    shared, heads = _params(model)
    out = balance_backward(build_balancer("gaba"), model(x, y)[0], shared, heads)
    assert isinstance(out.finite, torch.Tensor) and bool(out.finite)
    model.zero_grad(set_to_none=True)
    gaba = build_balancer("gaba")
    losses = model(x, y)[0] * float("nan")
    out = balance_backward(gaba, losses, shared, heads)
    assert not bool(out.finite)  # no early return: the caller skips the step and restores
    assert int(gaba.step) == 1


def test_learnable_balancer_parameters_train():
    for name, attr in (("uncertainty", "log_var"), ("gradnorm", "task_weights")):
        model = _Tiny()
        balancer = build_balancer(name)
        before = getattr(balancer, attr).detach().clone()
        opt = torch.optim.AdamW(list(model.parameters()) + list(balancer.parameters()), lr=1e-2)
        shared, heads = _params(model)
        x, y = _data()
        for _ in range(4):
            opt.zero_grad(set_to_none=True)
            losses, _ = model(x, y)
            assert balance_backward(balancer, losses, shared, heads, last_layer_params=2).finite
            opt.step()
            balancer.after_step()
        after = getattr(balancer, attr).detach()
        assert not torch.allclose(after, before), name
        if name == "gradnorm":
            assert after.sum().item() == pytest.approx(2.0)


# ---------------------------------------------------------------- every balancer trains


OPTIONS = {"fixed": {"weights": [0.3, 0.7]}}


@pytest.mark.parametrize("grad_source", ["params", "representation"])
@pytest.mark.parametrize("name", sorted(BALANCERS))
def test_every_balancer_trains_dual_task_net(name, grad_source):
    torch.manual_seed(0)
    model = build_model(resolve_config("tiny").model)
    balancer = build_balancer(name, OPTIONS.get(name))
    opt = torch.optim.AdamW(list(model.parameters()) + list(balancer.parameters()), lr=1e-3)
    x = torch.randn(8, 30, 14)
    rul, health = torch.rand(8) * 125, torch.randint(0, 3, (8,))
    before = [p.detach().clone() for p in model.parameters()]
    for step in range(3):
        opt.zero_grad(set_to_none=True)
        rul_pred, logits, z = model(x)
        losses = task_losses(rul_pred, logits, rul, health, 125.0)
        out = balance_backward(
            balancer, losses, model.shared_parameters(), model.head_parameters(),
            representation=z, grad_source=grad_source,
            last_layer_params=model.last_shared_layer_params(), want_task_grads=step == 1,
        )  # fmt: skip
        assert out.finite
        weights = out.combination.weights
        assert weights.shape == (2,) and torch.isfinite(weights).all() and not weights.requires_grad
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        after = None
        if balancer.needs_post_step_losses:
            with torch.no_grad():
                after = task_losses(*model(x)[:2], rul, health, 125.0)
        balancer.after_step(losses_after=after)
        balancer.end_epoch(step, losses.detach())
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    state = [t for t in balancer.state_dict().values() if t.is_floating_point()]
    assert all(torch.isfinite(t).all() for t in state)
