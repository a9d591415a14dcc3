"""The dual-task network: shapes, parameter counts, parameter partition, initialisation."""

import pytest
import torch

from grace_rul.backbones import build_model
from grace_rul.model import count_parameters, predict
from grace_rul.resolve import resolve_config


def test_paper_preset_parameter_counts_and_layer_setting():
    paper = resolve_config("paper")
    assert paper.model.lstm_layers == 2
    assert count_parameters(build_model(paper.model)) == 3_401_028
    one = resolve_config("paper", overrides={"model": {"lstm_layers": 1}})
    assert count_parameters(build_model(one.model)) == 1_824_068


def test_forward_shapes_and_rul_in_cycles():
    cfg = resolve_config("tiny")
    model = build_model(cfg.model, max_rul=125).eval()
    rul, logits, z = model(torch.randn(5, 30, 14))
    assert rul.shape == (5,) and logits.shape == (5, 3) and z.shape == (5, cfg.model.fc[-1])
    head_out = model.rul_head(z).squeeze(-1)
    assert torch.allclose(rul, head_out * 125)


def test_shared_and_head_parameters_partition_the_model():
    model = build_model(resolve_config("tiny").model)
    shared = model.shared_parameters()
    heads = model.head_parameters()
    ids = [id(p) for p in shared] + [id(p) for h in heads for p in h]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())
    assert len(set(ids)) == len(ids)
    last = [m for m in model.fc if isinstance(m, torch.nn.Linear)][-1]
    n = model.last_shared_layer_params()
    assert [id(p) for p in shared[-n:]] == [id(p) for p in last.parameters()]


def test_initialisation_he_xavier_orthogonal():
    torch.manual_seed(0)
    model = build_model(resolve_config("paper").model)
    hidden = model.lstm.hidden_size
    w_hh = model.lstm.weight_hh_l0
    for gate in w_hh.detach().chunk(4, 0):  # orthogonal recurrent weights, per gate
        assert torch.allclose(gate @ gate.T, torch.eye(hidden), atol=1e-4)
    assert torch.all(model.lstm.bias_ih_l0[hidden : 2 * hidden] == 1.0)  # forget gate
    assert torch.all(model.lstm.bias_ih_l0[:hidden] == 0.0)
    assert torch.all(model.lstm.bias_hh_l0 == 0.0)  # so the effective forget bias is 1
    fc = model.fc[0]  # He normal: std = sqrt(2 / fan_in)
    assert fc.weight.std().item() == pytest.approx((2 / fc.in_features) ** 0.5, rel=0.05)
    head = model.health_head  # Xavier uniform: |w| <= sqrt(6 / (fan_in + fan_out))
    bound = (6 / (head.in_features + head.out_features)) ** 0.5
    assert head.weight.abs().max().item() <= bound
    assert head.weight.abs().max().item() > 0.8 * bound
    assert torch.all(model.rul_head.bias == 0)  # set from data by init_rul_bias


def test_predict_keeps_input_order_across_batches():
    # Evaluation must never shuffle: prediction i belongs to window i (test unit i).
    torch.manual_seed(0)
    model = build_model(resolve_config("tiny").model)
    x = torch.randn(23, 30, 14)
    rul, logits = predict(model, x, batch_size=5)
    model.eval()
    with torch.no_grad():
        ref_rul, ref_logits, _ = model(x)
    assert torch.allclose(rul, ref_rul, atol=1e-5) and torch.allclose(logits, ref_logits, atol=1e-5)
    rev, _ = predict(model, x.flip(0), batch_size=7)
    assert torch.allclose(rev.flip(0), rul, atol=1e-5)
    assert model.training is False  # predict leaves the mode it found
