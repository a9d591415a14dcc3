"""Nothing lost, nothing wrong said quietly (issue 23): locks, resume checks, validation before
writing, finite predictions, one-line failures, bounded readers, checked model files.

Every test here failed on the code before the fix it covers. Trainings are the ``tiny``
preset for one epoch over 10-cycle windows; the prediction tests use an untrained model
saved to a model directory (no training).
"""

from __future__ import annotations

import errno
import gzip
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import grace_rul.checkpoint as checkpoint
from grace_rul.checkpoint import atomic_torch_save, load_checkpoint
from grace_rul.data import read_cmapss
from grace_rul.errors import GraceError
from grace_rul.inference.modelfile import read_model_dir, save_model
from grace_rul.lock import dir_lock
from test_modelfile import untrained_model

torch.set_num_threads(1)
TRAIN = ("train", "--preset", "tiny", "--epochs", "1", "--threads", "1", "--quiet",
         "--set", "data.window=10")  # fmt: skip


def one_error(result) -> str:
    """The single stderr line of a refused command (exit 2)."""
    assert result.code == 2, (result.code, result.err)
    assert len(result.err_lines) == 1, result.err
    assert result.err_lines[0].startswith("grace: error: ")
    return result.err_lines[0]


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory) -> Path:
    """A finished one-epoch run (seed 42); copy it before changing it."""
    from conftest import QUIET
    from grace_rul.resolve import resolve_config
    from grace_rul.trainer import train

    out = tmp_path_factory.mktemp("runs") / "s42"
    cfg = resolve_config("tiny", overrides={"train": {"epochs": 1}, "data": {"window": 10}})
    train(cfg, out, execution=QUIET)
    return out


def copy_run(run: Path, target: Path) -> Path:
    shutil.copytree(run, target)
    return target


# --------------------------------------------------------------------------- 1. locks


def test_a_second_train_on_a_run_directory_in_use_is_refused_naming_the_pid(tmp_path, cli):
    out = tmp_path / "run"
    with dir_lock(out, "grace train"):  # as a first `grace train` holds it
        refused = cli(*TRAIN, "--out", out)
        line = one_error(refused)
        assert f"in use by another grace train (pid {os.getpid()})" in line
        assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing written
    assert cli(*TRAIN, "--out", out).code == 0  # free again once the holder is done
    resumed = cli(*TRAIN, "--epochs", "1", "--out", out, "--resume")
    assert resumed.code == 0  # the lock was released when the first train returned


