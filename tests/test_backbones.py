"""Architectures behind model.arch: shapes and parameter partition, one tiny epoch on real
FD001 with equal and gaba that resumes bit-identically, export/predict/ONNX round trips,
and one-line refusals of bad settings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import grace_rul
from conftest import tiny_config
from grace_rul.backbones import BACKBONES, DEFAULT_ARCH, build_model
from grace_rul.data import bundled_dir, read_cmapss
from grace_rul.model import count_parameters
from grace_rul.model import predict as net_predict
from grace_rul.resolve import resolve_config
from resumable import assert_resumes_identically, train_copying

ARCHS = ("cnn_bilstm_attention", "dcnn", "tcn", "transformer")
TEST_FD001 = Path(str(bundled_dir() / "test_FD001.txt.gz"))


def arch_config(arch: str, balancer: str = "gaba", epochs: int = 2, **model):
    # dcnn's time-only convolutions keep 10 x window x sensors activations per window,
    # ~5x the tiny network's: 5-row windows keep its test short.
    window = 5 if arch == "dcnn" else 10
    return resolve_config(
        "tiny",
        overrides={
            "model": {"arch": arch, **model},
            "balancer": {"name": balancer},
            "train": {"epochs": epochs, "batch_size": 2048},
            "data": {"window": window},
        },
    )


def test_the_registry_and_the_default():
    assert set(BACKBONES) == set(ARCHS)
    assert resolve_config("paper").model.arch == DEFAULT_ARCH == "cnn_bilstm_attention"
    assert resolve_config("bilstm").model.arch == DEFAULT_ARCH  # 0.1's default
    # the accuracy search's choice (docs/evidence/accuracy.md)
    default = resolve_config("default")
    assert (default.model.arch, default.data.window, default.data.window_features) == (
        "dcnn",
        50,
        True,
    )
    assert (default.data.scaling, default.train.swa_start) == ("minmax", 15)
    # The write-up's network is unchanged behind the registry (test_model.py pins the rest).
    assert count_parameters(build_model(resolve_config("paper").model)) == 3_401_028


@pytest.mark.parametrize(
    "arch, model",
    [
        ("cnn_bilstm_attention", {"pooling": "attention"}),
        ("cnn_bilstm_attention", {"pooling": "last", "fc": []}),
        ("dcnn", {}),
        ("tcn", {}),
        ("tcn", {"pooling": "mean"}),
        ("transformer", {}),
        ("transformer", {"positions": "sinusoidal", "pooling": "attention"}),
    ],
)
def test_shapes_and_the_parameter_partition(arch, model):
    cfg = resolve_config("tiny", overrides={"model": {"arch": arch, **model}})
    net = build_model(cfg.model, window=12).eval()
    assert type(net).arch == arch
    x = torch.randn(5, 12, 14)
    rul, logits, z = net(x)
    assert rul.shape == (5,) and logits.shape == (5, 3) and z.shape[0] == 5
    shared, heads = net.shared_parameters(), net.head_parameters()
    ids = [id(p) for p in shared] + [id(p) for h in heads for p in h]
    assert sorted(ids) == sorted(id(p) for p in net.parameters()) and len(set(ids)) == len(ids)
    n = net.last_shared_layer_params()
    last = net.last_shared_layer()
    assert [id(p) for p in shared[-n:]] == [id(p) for p in last.parameters(recurse=False)]
    # The last shared layer is the one that outputs z: its output width is z's.
    assert shared[-n].shape[0] == z.shape[1]
    # The pooling setting changes the network (attention pooling has weights; last != mean).
    if model.get("pooling") == "attention":
        assert net.pool.score is not None


def test_pooling_and_positions_change_the_outputs():
    torch.manual_seed(0)
    x = torch.randn(4, 10, 14)
    outs = {}
    for pooling in ("mean", "last"):
        torch.manual_seed(1)
        cfg = resolve_config("tiny", overrides={"model": {"arch": "tcn", "pooling": pooling}})
        outs[pooling] = build_model(cfg.model, window=10).eval()(x)[2]
    assert not torch.allclose(outs["mean"], outs["last"])
    tables = {}
    for positions in ("learned", "sinusoidal"):
        cfg = resolve_config("tiny", overrides={"model": {"arch": "transformer",
                                                          "positions": positions}})  # fmt: skip
        tables[positions] = build_model(cfg.model, window=10).positions
    assert isinstance(tables["learned"], torch.nn.Parameter)
    assert not isinstance(tables["sinusoidal"], torch.nn.Parameter)
    expected = torch.tensor([np.sin(3.0), np.cos(3.0)], dtype=torch.float32)
    assert torch.allclose(tables["sinusoidal"][3, :2], expected)  # PE[t=3, 0:2]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Straight 2-epoch runs per (arch, balancer), each copied after epoch 1 (cached)."""
    root = tmp_path_factory.mktemp("arch")
    done: dict[tuple[str, str], tuple[Path, Path]] = {}

    def get(arch: str, balancer: str) -> tuple[Path, Path]:
        if (arch, balancer) not in done:
            straight, copy = root / f"{arch}-{balancer}", root / f"{arch}-{balancer}-copy"
            train_copying(arch_config(arch, balancer), straight, 1, copy)
            done[arch, balancer] = straight, copy
        return done[arch, balancer]

    return get


