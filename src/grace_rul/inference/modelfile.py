"""Model directories that are safe to share: ``model.safetensors`` + ``grace_model.json``.

A model directory (``grace export`` and ``grace ensemble`` write one)::

    grace_model.json     format version, data contract, members (config, normaliser,
                         provenance), conformal calibration, unseen-regime centroids,
                         test metrics, provenance (written last)
    model.safetensors    every member's inference (EMA) weights, keys "member{i}.<name>"
                         (a single run is member0)
    model.onnx           optional (--onnx): see grace_rul.inference.onnx_export
    metrics.json         ensembles: the ensemble's test metrics

Loading reads JSON and safetensors only: nothing is unpickled. The directory is written
in a temporary directory beside it and renamed into place, so a crash leaves the old
model or the new one, never a mix. A newer ``format_version``, or a corrupt or truncated
file, is a one-line :class:`~grace_rul.errors.GraceError`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from grace_rul.checkpoint import _fsync_dir, atomic_write_bytes, atomic_write_json
from grace_rul.config import config_from_dict
from grace_rul.data.cmapss import Normalizer, window_rows
from grace_rul.errors import GraceError
from grace_rul.inference.conformal import Calibration
from grace_rul.inference.contract import UNSEEN_REGIME_STEPS, UNSEEN_RULE, DataContract
from grace_rul.inference.gracemodel import GraceModel, Member
from grace_rul.model import build_model

FORMAT = "grace-rul model"
FORMAT_VERSION = 1
MODEL_JSON = "grace_model.json"
WEIGHTS = "model.safetensors"
ONNX_FILE = "model.onnx"


def is_model_dir(path: str | Path) -> bool:
    """Whether ``path`` is a directory holding ``grace_model.json``."""
    return (Path(path) / MODEL_JSON).is_file()


def check_out_dir(out: str | Path, overwrite: bool = False) -> Path:
    """Refuse an output directory that cannot be (re)placed, before any work is done.

    An absent or empty directory is fine; a model directory needs ``overwrite``; any
    other non-empty directory is never replaced.
    """
    out = Path(out)
    if out.exists():
        if not out.is_dir():
            raise GraceError(f"--out {out} exists and is not a directory")
        if any(out.iterdir()):
            if not is_model_dir(out):
                raise GraceError(
                    f"--out {out} is not empty and not a GRACE model directory; "
                    "refusing to replace it"
                )
            if not overwrite:
                raise GraceError(f"--out {out} holds a model (use --overwrite to replace it)")
    return out


def model_document(model: GraceModel, onnx_info: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``grace_model.json`` content of ``model``."""
    data = model.contract.to_dict()
    data["unseen_regime"] = {
        "rule": UNSEEN_RULE,
        "threshold_steps": UNSEEN_REGIME_STEPS,
        "centroids": model.centroids.tolist(),
    }
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": "ensemble" if len(model.members) > 1 else "single",
        "data": data,
        "members": [
            {
                "weights_prefix": f"member{i}.",
                "n_features": len(model.contract.sensors),
                "config": m.config,
                "normalizer": m.normalizer.to_dict(),
                "provenance": m.info,
            }
            for i, m in enumerate(model.members)
        ],
        "calibration": model.calibration.to_dict(),
        "metrics": model.metrics,
        "provenance": model.provenance,
        "onnx": onnx_info,
    }