def test_the_run_lock_is_held_by_another_process_and_dies_with_it(tmp_path, cli):
    out = tmp_path / "run"
    code = (
        "import sys, time; from grace_rul.lock import dir_lock\n"
        f"with dir_lock({str(out)!r}, 'grace train'):\n"
        "    print('locked', flush=True); time.sleep(60)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=env)
    try:
        assert holder.stdout.readline().strip() == b"locked"
        line = one_error(cli(*TRAIN, "--out", out))
        assert f"(pid {holder.pid})" in line
    finally:
        holder.kill()
        holder.wait()
    assert cli(*TRAIN, "--out", out).code == 0


# --------------------------------------------------------------------------- 1. resume


def test_resume_refuses_a_last_pt_of_another_run_naming_the_keys(one_epoch, tmp_path, cli):
    other = tmp_path / "s7"
    assert cli(*TRAIN, "--seed", "7", "--out", other).code == 0
    run = copy_run(one_epoch, tmp_path / "s42")
    assert isinstance(load_checkpoint(run / "checkpoints/last.pt")["config_hash"], str)
    shutil.copy(other / "checkpoints/last.pt", run / "checkpoints/last.pt")
    line = one_error(cli(*TRAIN, "--epochs", "2", "--out", run, "--resume"))
    assert "belongs to another run" in line and "seed" in line
    assert not (run / "metrics.json").read_text() == ""  # the finished run is untouched


@pytest.mark.parametrize(
    "damage, words",
    [
        (lambda s: s["components"].update(model={"conv.0.weight": torch.zeros(2)}), "model"),
        (lambda s: s["components"].update(optimizer={"state": 5}), "optimizer"),
        (lambda s: s["loop"].update(epoch="one"), "loop"),
        (lambda s: s.update(loop=[1, 2]), "loop state"),
    ],
)
def test_a_loadable_but_foreign_last_pt_is_one_line(one_epoch, tmp_path, cli, damage, words):
    run = copy_run(one_epoch, tmp_path / "run")
    last = run / "checkpoints/last.pt"
    saved = torch.load(last, weights_only=True)
    damage(saved)
    atomic_torch_save(saved, last)
    line = one_error(cli(*TRAIN, "--epochs", "2", "--out", run, "--resume"))
    assert "last.pt" in line and words in line


# --------------------------------------------------------------------------- 1. validate first


def test_a_refused_train_writes_nothing_and_the_corrected_retry_runs(tmp_path, cli):
    out = tmp_path / "run"
    # Refused after the settings resolved, when the data is read (longer than every unit).
    one_error(cli(*TRAIN, "--set", "data.window=400", "--out", out))
    assert not out.exists()
    out.mkdir()
    one_error(cli(*TRAIN, "--set", "data.window=400", "--out", out))
    assert list(out.iterdir()) == []
    assert cli(*TRAIN, "--out", out).code == 0


def test_a_run_directory_without_a_finished_epoch_is_reused(one_epoch, tmp_path, cli):
    run = copy_run(one_epoch, tmp_path / "run")
    for name in ("metrics.json", "checkpoints/last.pt", "checkpoints/best.pt"):
        (run / name).unlink()  # as a kill during the first epoch leaves it
    assert cli(*TRAIN, "--out", run).code == 0
    (run / "notes.txt").write_text("mine")
    (run / "metrics.json").unlink()
    (run / "checkpoints/last.pt").unlink()
    (run / "checkpoints/best.pt").unlink()
    one_error(cli(*TRAIN, "--out", run))  # a file that is not the run's: never deleted
    assert (run / "notes.txt").read_text() == "mine"


# --------------------------------------------------------------------------- 4. one line


class _Full:
    """A file whose writes fail as on a full disk."""

    def __init__(self, f) -> None:
        self.f = f

    def write(self, data) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.f.close()


def _enospc_on_write(monkeypatch, name_part: str) -> None:
    """Make atomic writes of files whose name contains ``name_part`` fail with ENOSPC."""
    real = os.fdopen

    def fdopen(fd, *args, **kwargs):
        f = real(fd, *args, **kwargs)
        return _Full(f) if name_part in os.readlink(f"/proc/self/fd/{fd}") else f

    monkeypatch.setattr(checkpoint.os, "fdopen", fdopen)


@pytest.mark.parametrize("target", ["last.pt", "best.pt", "metrics.json"])
def test_disk_full_while_training_is_one_line_and_no_partial_file(tmp_path, cli, monkeypatch,
                                                                  target):  # fmt: skip
    _enospc_on_write(monkeypatch, target)
    out = tmp_path / "run"
    line = one_error(cli(*TRAIN, "--out", out))
    assert "No space left on device" in line and target in line
    assert not list(out.rglob(f"*{target}*"))  # neither the file nor its temporary


def test_disk_full_while_exporting_is_one_line_and_no_partial_directory(tmp_path, cli, monkeypatch):
    model = save_model(untrained_model(), tmp_path / "m")
    _enospc_on_write(monkeypatch, "safetensors")
    line = one_error(cli("export", model, "--out", tmp_path / "copy"))
    assert "No space left on device" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_a_read_only_run_directory_on_resume_is_one_line(one_epoch, tmp_path, cli, monkeypatch):
    run = copy_run(one_epoch, tmp_path / "run")
    (run / "metrics.json").unlink()
    real = checkpoint.os.open

    def read_only(path, flags, *args):
        if flags & os.O_CREAT and str(run) in str(path):
            raise PermissionError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real(path, flags, *args)

    monkeypatch.setattr(checkpoint.os, "open", read_only)
    line = one_error(cli(*TRAIN, "--epochs", "2", "--out", run, "--resume"))
    assert "Read-only file system" in line


def test_warnings_do_not_precede_the_error_line(tmp_path, cli, monkeypatch):
    import grace_rul.inference.loader as loader

    def warn_then_fail(path, **kwargs):
        warnings.warn("TypedStorage is deprecated", UserWarning, stacklevel=1)
        raise GraceError("the model is broken")

    monkeypatch.setattr(loader, "load_model", warn_then_fail)
    data = tmp_path / "x.csv"
    data.write_text("unit,cycle\n1,1\n")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        # as outside pytest: a warning is printed on stderr where it is raised
        warnings.showwarning = lambda m, c, f, n, file=None, line=None: print(
            f"{f}:{n}: {c.__name__}: {m}", file=sys.stderr
        )
        line = one_error(cli("predict", "--model", tmp_path, "--input", data))
    assert line.endswith("the model is broken")


@pytest.mark.parametrize(
    "error",
    [MemoryError(), RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried 4 GB")],
)
def test_running_out_of_memory_is_one_line(tmp_path, cli, monkeypatch, error):
    import grace_rul.inference.loader as loader

    def exhaust(path, **kwargs):
        raise error

    monkeypatch.setattr(loader, "load_model", exhaust)
    data = tmp_path / "x.csv"
    data.write_text("unit,cycle\n1,1\n")
    assert "out of memory" in one_error(cli("predict", "--model", tmp_path, "--input", data))


# --------------------------------------------------------------------------- 1. non-finite


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_model(untrained_model(), tmp_path_factory.mktemp("models") / "m")


def engines(units=(1, 2)) -> pd.DataFrame:
    raw = read_cmapss("FD001").test
    return raw[raw["unit"].isin(units)].reset_index(drop=True)


@pytest.mark.parametrize("value, words", [(1e39, "outside float32"), (1e30, "standard deviations")])
def test_a_value_beyond_float32_or_the_training_range_is_refused(model_dir, tmp_path, cli, value,
                                                                 words):  # fmt: skip
    frame = engines()
    frame.loc[40, "s4"] = value
    path = tmp_path / "e.csv"
    frame.to_csv(path, index=False)
    for fmt in ("csv", "json"):
        line = one_error(cli("predict", "--model", model_dir, "--input", path, "--format", fmt))
        unit, cycle = int(frame.loc[40, "unit"]), int(frame.loc[40, "cycle"])
        assert f"unit {unit}, cycle {cycle}" in line and "s4" in line and words in line


@pytest.mark.parametrize("std", [0.0, -1.0, float("nan")])
def test_a_model_whose_normaliser_is_not_finite_is_refused_on_load(tmp_path, std):
    from grace_rul.data import Normalizer

    out = save_model(untrained_model(), tmp_path / "m")
    doc = json.loads((out / "grace_model.json").read_text())
    doc["members"][0]["normalizer"]["std"][0][3] = std
    with pytest.raises(GraceError, match="not finite or have a std <= 0"):
        Normalizer.from_dict(doc["members"][0]["normalizer"])  # as from a checkpoint
    (out / "grace_model.json").write_text(json.dumps(doc))
    # In a model file a NaN is already refused by the strict JSON reader.
    with pytest.raises(GraceError, match="not finite or have a std <= 0|NaN is not a number"):
        read_model_dir(out)


def test_a_model_whose_weights_are_not_finite_is_refused_on_load(tmp_path):
    model = untrained_model()
    with torch.no_grad():
        next(model.members[0].net.parameters())[0] = float("inf")
    out = save_model(model, tmp_path / "m")
    with pytest.raises(GraceError, match="weights are not finite"):
        read_model_dir(out)


# --------------------------------------------------------------------------- 6. low but real


def test_predict_refuses_to_overwrite_its_input(model_dir, tmp_path, cli):
    path = tmp_path / "e.csv"
    engines().to_csv(path, index=False)
    before = path.read_bytes()
    line = one_error(cli("predict", "--model", model_dir, "--input", path, "--out", path))
    assert "is the --input file" in line and path.read_bytes() == before


def test_unit_ids_that_a_spreadsheet_would_run_are_neutralised(model_dir, tmp_path, cli):
    frame = engines((1, 2, 3, 4))
    ids = {1: "=HYPERLINK(1)", 2: "+1", 3: "@SUM(A1)", 4: "ENG-4"}
    frame["unit"] = frame["unit"].map(ids)
    path = tmp_path / "e.csv"
    frame.to_csv(path, index=False)
    done = cli("predict", "--model", model_dir, "--input", path)
    assert done.code == 0, done.err
    units = [line.split(",")[0] for line in done.out.splitlines()[1:]]
    assert sorted(units) == sorted(["'+1", "'=HYPERLINK(1)", "'@SUM(A1)", "ENG-4"])
    as_json = cli("predict", "--model", model_dir, "--input", path, "--format", "json")
    assert sorted(r["unit"] for r in json.loads(as_json.out)) == sorted(ids.values())


def test_a_huge_cycle_is_out_of_range_not_a_duplicate(model_dir, tmp_path, cli):
    frame = engines()
    frame["cycle"] = frame["cycle"].astype(np.int64)
    frame.loc[0, "cycle"] = 2**62
    frame.loc[1, "cycle"] = 2**62 + 1
    path = tmp_path / "e.csv"
    frame.to_csv(path, index=False)
    line = one_error(cli("predict", "--model", model_dir, "--input", path))
    assert "out of range" in line and "duplicate" not in line


def test_text_unit_ids_are_named_as_given_in_messages(model_dir, tmp_path, cli):
    frame = engines()
    frame["unit"] = frame["unit"].map({1: "ENG-001", 2: "ENG-002"})
    frame.loc[40, "s7"] = np.nan
    path = tmp_path / "e.csv"
    frame.to_csv(path, index=False)
    line = one_error(cli("predict", "--model", model_dir, "--input", path))
    assert "unit ENG-002" in line


# keep imports used by later sections
_ = gzip


# --------------------------------------------------------------------------- 3. model files


def _edit_doc(directory: Path, edit) -> Path:
    path = directory / "grace_model.json"
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))
    return directory


