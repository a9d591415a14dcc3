"""Config resolution order (defaults < preset < YAML < flags) and validation."""

import pytest

from grace_rul.config import config_keys, execution_from_args, settings_from_args
from grace_rul.errors import GraceError
from grace_rul.io import load_yaml
from grace_rul.resolve import config_from_dict, resolve_config


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


def _parsed(command: str, *args: str):
    from grace_rul.cli import build_parser

    extra = ["--out", "x"]
    return build_parser().parse_args([command, *args, *extra])


@pytest.mark.parametrize("command", ["train", "sweep"])
def test_set_reaches_every_key_with_types_coerced(command):
    args = _parsed(
        command,
        "--preset", "tiny",
        "--set", "train.lr=5e-4",
        "--set", "model.dropout=0.2",
        "--set", "balancer.options.beta=0.95",
        "--set", "train.ema_warmup=off",
        "--set", "model.fc=[32, 16]",
        "--set", "train.epochs=3",
        "--epochs", "4",  # an alias of train.epochs; later wins
    )  # fmt: skip
    cfg = resolve_config(args.preset, None, settings_from_args(args))
    assert cfg.train.lr == 5e-4 and isinstance(cfg.train.lr, float)
    assert cfg.model.dropout == 0.2 and cfg.model.fc == [32, 16]
    assert cfg.balancer.options == {"beta": 0.95} and cfg.train.ema_warmup is False
    assert cfg.train.epochs == 4 and isinstance(cfg.train.epochs, int)


@pytest.mark.parametrize("command", ["train", "sweep"])
def test_every_config_key_is_a_set_target(command):
    """A key added to the dataclasses is reachable without touching the CLI."""
    for key in config_keys():
        args = _parsed(command, "--set", f"{key}=1")
        node = settings_from_args(args)
        for part in key.split("."):
            node = node[part]
        assert node == 1


def test_unknown_key_names_the_nearest_keys_and_bad_values_are_refused():
    args = _parsed("train", "--set", "train.ema_decai=0.9")
    with pytest.raises(GraceError, match=r"unknown key 'train.ema_decai' \(did you mean: "
                       r"train.ema_decay"):  # fmt: skip
        resolve_config("tiny", None, settings_from_args(args))
    for bad in ("train.epochs=2.5", "train.ema_warmup=maybe", "model.fc=7", "train.lr=[1]"):
        with pytest.raises(GraceError, match="invalid value"):
            resolve_config("tiny", None, settings_from_args(_parsed("train", "--set", bad)))
    with pytest.raises(GraceError, match="expects KEY=VALUE"):
        settings_from_args(_parsed("train", "--set", "train.lr"))


def test_execution_is_not_part_of_the_config():
    args = _parsed("train", "--threads", "3", "--device", "cpu", "--data-dir", "/d", "--quiet")
    exe = execution_from_args(args)
    assert (exe.threads, exe.device, exe.data_dir, exe.quiet) == (3, "cpu", "/d", True)
    keys = config_keys()
    assert not {"train.threads", "train.device", "data.data_dir"} & set(keys)


def test_config_is_a_leaf_and_each_section_validates_itself():
    import ast

    import grace_rul.config as config

    assert config.DataConfig is resolve_config("tiny").data.__class__
    tree = ast.parse(open(config.__file__).read())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert {m for m in imported if m and m.startswith("grace_rul")} <= {"grace_rul.errors"}
    with pytest.raises(GraceError, match="data.val_cuts"):
        config.DataConfig(val_cuts=0).validate()
    with pytest.raises(GraceError, match="train.epochs"):
        config.TrainConfig(epochs=0).validate()


def test_output_piped_into_a_reader_that_stops_is_no_traceback():
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "grace_rul.cli", "data", "describe", "--dataset", "FD002"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    proc.stdout.close()  # the reader is gone before anything is printed (reading takes seconds)
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 0 and "Traceback" not in err and "Error" not in err
