"""Precision: bf16 autocast on CPU, fp16 + GradScaler on CUDA, errors."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from grace_rul.errors import GraceError
from grace_rul.stabilisers import GradClipper, NonFiniteGuard, Precision

torch.set_num_threads(1)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _train(precision: Precision, device: str, steps: int = 5) -> list[float]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 1)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x = torch.randn(64, 6, device=device)
    y = x[:, :1] * 2.0 - x[:, 1:2]
    clipper, guard = GradClipper(max_norm=1.0), NonFiniteGuard()
    losses = []
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        with precision.autocast():
            out = model(x)
            if precision.dtype is not None:
                assert out.dtype == precision.dtype  # autocast really is on
            loss = nn.functional.mse_loss(out.float(), y)
        precision.scale_loss(loss).backward()
        precision.unscale_(opt)
        assert guard.check_grads(model.parameters())
        clipper.clip(model.parameters())
        precision.step(opt)
        precision.update()
        losses.append(float(loss.detach()))
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay fp32
    return losses


def test_bf16_autocast_trains_on_cpu():
    precision = Precision("bf16", "cpu")
    assert precision.scaler is None and precision.scale == 1.0
    losses = _train(precision, "cpu")
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]


def test_fp32_is_a_plain_loop():
    precision = Precision("32", "cpu")
    with precision.autocast():
        assert nn.Linear(2, 1)(torch.randn(3, 2)).dtype == torch.float32
    losses = _train(precision, "cpu")
    assert losses[-1] < losses[0]
    assert precision.state_dict() == {"mode": "32", "scaler": None}


def test_fp16_on_cpu_is_a_grace_error():
    with pytest.raises(GraceError, match="needs a CUDA device"):
        Precision("16", "cpu")


def test_unknown_mode_is_a_grace_error():
    with pytest.raises(GraceError):
        Precision("fp8", "cpu")


@needs_cuda
def test_fp16_with_grad_scaler_trains_on_cuda():
    precision = Precision("16", "cuda")
    assert precision.scaler is not None and precision.scale == 65536.0
    losses = _train(precision, "cuda")
    assert all(torch.isfinite(torch.tensor(losses)))
    resumed = Precision("16", "cuda")
    resumed.load_state_dict(precision.state_dict())
    assert resumed.scale == precision.scale


@needs_cuda
def test_bf16_autocast_trains_on_cuda():
    if not torch.cuda.is_bf16_supported():
        pytest.skip("GPU without bf16")
    losses = _train(Precision("bf16", "cuda"), "cuda")
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("native", [True, False])
def test_auto_picks_bf16_only_where_the_cpu_computes_it_natively(monkeypatch, native):
    from grace_rul.stabilisers import precision as module

    module.bf16_native.cache_clear()
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    try:
        chosen = Precision("auto", "cpu")
        assert chosen.mode == ("bf16" if native else "32")
        assert chosen.dtype == (torch.bfloat16 if native else None)
        if native:
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # native bf16: no emulation warning
                Precision("bf16", "cpu")
        else:
            with pytest.warns(UserWarning, match="emulated"):
                assert Precision("bf16", "cpu").mode == "bf16"  # honoured, with one warning
    finally:
        module.bf16_native.cache_clear()


def test_auto_on_cuda_follows_the_gpu(monkeypatch):
    from grace_rul.stabilisers import precision as module

    module.bf16_native.cache_clear()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for supported, expected in ((True, "bf16"), (False, "32")):
        module.bf16_native.cache_clear()
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda s=supported: s)
        assert module.resolve_precision("auto", "cuda") == expected
    module.bf16_native.cache_clear()