MODEL_FILE_CASES = {
    "negative max_rul": (lambda d: d["data"].update(max_rul=-125), "data.max_rul"),
    "window a string": (lambda d: d["data"].update(window="30"), "data.window"),
    "no sensors": (lambda d: d["data"].update(sensors=[]), "data.sensors"),
    "bad normalisation": (lambda d: d["data"].update(normalization="x"), "data.normalization"),
    "centroid of 2": (lambda d: d["data"]["unseen_regime"].update(centroids=[[1, 2]]), "centroids"),
    "residual string": (lambda d: d["calibration"].update(residuals=["a"]), "residuals"),
    "no residuals": (lambda d: d["calibration"].update(residuals=[]), "residuals"),
    "members empty": (lambda d: d.update(members=[]), "members"),
    "member not a mapping": (lambda d: d.update(members=[5]), "members[0]"),
    "prefix": (lambda d: d["members"][0].update(weights_prefix="x."), "weights_prefix"),
    "onnx outside": (lambda d: d.update(onnx={"file": "../../../../etc/passwd"}), "onnx.file"),
    "onnx absolute": (lambda d: d.update(onnx={"file": "/etc/passwd"}), "onnx.file"),
    "metrics a list": (lambda d: d.update(metrics=[1]), "metrics"),
    "huge lstm": (lambda d: d["members"][0]["config"]["model"].update(lstm_hidden=16384), "lstm"),
    "many layers": (
        lambda d: d["members"][0]["config"]["model"].update(lstm_layers=10_000_000), "lstm_layers"),
    "shape vs header": (
        lambda d: d["members"][0]["config"]["model"].update(lstm_hidden=4096, attn_heads=2),
        "in the file"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(MODEL_FILE_CASES))
def test_every_field_of_a_model_file_is_checked_in_one_line(model_dir, tmp_path, cli, case):
    edit, words = MODEL_FILE_CASES[case]
    directory = _edit_doc(copy_run(model_dir, tmp_path / "m"), edit)
    data = tmp_path / "e.csv"
    engines().to_csv(data, index=False)
    line = one_error(cli("predict", "--model", directory, "--input", data))
    assert words in line, line


@pytest.mark.parametrize(
    "text, words",
    [
        ('{"format": "grace-rul model", "format_version": 1, "x": 1e999}', "out of range"),
        ('{"format": "grace-rul model", "format_version": 1, "x": NaN}', "NaN"),
        ("[" * 200_000 + "]" * 200_000, "nested too deeply"),
    ],
)
def test_json_numbers_beyond_float_and_deep_nesting_are_one_line(model_dir, tmp_path, text, words):
    directory = copy_run(model_dir, tmp_path / "m")
    (directory / "grace_model.json").write_text(text)
    with pytest.raises(GraceError, match=words) as exc:
        read_model_dir(directory)
    assert "\n" not in str(exc.value)


def test_weights_that_are_not_a_regular_file_are_refused(model_dir, tmp_path):
    directory = copy_run(model_dir, tmp_path / "m")
    (directory / "model.safetensors").unlink()
    (directory / "model.safetensors").symlink_to("/dev/zero")
    with pytest.raises(GraceError, match="not a regular file"):
        read_model_dir(directory)


def test_the_shapes_are_checked_before_the_network_is_built(model_dir, tmp_path, monkeypatch):
    import grace_rul.inference.modelfile as modelfile

    directory = _edit_doc(
        copy_run(model_dir, tmp_path / "m"),
        lambda d: d["members"][0]["config"]["model"].update(lstm_hidden=4096, attn_heads=2),
    )
    built = []
    real = modelfile.build_model

    def spy(cfg, **kwargs):
        net = real(cfg, **kwargs)
        built.append(next(net.parameters()).device.type)
        return net

    monkeypatch.setattr(modelfile, "build_model", spy)
    with pytest.raises(GraceError, match="do not fit its config"):
        read_model_dir(directory)
    assert built == ["meta"]  # only the free meta-device build; nothing allocated


# --------------------------------------------------------------------------- 2. bounded readers

BOMB = "\n".join(
    ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    + [f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]" for i in range(8)]
)  # 10**9 values once expanded, 300 bytes on disk


def test_a_yaml_alias_bomb_is_refused_at_once_and_not_echoed(tmp_path, cli):
    import time

    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BOMB)
    config = tmp_path / "config.yaml"
    config.write_text(BOMB.replace("a: &a", "train: &a") + "\nmodel: *i\n")
    started = time.perf_counter()
    for args in (["--dataset", bomb], ["--config", config]):
        result = cli(*TRAIN, *args, "--out", tmp_path / "run")
        line = one_error(result)
        assert "aliases are expanded" in line and len(result.err) < 400
    assert time.perf_counter() - started < 5
    assert not (tmp_path / "run").exists()


