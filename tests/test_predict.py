"""From a trained run to decisions: export, predict, intervals, ensembles, ONNX, safety.

One tiny run (2 epochs) is trained per module and shared; ensembles add a 1-epoch run.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import grace_rul
from conftest import QUIET
from grace_rul.checkpoint import load_checkpoint
from grace_rul.cli import main
from grace_rul.data import Normalizer, bundled_dir, load_dataset, read_cmapss, windows
from grace_rul.inference.conformal import run_interval_metrics
from grace_rul.inference.prediction import OUTPUT_COLUMNS, predict_file
from grace_rul.model import predict as net_predict
from grace_rul.resolve import resolve_config
from grace_rul.scoring import load_inference_model, score_split
from grace_rul.trainer import train

torch.set_num_threads(1)
TEST_FD001 = Path(str(bundled_dir() / "test_FD001.txt.gz"))


def tiny(seed: int, epochs: int):
    return resolve_config("tiny", overrides={"seed": seed, "train": {"epochs": epochs}})


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "fd001-s42"
    train(tiny(42, 2), out, execution=QUIET)
    return out


@pytest.fixture(scope="module")
def second_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "fd001-s7"
    train(tiny(7, 1), out, execution=QUIET)
    return out


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("models") / "fd001"
    assert main(["export", str(run), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def ensemble(run, second_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("models") / "fd001-ensemble"
    assert main(["ensemble", str(run), str(second_run), "--out", str(out)]) == 0
    return out


def evaluate_path_predictions(run: Path) -> tuple[np.ndarray, np.ndarray]:
    """RUL and health of the test units as training scored them: the checkpoint's inference
    network on the data contract's test windows (``windows.test_windows``)."""
    ckpt = load_checkpoint(run / "checkpoints" / "best.pt")
    model, cfg = load_inference_model(ckpt)
    normalizer = Normalizer.from_dict(ckpt["normalizer"])
    split = windows.test_windows(read_cmapss("FD001"), normalizer, cfg.data)
    _, rul, health = score_split(model, split)
    return rul, health


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("grace: error: "), err
    return err[0]


HEALTH = {"healthy": 0, "degrading": 1, "critical": 2}


# --------------------------------------------------------------------------- predictions


def test_predict_on_test_fd001_equals_grace_evaluate(run, exported, tmp_path, capsys):
    rul, health = evaluate_path_predictions(run)
    for model in (exported, run, run / "checkpoints" / "best.pt"):
        out = tmp_path / f"{model.name}.csv"
        args = ["predict", "--model", str(model), "--input", str(TEST_FD001), "--out", str(out)]
        assert main(args) == 0
        table = pd.read_csv(out)
        assert list(table.columns) == list(OUTPUT_COLUMNS)
        assert table["unit"].tolist() == list(range(1, 101))
        assert np.array_equal(table["rul"].to_numpy(), rul.astype(np.float64))
        assert np.array_equal(table["health"].map(HEALTH).to_numpy(), health)
    capsys.readouterr()
    assert main(["evaluate", "--model", str(run / "checkpoints" / "best.pt")]) == 0
    by_checkpoint = json.loads(capsys.readouterr().out)
    for model in (exported, run):
        assert main(["evaluate", "--model", str(model)]) == 0
        assert json.loads(capsys.readouterr().out)["test"] == by_checkpoint["test"]


def test_export_load_predict_equals_the_runs_predictions(run, exported):
    assert sorted(p.name for p in exported.iterdir()) == ["grace_model.json", "model.safetensors"]
    doc = json.loads((exported / "grace_model.json").read_text())
    assert doc["format_version"] == 1
    assert doc["data"]["normalization"] == "global" and doc["data"]["max_rul"] == 125
    assert (doc["data"]["critical_rul"], doc["data"]["degrading_rul"]) == (30, 80)
    member = doc["members"][0]
    assert member["normalizer"]["mode"] == "global" and member["config"]["seed"] == 42
    run_metrics = json.loads((run / "metrics.json").read_text())
    assert doc["provenance"]["test"] == run_metrics["test"] == doc["metrics"]["test"]
    assert doc["provenance"]["version"] == grace_rul.__version__
    assert doc["provenance"]["preset"] == "tiny" and doc["provenance"]["dataset"] == "FD001"
    assert set(doc["calibration"]["levels"]) == {"0.8", "0.9"}
    assert doc["calibration"]["n"] == 20 * 20  # 20 validation units x 20 cuts

    model = grace_rul.load_model(exported)
    table = grace_rul.predict(model, read_cmapss("FD001").test)
    saved = pd.read_csv(run / "predictions.csv")
    assert np.array_equal(table["rul"].to_numpy(), saved["pred_rul"].to_numpy())
    assert np.array_equal(table["health"].map(HEALTH).to_numpy(), saved["pred_health"].to_numpy())
    assert (table["rul_lower"] <= table["rul"]).all() and (table["rul"] <= table["rul_upper"]).all()
    probs = table[["p_healthy", "p_degrading", "p_critical"]].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-12)