def save_model(
    model: GraceModel,
    out: str | Path,
    *,
    overwrite: bool = False,
    onnx: bool = False,
    extra_json: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` as a model directory at ``out`` (atomically); returns the path.

    ``onnx`` also writes ``model.onnx``; ``extra_json`` maps more file names to JSON
    content (an ensemble's ``metrics.json``).
    """
    from safetensors.torch import save as safetensors_bytes

    out = check_out_dir(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o777 & ~mask)  # mkdtemp makes 0o700; a model dir is an ordinary dir
        atomic_write_bytes(
            tmp / WEIGHTS,
            safetensors_bytes(
                model.state_dict(),
                metadata={"format": "pt", "grace_format_version": str(FORMAT_VERSION)},
            ),
        )
        onnx_info = None
        if onnx:
            from grace_rul.inference.onnx_export import export_onnx

            onnx_info = export_onnx(model, tmp / ONNX_FILE)
        for name, content in (extra_json or {}).items():
            atomic_write_json(tmp / name, content)
        atomic_write_json(tmp / MODEL_JSON, model_document(model, onnx_info))
        _swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _swap_in(tmp: Path, out: Path) -> None:
    """Rename the finished temporary directory to ``out`` (replacing an old model)."""
    old = None
    if out.exists() and any(out.iterdir()):
        old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(out, old)
    os.replace(tmp, out)  # onto an absent or empty directory
    _fsync_dir(out.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def read_model_dir(path: str | Path) -> GraceModel:
    """Load a model directory (JSON + safetensors only)."""
    path = Path(path)
    doc_path = path / MODEL_JSON
    doc = _read_json(doc_path)
    version = doc.get("format_version")
    if doc.get("format") != FORMAT or type(version) is not int or version < 1:
        raise GraceError(f"{doc_path} is not a GRACE model file (no valid format/format_version)")
    if version > FORMAT_VERSION:
        from grace_rul import __version__

        raise GraceError(
            f"{doc_path} has format_version {version}, newer than grace-rul {__version__} "
            f"reads ({FORMAT_VERSION}); upgrade grace-rul"
        )
    tensors = _read_weights(path / WEIGHTS)
    try:
        contract = DataContract.from_dict(doc["data"])
        members = [_member(i, m, tensors, contract, path) for i, m in enumerate(doc["members"])]
        calibration = Calibration.from_dict(doc["calibration"])
        centroids = np.asarray(doc["data"]["unseen_regime"]["centroids"], dtype=np.float64)
        onnx = doc.get("onnx")
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        raise GraceError(f"{doc_path} is malformed (missing or bad {exc})") from None
    return GraceModel(
        members,
        contract,
        calibration,
        centroids,
        metrics=doc.get("metrics"),
        provenance=doc.get("provenance"),
        source=str(path),
        onnx_file=path / onnx["file"] if onnx else None,
    )


def _member(
    i: int, doc: dict[str, Any], tensors: dict[str, Any], contract: DataContract, path: Path
) -> Member:
    cfg = config_from_dict(doc["config"])
    prefix = f"member{i}."
    state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    if not state:
        raise GraceError(f"{path / WEIGHTS} holds no weights for member {i}")
    net = build_model(
        cfg.model, n_features=len(contract.sensors), max_rul=contract.max_rul,
        window=window_rows(cfg.data),
    )  # fmt: skip
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise GraceError(
            f"{path / WEIGHTS}: member {i}'s weights do not fit its config ({first})"
        ) from None
    normalizer = Normalizer.from_dict(doc["normalizer"])
    if normalizer.sensors != contract.sensors:
        raise GraceError(f"{path / MODEL_JSON}: member {i}'s normaliser reads other sensors")
    return Member(net.eval(), normalizer, doc["config"], dict(doc.get("provenance") or {}))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        text = path.read_bytes().decode("utf-8")
        doc = json.loads(text)
    except FileNotFoundError:
        raise GraceError(
            f"{path.parent} is not a GRACE model directory: {path.name} not found"
        ) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GraceError(f"{path} is corrupt or truncated (not valid JSON: {exc})") from None
    except OSError as exc:
        raise GraceError(f"{path} cannot be read ({exc.strerror})") from None
    if not isinstance(doc, dict):
        raise GraceError(f"{path} is corrupt (expected a JSON object)")
    return doc


def _read_weights(path: Path) -> dict[str, Any]:
    from safetensors.torch import load as safetensors_load

    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise GraceError(
            f"{path.parent} is not a complete model directory: {path.name} not found"
        ) from None
    except OSError as exc:
        raise GraceError(f"{path} cannot be read ({exc.strerror})") from None
    try:
        return safetensors_load(data)
    except Exception as exc:  # safetensors raises its own error type for damaged files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise GraceError(f"{path} is corrupt or truncated ({first})") from None