def test_a_long_value_in_a_config_error_is_cut_to_a_line(tmp_path, cli):
    config = tmp_path / "config.yaml"
    config.write_text("train:\n  lr: [" + ", ".join(["12345"] * 5000) + "]\n")
    result = cli(*TRAIN, "--config", config, "--out", tmp_path / "run")
    line = one_error(result)
    assert "train.lr" in line and len(line) < 300


def test_a_config_section_that_is_not_a_mapping_is_refused(tmp_path, cli):
    config = tmp_path / "config.yaml"
    config.write_text("train: 5\n")
    line = one_error(cli(*TRAIN, "--config", config, "--out", tmp_path / "run"))
    assert "'train' must be a mapping" in line


def test_a_gzip_bomb_is_stopped_at_the_limit(model_dir, tmp_path, cli, monkeypatch):
    import grace_rul.inference.inputs as inputs

    monkeypatch.setattr(inputs, "MAX_INPUT_BYTES", 2**20)  # 1 MiB here: the same code path
    header = engines().to_csv(index=False).encode()
    bomb = tmp_path / "bomb.csv.gz"
    with gzip.open(bomb, "wb") as f:
        f.write(header)
        for _ in range(64):
            f.write(b"1," * 2**15)  # 4 MiB inflated from a few kB
    line = one_error(cli("predict", "--model", model_dir, "--input", bomb))
    assert "inflates to more than 1048576 bytes" in line