def test_shuffled_columns_extra_columns_and_file_formats_give_identical_predictions(
    exported, tmp_path
):
    model = grace_rul.load_model(exported)
    expected = predict_file(model, TEST_FD001)
    raw = read_cmapss("FD001").test
    columns = [*raw.columns, "operator", "note"]
    shuffled = raw.assign(operator="ana", note=1.5)[
        [columns[i] for i in np.random.default_rng(0).permutation(len(columns))]
    ]
    shuffled.to_csv(tmp_path / "engines.csv", index=False)
    shuffled.to_parquet(tmp_path / "engines.parquet")
    shuffled.to_csv(tmp_path / "engines.tsv.gz", index=False, sep="\t")
    plain = tmp_path / "test_FD001.txt"
    import gzip

    plain.write_bytes(gzip.decompress(TEST_FD001.read_bytes()))
    for name in ("engines.csv", "engines.parquet", "engines.tsv.gz", "test_FD001.txt"):
        pd.testing.assert_frame_equal(predict_file(model, tmp_path / name), expected)


def test_text_unit_ids_are_kept_and_give_the_same_predictions(exported, tmp_path):
    model = grace_rul.load_model(exported)
    expected = predict_file(model, TEST_FD001)
    raw = read_cmapss("FD001").test
    named = raw.assign(unit=[f"ESN-{u}" for u in raw["unit"]])  # ESN-10 sorts before ESN-2
    named.to_csv(tmp_path / "engines.csv", index=False)
    table = predict_file(model, tmp_path / "engines.csv")
    assert table["unit"].tolist() == sorted(f"ESN-{u}" for u in range(1, 101))
    by_name = table.set_index("unit").loc[[f"ESN-{u}" for u in expected["unit"]]]
    np.testing.assert_array_equal(by_name["rul"], expected["rul"])
    np.testing.assert_array_equal(by_name["cycles_seen"], expected["cycles_seen"])


def test_flags_short_history_and_unseen_regime(exported):
    model = grace_rul.load_model(exported)
    raw = read_cmapss("FD001").test
    short = raw[raw["unit"] == 1].head(10)  # 10 cycles < window 30: padded
    far_late = raw[raw["unit"] == 2].copy()
    far_late.loc[far_late.index[-3:], ["setting1", "setting2"]] = (20.0, 0.7)  # FD002 regime
    far_early = raw[raw["unit"] == 3].copy()
    far_early.loc[far_early.index[:3], ["setting1", "setting2"]] = (20.0, 0.7)  # outside window
    near = raw[raw["unit"] == 4].copy()
    near.loc[near.index[-1], "setting1"] = 0.9  # 0.9 rounding steps from the regime
    table = grace_rul.predict(model, pd.concat([short, far_late, far_early, near]))
    assert table["flags"].tolist() == ["short_history", "unseen_regime", "", ""]
    assert table["cycles_seen"].tolist() == [10, len(far_late), len(far_early), len(near)]


def test_json_output_and_stdout(exported, tmp_path, capsys):
    out = tmp_path / "predictions.json"
    args = ["predict", "--model", str(exported), "--input", str(TEST_FD001)]
    assert main([*args, "--out", str(out), "--coverage", "0.8"]) == 0
    records = json.loads(out.read_text())
    assert len(records) == 100 and list(records[0]) == list(OUTPUT_COLUMNS)
    assert records[0]["flags"] == [] and records[0]["health"] in HEALTH
    capsys.readouterr()
    assert main([*args, "--format", "csv", "--coverage", "0.8"]) == 0
    printed = pd.read_csv(__import__("io").StringIO(capsys.readouterr().out))
    np.testing.assert_array_equal(printed["rul_upper"], [r["rul_upper"] for r in records])


