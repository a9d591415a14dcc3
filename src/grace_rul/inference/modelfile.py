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
model or the new one, never a mix. A newer ``format_version``, a corrupt or truncated
file, or any field of the wrong type or range (:func:`check_document`) is a one-line
:class:`~grace_rul.errors.GraceError`; readers are bounded (``MAX_*`` below,
docs/reliability.md).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from grace_rul.backbones import build_model
from grace_rul.bounded import check_file
from grace_rul.data.scaling import Normalizer
from grace_rul.data.windows import window_rows
from grace_rul.errors import GraceError, brief, first_line
from grace_rul.inference.conformal import Calibration
from grace_rul.inference.contract import UNSEEN_REGIME_STEPS, UNSEEN_RULE, DataContract
from grace_rul.inference.gracemodel import GraceModel, Member
from grace_rul.io import atomic_write_bytes, atomic_write_json, fsync_dir
from grace_rul.resolve import config_from_dict

# Readers are bounded before they allocate (docs/reliability.md).
MAX_JSON_BYTES = 64 * 2**20
MAX_WEIGHTS_BYTES = 2**30
MAX_HEADER_BYTES = 16 * 2**20
MAX_MEMBERS = 64
MAX_COLUMNS = 4096
MAX_NAME = 256
MAX_PATH = 4096
MAX_WINDOW = 100_000
MAX_RUL = 1_000_000
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
    fsync_dir(out.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def read_model_dir(path: str | Path) -> GraceModel:
    """Load a model directory (JSON + safetensors only).

    Every field of ``grace_model.json`` is checked first (:func:`check_document`), then
    each member's shapes against the safetensors header (read alone, it costs nothing), so
    a file that asks for a huge network is refused before anything is allocated.
    """
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
    check_document(doc, doc_path)
    header = _read_header(path / WEIGHTS)
    try:
        contract = DataContract.from_dict(doc["data"])
        configs = [config_from_dict(m["config"]) for m in doc["members"]]
        for i, cfg in enumerate(configs):
            _check_shapes(i, cfg, contract, header, path / WEIGHTS)
        tensors = _read_weights(path / WEIGHTS)
        members = [
            _member(i, m, cfg, tensors, contract, path)
            for i, (m, cfg) in enumerate(zip(doc["members"], configs))
        ]
        calibration = Calibration.from_dict(doc["calibration"])
        centroids = np.asarray(doc["data"]["unseen_regime"]["centroids"], dtype=np.float64)
        onnx = doc.get("onnx")
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, OverflowError) as exc:
        raise GraceError(f"{doc_path} is malformed (missing or bad {brief(exc)})") from None
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
    i: int,
    doc: dict[str, Any],
    cfg: Any,
    tensors: dict[str, Any],
    contract: DataContract,
    path: Path,
) -> Member:
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
        raise GraceError(
            f"{path / WEIGHTS}: member {i}'s weights do not fit its config ({first_line(exc)})"
        ) from None
    normalizer = Normalizer.from_dict(doc["normalizer"])
    if normalizer.sensors != contract.sensors:
        raise GraceError(f"{path / MODEL_JSON}: member {i}'s normaliser reads other sensors")
    return Member(net.eval(), normalizer, doc["config"], dict(doc.get("provenance") or {}))


def _check_shapes(
    i: int, cfg: Any, contract: DataContract, header: dict[str, list[int]], path: Path
) -> None:
    """Member ``i``'s network, built on the meta device (no memory), against the header."""
    import torch

    try:
        with torch.device("meta"):
            net = build_model(
                cfg.model,
                n_features=len(contract.sensors),
                max_rul=contract.max_rul,
                window=window_rows(cfg.data),
            )
    except (NotImplementedError, RuntimeError):
        return  # a network that cannot be built on meta: load_state_dict still checks it
    prefix = f"member{i}."
    stored = {k[len(prefix) :]: v for k, v in header.items() if k.startswith(prefix)}
    if not stored:
        raise GraceError(f"{path} holds no weights for member {i}")
    for key, value in net.state_dict().items():
        if key not in stored:
            raise GraceError(f"{path}: member {i}'s weights do not fit its config (no {key})")
        if list(value.shape) != stored[key]:
            raise GraceError(
                f"{path}: member {i}'s weights do not fit its config ({key} is "
                f"{stored[key]} in the file, {list(value.shape)} by the config)"
            )


def _strict_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]} is out of range")
    return value


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows")