@pytest.mark.parametrize("gzipped", [False, True])
def test_binary_input_is_refused_from_its_first_bytes(model_dir, tmp_path, cli, gzipped):
    path = tmp_path / "zeros.txt"
    with open(path, "wb") as f:
        f.truncate(64 * 2**20)  # a sparse file of NUL bytes
    if gzipped:
        data = gzip.compress(b"\x00" * 2**20)
        path.write_bytes(data)
    line = one_error(cli("predict", "--model", model_dir, "--input", path))
    assert "binary data" in line


def test_an_input_over_the_size_limit_is_refused_before_reading(model_dir, tmp_path, cli):
    path = tmp_path / "huge.csv"
    with open(path, "wb") as f:
        f.truncate(2**30)  # sparse: 1 GiB that costs no disk
    line = one_error(cli("predict", "--model", model_dir, "--input", path))
    assert "over the limit" in line


# --------------------------------------------------------------------------- 5. row order


def _pumps(tmp_path: Path, edit=None) -> Path:
    from test_fleet import pump_fleet

    path = pump_fleet(tmp_path)
    if edit is not None:
        table = pd.read_csv(tmp_path / "pumps.csv")
        edit(table).to_csv(tmp_path / "pumps.csv", index=False)
    return path


def test_a_shuffled_fleet_table_gives_the_same_data_as_a_sorted_one(tmp_path):
    from grace_rul.data import DataConfig, load_dataset
    from test_fleet import assert_same_data

    ordered = _pumps(tmp_path / "a")
    shuffled = _pumps(tmp_path / "b", lambda t: t.sample(frac=1.0, random_state=3))
    assert_same_data(
        load_dataset(DataConfig(dataset=str(ordered), window=10), seed=1),
        load_dataset(DataConfig(dataset=str(shuffled), window=10), seed=1),
    )


@pytest.mark.parametrize(
    "edit, words",
    [
        (lambda t: t.assign(pump_id=t.pump_id.map("ENG-{:03d}".format)).pipe(
            lambda t: t.assign(hour=t.hour.where(t.index != 5, 5))), "unit ENG-001, hour 5"),
        (lambda t: t.assign(pump_id=t.pump_id.map("ENG-{:03d}".format)).pipe(
            lambda t: t[(t.pump_id != "ENG-002") | (t.hour < 5)]), "unit ENG-002 has 4 rows"),
        (lambda t: t.assign(hour=t.hour.where(t.index != 5, 2**62)), "out of range"),
    ],
)  # fmt: skip
def test_fleet_messages_name_units_as_written(tmp_path, cli, edit, words):
    path = _pumps(tmp_path, edit)
    line = one_error(cli(*TRAIN, "--dataset", path, "--out", tmp_path / "run"))
    assert words in line, line


# --------------------------------------------------------------------------- 6. one window rule


def test_a_cmapss_window_longer_than_its_shortest_training_unit_is_refused(tmp_path, cli):
    line = one_error(cli(*TRAIN, "--set", "data.window=200", "--out", tmp_path / "run"))
    assert "fewer than data.window=200" in line