# --------------------------------------------------------------------------- bad input


def _frame() -> pd.DataFrame:
    raw = read_cmapss("FD001").test
    return raw[raw["unit"].isin([1, 2])].reset_index(drop=True)  # units 1 (31 rows), 2


def _csv(frame: pd.DataFrame):
    def write(tmp: Path) -> Path:
        frame.to_csv(tmp / "engines.csv", index=False)
        return tmp / "engines.csv"

    return write


def _text(edit):
    def write(tmp: Path) -> Path:
        lines = [" ".join(str(v) for v in row) for row in _frame().itertuples(index=False)]
        (tmp / "engines.txt").write_text("\n".join(edit(lines)) + "\n")
        return tmp / "engines.txt"

    return write


def _cell(frame: pd.DataFrame, row: int, column: str, value) -> pd.DataFrame:
    frame = frame.astype({column: object})
    frame.loc[row, column] = value
    return frame


def _set_token(lines: list[str], line: int, field: int, value: str) -> list[str]:
    fields = lines[line - 1].split()
    fields[field - 1] = value
    return [*lines[: line - 1], " ".join(fields), *lines[line:]]


def _damage_json(model: Path) -> None:
    doc = json.loads((model / "grace_model.json").read_text())
    (model / "grace_model.json").write_text(json.dumps({**doc, "format_version": 2}))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


