"""Scoring a :class:`GraceModel` on a C-MAPSS test set (``grace evaluate --model``)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from grace_rul.data import (
    DATASETS,
    DataConfig,
    Normalizer,
    RawSubset,
    dataset_name,
    label_frame,
    read_dataset,
    resolve_normalization,
    test_windows,
)
from grace_rul.errors import GraceError
from grace_rul.inference.conformal import interval_metrics
from grace_rul.inference.gracemodel import GraceModel
from grace_rul.inference.loader import load_model
from grace_rul.metrics import evaluate_predictions
from grace_rul.resolve import config_from_dict
from grace_rul.scoring import test_metrics

SUMMARY_KEYS = ("rmse_last", "nasa_score", "mae", "health_accuracy")


def score_model(
    model: GraceModel, dataset: str | None = None, data_dir: str | None = None
) -> dict[str, Any]:
    """Test metrics, interval coverage and (ensembles) per-member metrics on a test set.

    The last window of every test unit of ``dataset`` (default: the model's subset), each
    member scaled with its own normaliser; the same path as :func:`grace_rul.predict`.
    """
    name = dataset_name(dataset or model.contract.dataset)
    first = model.members[0].config["data"]
    needed = resolve_normalization(first["normalization"], name)
    if name in DATASETS and needed != model.contract.normalization:
        raise GraceError(
            f"model was normalised with '{model.contract.normalization}' statistics of "
            f"{model.contract.dataset}; {name} needs '{needed}' normalisation"
        )
    data_cfg = replace(config_from_dict(model.members[0].config).data, dataset=name)
    raw = read_dataset(data_cfg, data_dir)
    if raw.test_cuts:
        frame = cut_frame(raw, data_cfg, model.members[0].normalizer)
    else:
        frame = label_frame(raw, raw.test, data_cfg, raw.test_rul)
    out = model.outputs(frame)
    metrics = evaluate_predictions(out.rul, out.true_rul, out.health, out.true_health)
    result: dict[str, Any] = {
        "dataset": name,
        "members": len(model.members),
        "test": test_metrics(metrics),
        "intervals": interval_metrics(
            out.true_rul, out.rul, model.calibration, member_pred=out.member_rul
        ),
    }
    if len(model.members) > 1:
        members = [
            test_metrics(evaluate_predictions(r, out.true_rul, g.argmax(axis=1), out.true_health))
            for r, g in zip(out.member_rul, out.member_logits)
        ]
        result["single_model"] = summarise(members)
        result["members_test"] = members
    return result


def cut_frame(raw: RawSubset, cfg: DataConfig, normalizer: Normalizer) -> pd.DataFrame:
    """Test units that run to failure, as one pseudo-unit per seeded cut.

    The cuts are those of :func:`~grace_rul.data.windows.test_windows`; pseudo-unit ``k``
    holds the last ``window`` rows up to cut ``k``, so its last window is that cut's window.
    """
    labelled = label_frame(raw, raw.test, cfg)
    cuts = test_windows(raw, normalizer, cfg)
    units, cycles = labelled["unit"].to_numpy(), labelled["cycle"].to_numpy()
    pieces = []
    for k, (unit, cycle) in enumerate(zip(cuts.unit.tolist(), cuts.cycle.tolist())):
        rows = labelled[(units == unit) & (cycles <= cycle)].tail(cfg.window)
        pieces.append(rows.assign(unit=k))
    return pd.concat(pieces, ignore_index=True)


def summarise(members: list[dict[str, Any]]) -> dict[str, dict[str, float | int | None]]:
    """Mean and sample std (ddof=1; None for one member) of each headline metric."""
    out = {}
    for key in SUMMARY_KEYS:
        values = np.array([m[key] for m in members], dtype=np.float64)
        std = float(values.std(ddof=1)) if len(values) > 1 else None
        out[key] = {"mean": float(values.mean()), "std": std, "n": len(values)}
    return out


def evaluate_model(
    path: str | Path, dataset: str | None = None, data_dir: str | None = None
) -> dict[str, Any]:
    """``grace evaluate --model PATH``: load any kind of model and score it on a test set."""
    model = load_model(path, data_dir=data_dir)
    return {"model": str(path), **score_model(model, dataset, data_dir)}
