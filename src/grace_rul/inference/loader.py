"""``load_model``: one entry point for every kind of model path."""

from __future__ import annotations

from pathlib import Path

from grace_rul.errors import GraceError
from grace_rul.inference.gracemodel import GraceModel
from grace_rul.inference.modelfile import MODEL_JSON, WEIGHTS, is_model_dir, read_model_dir
from grace_rul.inference.runs import model_from_runs
from grace_rul.rundir import MODEL_DIR, RunDir, fold_dir, is_fold_root


def load_model(path: str | Path, *, data_dir: str | None = None) -> GraceModel:
    """Load a model from a run directory, a checkpoint, a model directory or an ensemble.

    A cross-validation directory (``grace train --folds K``) gives its fold ensemble.

    Model directories (``grace export``, ``grace ensemble``) are read from JSON and
    safetensors only. Run directories and checkpoints are read with
    ``torch.load(weights_only=True)``; their calibration is computed on the run's
    validation units as ``grace export`` does (``data_dir``: where C-MAPSS lives, default
    the run's or the bundled copy).
    """
    p = Path(path)
    if not p.exists():
        raise GraceError(f"model {p} not found")
    if p.is_dir() and is_model_dir(p):
        return read_model_dir(p)
    if p.is_file() and p.name in (MODEL_JSON, WEIGHTS):
        return read_model_dir(p.parent)
    if p.is_dir() and is_fold_root(p):  # a cross-validation: its fold ensemble
        if is_model_dir(p / MODEL_DIR):
            return read_model_dir(p / MODEL_DIR)
        k = int(RunDir(p).read_config()["data"]["folds"])
        return model_from_runs([fold_dir(p, f) for f in range(1, k + 1)], data_dir=data_dir)
    return model_from_runs([p], data_dir=data_dir)