F = _frame()
BAD_INPUTS = {
    "missing column": (_csv(F.drop(columns="cycle")), [], None, "missing column(s) cycle"),
    "sensor set": (_csv(F.drop(columns="s11")), [], None, "sensor set differs from the model's"),
    "non-numeric csv": (
        _csv(_cell(F, 4, "s2", "abc")), [], None, "non-numeric value 'abc' at line 6, column 7 (s2)"
    ),
    "non-numeric text": (
        _text(lambda ls: _set_token(ls, 3, 12, "x1")), [], None,
        "non-numeric value 'x1' at line 3, column 12 (s7)",
    ),
    "nan sensor": (_csv(_cell(F, 7, "s7", np.nan)), [], None, "NaN in sensor s7 at line 9"),
    "inf sensor": (
        _text(lambda ls: _set_token(ls, 2, 26, "inf")), [], None,
        "Inf in sensor s21 at line 2 (unit 1, cycle 2)",
    ),
    "duplicate rows": (
        _csv(pd.concat([F, F.iloc[[5]]])), [], None, "duplicate rows for unit 1, cycle 6"
    ),
    "cycles decrease": (
        _csv(F.iloc[[0, 2, 1, *range(3, len(F))]]), [], None,
        "cycles of unit 1 do not increase: cycle 2 at line 4 follows cycle 3 at line 3",
    ),
    "no rows": (_csv(F.iloc[:0]), [], None, "no rows"),
    "blank unit id": (
        _csv(_cell(F.assign(unit=[f"ESN-{u}" for u in F["unit"]]), 3, "unit", " ")), [], None,
        "missing unit id at line 5",
    ),
    "column count": (
        _text(lambda ls: [*ls[:4], ls[4] + " 1.0", *ls[5:]]), [], None,
        "wrong column count: line 5 has 27 fields, expected 26",
    ),
    "no input": (lambda tmp: tmp / "absent.csv", [], None, "absent.csv not found"),
    "coverage 0": (_csv(F), ["--coverage", "0"], None, "coverage must be in (0, 1)"),
    "coverage 1": (_csv(F), ["--coverage", "1"], None, "coverage must be in (0, 1)"),
    "coverage 1.5": (_csv(F), ["--coverage", "1.5"], None, "coverage must be in (0, 1)"),
    "coverage nan": (_csv(F), ["--coverage", "nan"], None, "coverage must be in (0, 1)"),
    "newer format": (_csv(F), [], _damage_json, "format_version 2, newer than grace-rul"),
    "truncated safetensors": (
        _csv(F), [], lambda m: _truncate(m / "model.safetensors"),
        "model.safetensors is corrupt or truncated",
    ),
    "truncated json": (
        _csv(F), [], lambda m: _truncate(m / "grace_model.json"),
        "grace_model.json is corrupt or truncated",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_nonzero_exit_and_nothing_written(exported, tmp_path, capsys, case):
    make_input, extra, damage, words = BAD_INPUTS[case]
    model = exported
    if damage is not None:
        model = tmp_path / "model"
        shutil.copytree(exported, model)
        damage(model)
    out = tmp_path / "out" / "predictions.csv"
    args = ["predict", "--model", str(model), "--input", str(make_input(tmp_path))]
    assert main([*args, "--out", str(out), *extra]) == 2
    assert words in error_line(capsys)
    assert not out.exists() and not out.parent.exists()


# --------------------------------------------------------------------------- safety


class Payload:
    """Unpickling this calls open(target, "w"): it creates a file."""

    def __init__(self, target: Path) -> None:
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_a_pickle_payload_is_refused_by_every_command_and_never_runs(run, tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = {"config": tiny(42, 1).to_dict(), "inference": Payload(marker), "normalizer": {}}
    torch.save(evil, tmp_path / "probe.pt")
    torch.load(tmp_path / "probe.pt", weights_only=False)  # proves the payload is live
    assert marker.exists()
    marker.unlink()

    bad_run = tmp_path / "bad-run"
    (bad_run / "checkpoints").mkdir(parents=True)
    (bad_run / "config.yaml").write_text(tiny(42, 1).to_yaml())
    torch.save(evil, bad_run / "checkpoints" / "best.pt")
    torch.save(evil, bad_run / "checkpoints" / "last.pt")
    shutil.copy(run / "metrics.json", bad_run / "metrics.json")
    best = str(bad_run / "checkpoints" / "best.pt")
    commands = [
        ["evaluate", "--model", best],
        ["evaluate", "--model", str(bad_run)],
        ["predict", "--model", best, "--input", str(TEST_FD001)],
        ["predict", "--model", str(bad_run), "--input", str(TEST_FD001)],
        ["export", str(bad_run), "--out", str(tmp_path / "m")],
        ["ensemble", str(run), str(bad_run), "--out", str(tmp_path / "e")],
        ["train", "--out", str(bad_run), "--resume", "--quiet"],
    ]
    for args in commands:
        capsys.readouterr()
        assert main(args) == 2, args
        line = error_line(capsys)
        assert "is refused" in line and "never unpickles" in line, args
        assert not marker.exists(), args
    assert not (tmp_path / "m").exists() and not (tmp_path / "e").exists()


# --------------------------------------------------------------------------- intervals


def test_interval_coverage_on_fd001_test_is_near_nominal(run, exported):
    stored = json.loads((exported / "grace_model.json").read_text())["metrics"]["intervals"]
    for level in ("0.8", "0.9"):
        assert stored[level]["coverage"] >= float(level) - 0.1
        assert stored[level]["mean_width"] > 0
    # The trainer's function (metrics.json "intervals") gives the same numbers.
    ckpt = load_checkpoint(run / "checkpoints" / "best.pt")
    net, cfg = load_inference_model(ckpt)
    assert run_interval_metrics(net, load_dataset(cfg.data, cfg.seed), cfg.seed) == stored
    narrow = predict_file(grace_rul.load_model(exported), TEST_FD001, coverage=0.5)
    wide = predict_file(grace_rul.load_model(exported), TEST_FD001, coverage=0.95)
    assert ((wide.rul_upper - wide.rul_lower) > (narrow.rul_upper - narrow.rul_lower)).all()


# --------------------------------------------------------------------------- ONNX


def test_onnx_matches_pytorch_within_a_thousandth_of_a_cycle(run, ensemble, tmp_path, capsys):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    out = tmp_path / "onnx-model"
    assert main(["export", str(run), "--out", str(out), "--onnx"]) == 0
    model = grace_rul.load_model(out)
    windows = model.windows(read_cmapss("FD001").test)[0].x  # the FD001 test windows
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    rul, logits = session.run(None, {"windows": windows.numpy()})
    torch_rul, torch_logits = net_predict(model.members[0].net, windows)
    assert rul.shape == (100,) and logits.shape == (100, 3)
    assert np.abs(rul - torch_rul.numpy()).max() < 1e-3
    assert np.abs(logits - torch_logits.numpy()).max() < 1e-3
    # The CLI backend, for a single model and for a two-member ensemble (stacked input).
    assert main(["export", str(ensemble), "--out", str(tmp_path / "onnx-ens"), "--onnx"]) == 0
    for directory in (out, tmp_path / "onnx-ens"):
        tables = {}
        for backend in ("torch", "onnx"):
            target = tmp_path / f"{directory.name}-{backend}.csv"
            args = ["predict", "--model", str(directory), "--input", str(TEST_FD001)]
            assert main([*args, "--backend", backend, "--out", str(target)]) == 0
            tables[backend] = pd.read_csv(target)
        assert np.abs(tables["onnx"]["rul"] - tables["torch"]["rul"]).max() < 1e-3
    capsys.readouterr()
    args = ["predict", "--model", str(run), "--input", str(TEST_FD001), "--backend", "onnx"]
    assert main(args) == 2 and "has no model.onnx" in error_line(capsys)


# --------------------------------------------------------------------------- ensembles


def test_ensemble_prediction_is_the_mean_of_its_members(run, second_run, ensemble):
    frame = read_cmapss("FD001").test
    members = [grace_rul.predict(grace_rul.load_model(r), frame) for r in (run, second_run)]
    model = grace_rul.load_model(ensemble)
    assert len(model.members) == 2
    table = grace_rul.predict(model, frame)
    expected = np.mean(np.stack([m["rul"].to_numpy() for m in members]), axis=0)
    np.testing.assert_array_equal(table["rul"].to_numpy(), expected)
    for column in ("p_healthy", "p_degrading", "p_critical"):
        mean = (members[0][column] + members[1][column]).to_numpy() / 2
        np.testing.assert_allclose(table[column].to_numpy(), mean, rtol=1e-12)
    doc = json.loads((ensemble / "grace_model.json").read_text())
    assert doc["kind"] == "ensemble" and [m["config"]["seed"] for m in doc["members"]] == [42, 7]
    # Each member keeps its own normaliser (the seeds held out different units).
    assert doc["members"][0]["normalizer"] != doc["members"][1]["normalizer"]


def test_evaluate_on_an_ensemble_reproduces_its_stored_metrics(run, second_run, ensemble, capsys):
    stored = json.loads((ensemble / "metrics.json").read_text())
    capsys.readouterr()
    assert main(["evaluate", "--model", str(ensemble)]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    for key in ("test", "intervals", "single_model", "members_test"):
        assert evaluated[key] == stored[key], key
    assert stored["members"] == 2 and stored["seeds"] == [42, 7]
    singles = [json.loads((r / "metrics.json").read_text())["test"] for r in (run, second_run)]
    assert stored["members_test"] == singles
    rmse = [s["rmse_last"] for s in singles]
    assert stored["single_model"]["rmse_last"]["mean"] == pytest.approx(np.mean(rmse))
    assert stored["single_model"]["rmse_last"]["std"] == pytest.approx(np.std(rmse, ddof=1))


def _edited_copy(run: Path, target: Path, edit) -> Path:
    shutil.copytree(run, target)
    best = target / "checkpoints" / "best.pt"
    ckpt = torch.load(best, weights_only=True)
    edit(ckpt)
    torch.save(ckpt, best)
    return target


def _regime_normalizer(ckpt) -> None:
    ckpt["normalizer"] = Normalizer.fit(read_cmapss("FD001").train, "regime").to_dict()


def test_ensemble_refuses_mismatched_unfinished_and_repeated_runs(run, tmp_path, capsys):
    window = _edited_copy(run, tmp_path / "w20", lambda c: c["config"]["data"].update(window=20))
    subset = _edited_copy(
        run, tmp_path / "fd003", lambda c: c["config"]["data"].update(dataset="FD003")
    )
    regime = _edited_copy(run, tmp_path / "regime", _regime_normalizer)
    unfinished = tmp_path / "unfinished"
    shutil.copytree(run, unfinished)
    (unfinished / "metrics.json").unlink()
    cases = [
        ([run, window], f"cannot combine {run} and {window}: window 30 vs 20"),
        ([run, subset], "subset FD001 vs FD003"),
        ([run, regime], "normalisation global vs regime"),
        ([run, unfinished], f"{unfinished} is not a finished run: metrics.json not found"),
        ([run, run], "are the same run"),
        ([run], "at least two runs"),
    ]
    for runs, words in cases:
        out = tmp_path / "ensemble"
        assert main(["ensemble", *map(str, runs), "--out", str(out)]) == 2
        assert words in error_line(capsys)
        assert not out.exists()
