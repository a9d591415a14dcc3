"""From a trained model to decisions: model files, prediction, intervals, ensembles, ONNX.

* :mod:`~grace_rul.inference.modelfile` — model directories safe to share
  (``model.safetensors`` + ``grace_model.json``), atomic writes, format versions.
* :mod:`~grace_rul.inference.loader` — :func:`load_model` for runs, checkpoints, model
  and ensemble directories; :mod:`~grace_rul.inference.runs` builds models from runs.
* :mod:`~grace_rul.inference.inputs` — reading and checking the engines to predict.
* :mod:`~grace_rul.inference.prediction` — :func:`predict`: RUL, interval, health, flags.
* :mod:`~grace_rul.inference.conformal` — split-conformal intervals.
* :mod:`~grace_rul.inference.ensemble` — ``grace export`` and ``grace ensemble``.
* :mod:`~grace_rul.inference.evaluate` — ``grace evaluate --model``.
* :mod:`~grace_rul.inference.onnx_export` — ``model.onnx`` and the onnxruntime backend.
* :mod:`~grace_rul.inference.commands` — the CLI subcommands.

Nothing heavy is imported here, so ``grace --help`` does not wait for torch; the three
public names load on first use.
"""

from __future__ import annotations

from typing import Any

__all__ = ["GraceModel", "load_model", "predict"]
_HOMES = {
    "GraceModel": "grace_rul.inference.gracemodel",
    "load_model": "grace_rul.inference.loader",
    "predict": "grace_rul.inference.prediction",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'grace_rul.inference' has no attribute {name!r}")