@pytest.mark.parametrize("balancer", ["equal", "gaba"])
@pytest.mark.parametrize("arch", ARCHS)
def test_every_arch_trains_and_resumes_bit_identically(runs, arch, balancer):
    straight, copy = runs(arch, balancer)
    metrics = json.loads((straight / "metrics.json").read_text())
    assert np.isfinite(metrics["test"]["rmse_last"]) and metrics["balancer"] == balancer
    cfg = arch_config(arch, balancer)
    assert metrics["params"] == count_parameters(build_model(cfg.model, window=cfg.data.window))
    saved = torch.load(straight / "checkpoints" / "last.pt", weights_only=True)
    assert saved["config"]["model"]["arch"] == arch
    first = build_model(cfg.model, window=cfg.data.window).state_dict()
    assert set(first) == set(saved["components"]["model"])  # the arch's own layers
    assert_resumes_identically(cfg, straight, copy)


@pytest.mark.parametrize("arch", ARCHS)
def test_every_arch_exports_predicts_and_runs_in_onnx(runs, arch, tmp_path, cli):
    straight, _ = runs(arch, "gaba")
    out = tmp_path / "model"
    assert cli("export", straight, "--out", out, "--onnx").code == 0
    doc = json.loads((out / "grace_model.json").read_text())
    assert doc["members"][0]["config"]["model"]["arch"] == arch
    table = out / "pred.csv"
    assert cli("predict", "--model", out, "--input", TEST_FD001, "--out", table).code == 0
    saved = pd.read_csv(straight / "predictions.csv")  # the test units as training scored them
    assert np.array_equal(pd.read_csv(table)["rul"].to_numpy(), saved["pred_rul"].to_numpy())
    evaluated = cli("evaluate", "--model", out)
    assert evaluated.code == 0
    run_metrics = json.loads((straight / "metrics.json").read_text())
    assert json.loads(evaluated.out)["test"] == run_metrics["test"]
    pytest.importorskip("onnxruntime")
    onnx_table = out / "pred-onnx.csv"
    args = ("predict", "--model", out, "--input", TEST_FD001, "--backend", "onnx")
    assert cli(*args, "--out", onnx_table).code == 0
    diff = pd.read_csv(onnx_table)["rul"] - pd.read_csv(table)["rul"]
    assert np.abs(diff).max() < 1e-3
    model = grace_rul.load_model(out)
    windows = model.windows(read_cmapss("FD001").test)[0].x
    assert windows.shape[1] == arch_config(arch).data.window
    assert torch.equal(net_predict(model.members[0].net, windows)[0],
                       torch.tensor(saved["pred_rul"].to_numpy(), dtype=torch.float32))  # fmt: skip


@pytest.mark.parametrize(
    "args, words",
    [
        (["--set", "model.arch=resnet"],
         "unknown model.arch 'resnet' (choose from: cnn_bilstm_attention, dcnn, tcn, transformer)"),
        (["--set", "model.arch=dcnn", "--set", "model.pooling=mean"],
         "model.pooling=mean is not supported by model.arch=dcnn"),
        (["--set", "model.pooling=max"], "model.pooling=max is not supported"),
        (["--set", "model.arch=transformer", "--set", "model.positions=rotary"],
         "model.positions must be one of learned, sinusoidal"),
        (["--set", "model.arch=transformer", "--set", "model.d_model=15"],
         "model.d_model (15) must be even and divisible by model.attn_heads"),
    ],
)  # fmt: skip
def test_bad_architecture_settings_are_one_line_and_exit_2(tmp_path, cli, args, words):
    done = cli("train", "--preset", "tiny", "--out", tmp_path / "r", "--quiet", *args)
    assert done.code == 2 and len(done.err_lines) == 1 and words in done.err_lines[0]
    assert not (tmp_path / "r").exists()  # refused before anything trained


def test_tiny_config_still_builds_the_default_network():
    cfg = tiny_config()
    assert cfg.model.arch == DEFAULT_ARCH and cfg.model.pooling == "auto"
