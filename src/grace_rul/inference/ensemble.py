"""Seed ensembles (``grace ensemble``) and single-run exports (``grace export``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from grace_rul.errors import GraceError
from grace_rul.inference.evaluate import score_model
from grace_rul.inference.loader import load_model
from grace_rul.inference.modelfile import check_out_dir, save_model
from grace_rul.inference.onnx_export import require
from grace_rul.inference.runs import model_from_runs

ENSEMBLE_METRICS = "metrics.json"


def export_model(
    path: str | Path,
    out: str | Path,
    *,
    onnx: bool = False,
    overwrite: bool = False,
    data_dir: str | None = None,
) -> Path:
    """Write the model at ``path`` (run directory, checkpoint or model directory) to ``out``.

    From a run, the calibration is computed and the model scored on its subset's test set
    (``metrics`` in ``grace_model.json``: test metrics and interval coverage).
    """
    check_out_dir(out, overwrite)
    if onnx:
        require("onnx")
    model = load_model(path, data_dir=data_dir)
    if model.metrics is None:
        model.metrics = score_model(model, data_dir=data_dir)
    return save_model(model, out, overwrite=overwrite, onnx=onnx)


def build_ensemble(
    runs: list[str | Path],
    out: str | Path,
    *,
    onnx: bool = False,
    overwrite: bool = False,
    data_dir: str | None = None,
) -> dict[str, Any]:
    """Combine finished runs into one model directory scored on their subset's test set.

    The runs must be finished (``metrics.json``) and share the data contract. Returns
    the ensemble's ``metrics.json``: test metrics and interval coverage of the ensemble,
    each member's test metrics and their mean ± std.
    """
    if len(runs) < 2:
        raise GraceError("an ensemble needs at least two runs")
    check_out_dir(out, overwrite)
    if onnx:
        require("onnx")
    model = model_from_runs(list(runs), require_finished=True, data_dir=data_dir)
    scored = score_model(model, data_dir=data_dir)
    infos = [m.info for m in model.members]
    labels = sorted({str(i.get("protocol_label")) for i in infos})
    metrics = {
        "kind": "ensemble",
        "runs": [i["run"] for i in infos],
        "seeds": [i["seed"] for i in infos],
        "presets": sorted({str(i["preset"]) for i in infos}),
        "balancers": sorted({str(i["balancer"]) for i in infos}),
        "protocol_label": labels[0] if len(labels) == 1 else labels,
        **scored,
    }
    model.metrics = metrics
    save_model(model, out, overwrite=overwrite, onnx=onnx, extra_json={ENSEMBLE_METRICS: metrics})
    return metrics
