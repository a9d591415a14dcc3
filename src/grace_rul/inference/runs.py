"""Models from training runs: run directories and checkpoints become a :class:`GraceModel`.

A run directory (``checkpoints/best.pt`` inside) or a checkpoint file gives one member:
the checkpoint's inference (EMA) weights, its normaliser, its config. Checkpoints are
read with :func:`grace_rul.checkpoint.load_checkpoint` (``weights_only=True``: nothing is
unpickled). Several runs make an ensemble when they share one data contract. The
calibration (:mod:`grace_rul.inference.conformal`) and the training regime centroids
(:mod:`grace_rul.inference.contract`) are computed here from the runs' own data.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from grace_rul import rundir
from grace_rul.checkpoint import load_checkpoint
from grace_rul.config import Config
from grace_rul.data import Normalizer, Split, dataset_kind, load_dataset, read_dataset
from grace_rul.errors import GraceError
from grace_rul.inference.conformal import (
    CAL_CUTS,
    CAL_SEED_OFFSET,
    Calibration,
    calibration_windows,
)
from grace_rul.inference.contract import DataContract
from grace_rul.inference.gracemodel import GraceModel, Member
from grace_rul.model import predict
from grace_rul.rundir import RunDir
from grace_rul.scoring import load_inference_model

CHECKPOINT_KEYS = ("config", "inference", "normalizer", "feature_names")


@dataclass
class LoadedRun:
    """One run's member with its config, contract and where it was read from."""

    member: Member
    cfg: Config
    contract: DataContract
    checkpoint: Path
    name: str  # the path the user gave, for messages


def locate(path: str | Path, require_finished: bool = False) -> tuple[Path, Path | None]:
    """``(checkpoint, run directory or None)`` for a run directory or a checkpoint file."""
    p = Path(path)
    if not p.exists():
        raise GraceError(f"{p} not found")
    if p.is_dir():
        if not (p / rundir.CONFIG).is_file() and not (p / rundir.CHECKPOINTS).is_dir():
            raise GraceError(
                f"{p} is not a GRACE run directory, checkpoint or model directory "
                "(no config.yaml, checkpoints/ or grace_model.json)"
            )
        run: Path | None = p
        checkpoint = RunDir(p).best
    else:
        checkpoint = p
        parent = p.parent.parent
        run = (
            parent
            if p.parent.name == rundir.CHECKPOINTS and (parent / rundir.CONFIG).is_file()
            else None
        )
    if require_finished and (run is None or not RunDir(run).is_finished()):
        raise GraceError(f"{run or p} is not a finished run: {rundir.METRICS} not found")
    return checkpoint, run


