"""Atomic writes and checkpoint loading errors."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch

from grace_rul.checkpoint import atomic_torch_save, load_checkpoint, pickle_globals
from grace_rul.errors import GraceError
from grace_rul.io import atomic_write_bytes, atomic_write_json, atomic_write_text

torch.set_num_threads(1)


def _ckpt(epoch: int) -> dict:
    return {"epoch": epoch, "model": {"w": torch.full((64, 64), float(epoch))}}


def test_save_and_load_round_trip(tmp_path):
    path = atomic_torch_save(_ckpt(3), tmp_path / "run" / "last.pt")
    loaded = load_checkpoint(path)
    assert loaded["epoch"] == 3 and torch.equal(loaded["model"]["w"], _ckpt(3)["model"]["w"])
    assert os.listdir(path.parent) == ["last.pt"]


def test_interrupted_before_rename_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    atomic_torch_save(_ckpt(1), path)

    def crash(src, dst):
        raise OSError("power cut")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="power cut"):
        atomic_torch_save(_ckpt(2), path)
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert os.listdir(tmp_path) == ["last.pt"]  # no temp file left behind


def test_failure_while_writing_leaves_no_temp_file(tmp_path):
    path = tmp_path / "metrics.json"
    atomic_write_json(path, {"rmse": 12.5})
    with pytest.raises(TypeError):
        atomic_write_json(path, {"bad": object()})
    assert json.loads(path.read_text()) == {"rmse": 12.5}
    assert os.listdir(tmp_path) == ["metrics.json"]


def test_text_and_bytes_writers(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "héllo\n")
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "héllo\n"
    atomic_write_bytes(tmp_path / "a.txt", b"\x00\x01")
    assert (tmp_path / "a.txt").read_bytes() == b"\x00\x01"
    assert sorted(os.listdir(tmp_path)) == ["a.txt"]


def _truncate(path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_truncated_last_checkpoint_offers_best(tmp_path):
    last, best = tmp_path / "last.pt", tmp_path / "best.pt"
    atomic_torch_save(_ckpt(5), last)
    _truncate(last)
    with pytest.raises(GraceError) as info:
        load_checkpoint(last)
    message = str(info.value)
    assert f"checkpoint {last} is corrupt or truncated" in message
    assert "best.pt" not in message and "\n" not in message
    atomic_torch_save(_ckpt(4), best)
    with pytest.raises(GraceError, match="best.pt exists") as info:
        load_checkpoint(last)
    assert str(best) in str(info.value) and "\n" not in str(info.value)
    assert load_checkpoint(best)["epoch"] == 4


def test_garbage_file_is_corrupt(tmp_path):
    path = tmp_path / "last.pt"
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(GraceError, match="corrupt or truncated"):
        load_checkpoint(path)


def test_missing_last_checkpoint_offers_best(tmp_path):
    with pytest.raises(GraceError, match="is missing$"):
        load_checkpoint(tmp_path / "last.pt")
    atomic_torch_save(_ckpt(4), tmp_path / "best.pt")
    with pytest.raises(GraceError, match="is missing; .*best.pt exists"):
        load_checkpoint(tmp_path / "last.pt")


def test_non_dict_checkpoint_is_rejected(tmp_path):
    path = atomic_torch_save([1, 2, 3], tmp_path / "last.pt")
    with pytest.raises(GraceError, match="not a GRACE checkpoint"):
        load_checkpoint(path)


class _Payload:
    """Unpickling this calls open(target, "w"): it creates a file."""

    def __init__(self, target) -> None:
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_a_payload_is_refused_by_name_and_told_apart_from_damage(tmp_path):
    marker = tmp_path / "pwned"
    for name, write in [
        ("zip.pt", lambda p: torch.save({"a": _Payload(marker)}, p)),
        ("bare.pt", lambda p: p.write_bytes(pickle.dumps({"a": _Payload(marker)}))),
    ]:
        path = tmp_path / name
        write(path)
        assert "io.open" in pickle_globals(path)
        with pytest.raises(GraceError, match=r"is refused: .*\(it would call io\.open\)"):
            load_checkpoint(path)
        assert not marker.exists()
    # the same bytes cut short are damage, not a payload
    data = pickle.dumps({"a": _Payload(marker)})
    (tmp_path / "cut.pt").write_bytes(data[: len(data) - 3])
    assert pickle_globals(tmp_path / "cut.pt") is None
    with pytest.raises(GraceError, match="corrupt or truncated"):
        load_checkpoint(tmp_path / "cut.pt")
    atomic_torch_save(_ckpt(1), tmp_path / "ok.pt")
    assert all(g.startswith(("torch.", "collections.")) for g in pickle_globals(tmp_path / "ok.pt"))