def _read_json(path: Path) -> dict[str, Any]:
    missing = f"{path.parent} is not a GRACE model directory: {path.name} not found"
    check_file(path, MAX_JSON_BYTES, str(path), missing)
    try:
        text = path.read_bytes().decode("utf-8")
        doc = json.loads(text, parse_float=_strict_float, parse_constant=_no_constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GraceError(f"{path} is corrupt or truncated (not valid JSON: {exc})") from None
    except ValueError as exc:
        raise GraceError(f"{path} is corrupt ({first_line(exc)})") from None
    except RecursionError:
        raise GraceError(f"{path} is corrupt (nested too deeply)") from None
    except OSError as exc:
        raise GraceError(f"{path} cannot be read ({exc.strerror})") from None
    if not isinstance(doc, dict):
        raise GraceError(f"{path} is corrupt (expected a JSON object)")
    return doc


def _read_header(path: Path) -> dict[str, list[int]]:
    """The tensor shapes a safetensors file declares, read from its header alone."""
    missing = f"{path.parent} is not a complete model directory: {path.name} not found"
    size = check_file(path, MAX_WEIGHTS_BYTES, str(path), missing)
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if size < 8 or n > min(size - 8, MAX_HEADER_BYTES):
                raise ValueError("header length out of range")
            header = json.loads(f.read(n))
        shapes = {
            str(k): [int(d) for d in v["shape"]] for k, v in header.items() if k != "__metadata__"
        }
    except (OSError, ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
        raise GraceError(f"{path} is corrupt or truncated ({first_line(exc)})") from None
    return shapes


def _read_weights(path: Path) -> dict[str, Any]:
    from safetensors.torch import load as safetensors_load

    missing = f"{path.parent} is not a complete model directory: {path.name} not found"
    check_file(path, MAX_WEIGHTS_BYTES, str(path), missing)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise GraceError(f"{path} cannot be read ({exc.strerror})") from None
    try:
        return safetensors_load(data)
    except Exception as exc:  # safetensors raises its own error type for damaged files
        raise GraceError(f"{path} is corrupt or truncated ({first_line(exc)})") from None


# --------------------------------------------------------------------------- checking


def check_document(doc: dict[str, Any], where: Path) -> None:
    """Refuse, in one line naming the field, a ``grace_model.json`` with a value of the
    wrong type or range: every number finite, every count and size bounded, every file
    name inside the model directory."""

    def fail(field: str, need: str, value: Any) -> None:
        raise GraceError(f"{where} is malformed: {field} must be {need} (got {brief(value, 60)})")

    def mapping(field: str, value: Any, optional: bool = False) -> dict[str, Any]:
        if value is None and optional:
            return {}
        if not isinstance(value, dict):
            fail(field, "an object", value)
        return value

    def whole(field: str, value: Any, low: int, high: int) -> None:
        if type(value) is not int or not low <= value <= high:
            fail(field, f"a whole number in [{low}, {high}]", value)

    def names(field: str, value: Any, least: int) -> None:
        if (
            not isinstance(value, list)
            or not least <= len(value) <= MAX_COLUMNS
            or not all(isinstance(v, str) and 0 < len(v) <= MAX_NAME for v in value)
            or len(set(value)) != len(value)
        ):
            fail(field, f"a list of {least}..{MAX_COLUMNS} distinct column names", value)

    def text(field: str, value: Any) -> None:
        if not isinstance(value, str) or not 0 < len(value) <= MAX_PATH:
            fail(field, "a non-empty string", value)

    def numbers(field: str, value: Any, least: int, width: int | None = None) -> None:
        rows = value if width is None else [x for row in _list(value) for x in _list(row)]
        if (
            not isinstance(value, list)
            or len(value) < least
            or (width is not None and not all(_sized(row, width) for row in value))
            or not all(_number(x) for x in rows)
        ):
            shape = f"rows of {width} numbers" if width else "numbers"
            fail(field, f"a list of at least {least} {shape}", value)

    if doc.get("kind", "single") not in ("single", "ensemble"):
        fail("kind", "single or ensemble", doc.get("kind"))
    data = mapping("data", doc.get("data"))
    text("data.dataset", data.get("dataset"))
    names("data.sensors", data.get("sensors"), 1)
    names("data.settings", data.get("settings", []), 0)
    for key in ("unit_column", "time_column"):
        if key in data:
            text(f"data.{key}", data[key])
    whole("data.window", data.get("window"), 1, MAX_WINDOW)
    whole("data.max_rul", data.get("max_rul"), 1, MAX_RUL)
    whole("data.critical_rul", data.get("critical_rul"), 1, MAX_RUL)
    whole("data.degrading_rul", data.get("degrading_rul"), data["critical_rul"] + 1, MAX_RUL)
    if data.get("normalization") not in ("global", "regime"):
        fail("data.normalization", "global or regime", data.get("normalization"))
    unseen = mapping("data.unseen_regime", data.get("unseen_regime"))
    numbers("data.unseen_regime.centroids", unseen.get("centroids"), 0, 3)
    members = doc.get("members")
    if not isinstance(members, list) or not 1 <= len(members) <= MAX_MEMBERS:
        fail("members", f"a list of 1..{MAX_MEMBERS} members", members)
    for i, member in enumerate(members):
        m = mapping(f"members[{i}]", member)
        if m.get("weights_prefix", f"member{i}.") != f"member{i}.":
            fail(f"members[{i}].weights_prefix", f"'member{i}.'", m.get("weights_prefix"))
        if m.get("n_features", len(data["sensors"])) != len(data["sensors"]):
            fail(f"members[{i}].n_features", "the number of sensors", m.get("n_features"))
        mapping(f"members[{i}].config", m.get("config"))
        mapping(f"members[{i}].normalizer", m.get("normalizer"))
        mapping(f"members[{i}].provenance", m.get("provenance"), optional=True)
    calibration = mapping("calibration", doc.get("calibration"))
    numbers("calibration.residuals", calibration.get("residuals"), 1)
    mapping("metrics", doc.get("metrics"), optional=True)
    mapping("provenance", doc.get("provenance"), optional=True)
    onnx = mapping("onnx", doc.get("onnx"), optional=True)
    if onnx:
        name = onnx.get("file")
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
            fail("onnx.file", "a file name inside the model directory", name)


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _sized(row: Any, width: int) -> bool:
    return isinstance(row, list) and len(row) == width


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