def load_run(path: str | Path, require_finished: bool = False) -> LoadedRun:
    """Read one run directory or checkpoint into a :class:`LoadedRun`."""
    checkpoint, run = locate(path, require_finished)
    ckpt = load_checkpoint(checkpoint)
    for key in CHECKPOINT_KEYS:
        if key not in ckpt:
            raise GraceError(
                f"checkpoint {checkpoint} has no '{key}' entry (not a GRACE checkpoint?)"
            )
    try:
        net, cfg = load_inference_model(ckpt)
    except (RuntimeError, KeyError, TypeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise GraceError(
            f"checkpoint {checkpoint}: weights do not fit its config ({first})"
        ) from None
    normalizer = Normalizer.from_dict(ckpt["normalizer"])
    sensors = [str(s) for s in ckpt["feature_names"]]
    if list(normalizer.sensors) != sensors:
        raise GraceError(f"checkpoint {checkpoint}: normaliser sensors differ from feature_names")
    metrics = RunDir(run).read_metrics() if run is not None and RunDir(run).is_finished() else {}
    info = {
        "run": str(run if run is not None else checkpoint),
        "dataset": cfg.data.dataset,
        "seed": cfg.seed,
        "preset": cfg.preset,
        "balancer": cfg.balancer.name,
        "protocol_label": metrics.get("protocol_label"),
        "best_epoch": metrics.get("best_epoch"),
        "test": metrics.get("test"),
    }
    member = Member(net=net, normalizer=normalizer, config=cfg.to_dict(), info=info)
    contract = DataContract.from_run(cfg.data, sensors, normalizer.mode, _columns(cfg, normalizer))
    return LoadedRun(member, cfg, contract, checkpoint, str(path))


def _columns(cfg: Config, normalizer: Normalizer) -> tuple[str, str, tuple[str, ...]]:
    """The input's unit, time and setting column names: a dataset YAML's own names."""
    if dataset_kind(cfg.data.dataset) != "tables":
        return "unit", "cycle", normalizer.settings
    from grace_rul.data.tables import read_spec

    spec = read_spec(cfg.data.dataset)
    return spec.unit, spec.time, tuple(spec.settings)


def model_from_runs(
    paths: list[str | Path], *, require_finished: bool = False, data_dir: str | None = None
) -> GraceModel:
    """One model from one or more runs: checked contract, calibration, regime centroids.

    Runs must share the data contract (subset, sensors, window, RUL cap, thresholds,
    normalisation mode) and the selection protocol; the first difference is refused in
    one line naming both runs. ``data_dir`` overrides where the C-MAPSS files are read
    (default: the runs' own, or the bundled copy when that directory is gone; the files
    are checksummed, so both are the same data).
    """
    runs = [load_run(p, require_finished) for p in paths]
    seen: dict[Path, str] = {}
    for r in runs:
        key = r.checkpoint.resolve()
        if key in seen:
            raise GraceError(f"{r.name} and {seen[key]} are the same run")
        seen[key] = r.name
    first = runs[0]
    for r in runs[1:]:
        diff = first.contract.mismatch(r.contract)
        if diff is None and first.cfg.train.protocol != r.cfg.train.protocol:
            diff = f"protocol {first.cfg.train.protocol} vs {r.cfg.train.protocol}"
        if diff is not None:
            raise GraceError(f"cannot combine {first.name} and {r.name}: {diff}")
    members = [r.member for r in runs]
    calibration, centroids = calibrate(members, [r.cfg for r in runs], data_dir)
    return GraceModel(
        members,
        first.contract,
        calibration,
        centroids,
        provenance=provenance(members, first.contract),
        source=", ".join(r.name for r in runs),
    )


def calibrate(
    members: list[Member], cfgs: list[Config], data_dir: str | None = None
) -> tuple[Calibration, np.ndarray]:
    """Conformal residuals on the members' validation cuts and the training regime centroids.

    The cuts are the union of each member's :func:`calibration_windows`; each cut is
    predicted by the mean of the members that held its unit out (with one member: that
    member). Centroids are the regimes of the union of the members' training units.
    """
    truth: dict[tuple[int, int], float] = {}
    held: list[tuple[Split, set[int]]] = []  # per member: validation windows, their units
    train_units: set[int] = set()
    for cfg in cfgs:  # one subset at a time: only the validation windows are kept
        data = load_dataset(cfg.data, cfg.seed, data_dir)
        cal = calibration_windows(data, cfg.seed)
        for key in zip(cal.unit.tolist(), cal.cycle.tolist(), cal.rul.tolist()):
            truth.setdefault(key[:2], key[2])
        held.append((data.val, set(data.val_units)))
        train_units.update(data.train_units)
    keys = sorted(truth)
    total = np.zeros(len(keys))
    count = np.zeros(len(keys))
    owner = np.zeros(len(keys), dtype=np.int64)
    for i, (member, (val, val_units)) in enumerate(zip(members, held)):
        row = {k: r for r, k in enumerate(zip(val.unit.tolist(), val.cycle.tolist()))}
        picked = [(j, row[k]) for j, k in enumerate(keys) if k[0] in val_units]
        if not picked:
            continue
        where, rows = (list(t) for t in zip(*picked))
        pred, _ = predict(member.net, val.x[rows])
        total[where] += pred.numpy().astype(np.float64)
        count[where] += 1
        owner[where] = i
    true = np.array([truth[k] for k in keys], dtype=np.float64)
    folds = is_fold_ensemble(cfgs) and bool(np.all(count == 1))
    if folds:
        prediction = "the fold model that held the unit out (CV+)"
    elif len(members) > 1:
        prediction = "mean of the members that held the unit out"
    else:
        prediction = "the member's prediction"
    calibration = Calibration.from_residuals(
        true - total / count,
        owner if folds else None,
        cuts_per_unit=CAL_CUTS,
        cut_seed=f"run seed + {CAL_SEED_OFFSET}",
        units=len({k[0] for k in keys}),
        windows=len(keys),
        prediction=prediction,
    )
    first = cfgs[0].data
    raw = read_dataset(first, data_dir)
    if raw.regimes != "round":  # other fleets: no unseen-regime flag (inference/contract.py)
        return calibration, np.zeros((0, 3))
    train = raw.train[raw.train["unit"].isin(sorted(train_units))]
    return calibration, Normalizer.fit(train, "regime").centroids


def is_fold_ensemble(cfgs: list[Config]) -> bool:
    """True when ``cfgs`` are the K fold runs of one cross-validation (folds 1..K, one seed)."""
    k = cfgs[0].data.folds
    return (
        k >= 2
        and len(cfgs) == k
        and sorted(c.data.fold for c in cfgs) == list(range(1, k + 1))
        and len({(c.data.folds, c.seed) for c in cfgs}) == 1
    )


def provenance(members: list[Member], contract: DataContract) -> dict[str, Any]:
    """Where a model came from: subset, seeds, presets, runs, package version, git commit."""
    from grace_rul import __version__, source_commit

    infos = [m.info for m in members]
    out: dict[str, Any] = {
        "package": "grace-rul",
        "version": __version__,
        "git_commit": source_commit(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "dataset": contract.dataset,
        "seeds": [i.get("seed") for i in infos],
        "presets": sorted({str(i.get("preset")) for i in infos}),
        "runs": [i.get("run") for i in infos],
    }
    if len(members) == 1:
        out.update(
            seed=infos[0].get("seed"), preset=infos[0].get("preset"), test=infos[0].get("test")
        )
    return out
