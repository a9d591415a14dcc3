"""Config resolution order (defaults < preset < YAML < flags) and validation."""

import pytest

from grace_rul.config import config_from_dict, load_yaml, resolve_config
from grace_rul.errors import GraceError


def test_paper_preset_holds_spec_defaults():
    cfg = resolve_config("paper")
    assert cfg.model.conv_channels == [32, 64, 32] and cfg.model.lstm_hidden == 256
    assert cfg.model.attn_heads == 4 and cfg.model.fc == [256, 128] and cfg.model.dropout == 0.3
    t = cfg.train
    assert (t.epochs, t.batch_size, t.lr, t.weight_decay, t.clip, t.ema_decay) == (
        500,
        256,
        1e-3,
        1e-4,
        1.0,
        0.999,
    )
    assert (t.plateau_factor, t.plateau_patience, t.min_lr, t.early_stop_patience) == (
        0.5,
        30,
        5e-6,
        80,
    )
    assert cfg.data.window == 30 and cfg.data.max_rul == 125
    assert (cfg.data.critical_rul, cfg.data.degrading_rul) == (30, 80)


def test_order_preset_then_yaml_then_flags(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 7\n  lr: 0.002\nmodel:\n  lstm_layers: 1\n")
    cfg = resolve_config("small", load_yaml(path), {"train": {"epochs": 3, "lr": None}})
    assert cfg.model.lstm_hidden == 48  # preset
    assert cfg.model.lstm_layers == 1  # YAML
    assert cfg.train.lr == 0.002  # YAML kept: unset flag (None) does not clobber it
    assert cfg.train.epochs == 3  # flag wins


def test_round_trip_through_dict():
    cfg = resolve_config(
        "small", overrides={"balancer": {"name": "gaba", "options": {"beta": 0.9}}}
    )
    again = config_from_dict(cfg.to_dict())
    assert again == cfg


@pytest.mark.parametrize(
    "overrides, words",
    [
        ({"train": {"lr": -1.0}}, "train.lr"),
        ({"train": {"epochs": 0}}, "train.epochs"),
        ({"data": {"dataset": "FD009"}}, "FD009"),
        ({"data": {"critical_rul": 90}}, "critical_rul"),
        ({"balancer": {"name": "nope"}}, "unknown balancer 'nope'"),
        ({"balancer": {"name": "gaba", "options": {"floor": 0.6}}}, "floor"),
        ({"train": {"precision": "fp8"}}, "precision"),
    ],
)
def test_invalid_settings_are_refused_with_the_setting_named(overrides, words):
    with pytest.raises(GraceError, match=words):
        resolve_config("tiny", overrides=overrides)


def test_unknown_key_and_preset(tmp_path):
    with pytest.raises(GraceError, match="unknown key 'train.epochz'"):
        resolve_config("tiny", {"train": {"epochz": 3}})
    with pytest.raises(GraceError, match="unknown preset"):
        resolve_config("huge")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(GraceError, match="not valid YAML"):
        load_yaml(bad)
