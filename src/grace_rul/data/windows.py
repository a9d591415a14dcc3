"""Labels, splits and windows: from a fleet read into a :class:`RawSubset` to training data.

The rules (capped RUL, health classes, the hold-out or K-fold split of whole units, the
test split, stride-1 windows with front padding) are the contract stated in
:mod:`grace_rul.data.cmapss`; :func:`build_data` applies all of them to any fleet.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from grace_rul.config import DataConfig
from grace_rul.data.cmapss import RawSubset
from grace_rul.data.scaling import Normalizer, fit_normalizer
from grace_rul.errors import GraceError

SUMMARY_ROWS = 2  # data.window_features: the mean row and the slope row
# Seed of test splits a fleet lacks (held-out units, their cuts): fixed, so every run
# seed of a sweep is scored on the same test windows.
TEST_SEED = 0


def health_class(rul: np.ndarray | Tensor, critical: int = 30, degrading: int = 80) -> Any:
    """Health state from (capped) RUL: 2 critical (<= critical), 1 degrading (<= degrading), 0.

    Returns int64 labels of the input's kind: a tensor for a tensor, else an ndarray.
    """
    if isinstance(rul, Tensor):
        out = torch.zeros(rul.shape, dtype=torch.int64, device=rul.device)
        out[rul <= degrading] = 1
        out[rul <= critical] = 2
        return out
    values = np.asarray(rul)
    labels = np.zeros(values.shape, dtype=np.int64)
    labels[values <= degrading] = 1
    labels[values <= critical] = 2
    return labels


def add_labels(
    frame: pd.DataFrame,
    max_rul: int,
    critical: int,
    degrading: int,
    final_rul: np.ndarray | None = None,
) -> pd.DataFrame:
    """Return a copy of ``frame`` with capped ``rul`` and ``health`` columns.

    ``rul = min(last cycle of the unit - cycle + final_rul[unit], max_rul)``;
    ``final_rul`` (test units only) holds the true RUL at each unit's last cycle,
    one value per unit in ascending unit order; it is 0 for run-to-failure units.
    """
    units = frame["unit"].to_numpy()
    cycles = frame["cycle"].to_numpy()
    last = frame.groupby("unit", sort=False)["cycle"].transform("max").to_numpy()
    rul = (last - cycles).astype(np.float64)
    if final_rul is not None:
        unit_ids = np.unique(units)
        final = np.asarray(final_rul, dtype=np.float64).reshape(-1)
        if len(final) != len(unit_ids):
            raise GraceError(
                f"final RUL has {len(final)} values but the frame has {len(unit_ids)} units"
            )
        rul += final[np.searchsorted(unit_ids, units)]
    rul = np.minimum(rul, float(max_rul))
    return frame.assign(rul=rul, health=health_class(rul, critical, degrading))


@dataclass
class Split:
    """Windows ready for training: CPU tensors, one row per window."""

    x: Tensor  # (N, window rows, 14) float32 (window_rows: + 2 with data.window_features)
    rul: Tensor  # (N,) float32, capped RUL at the window's last cycle
    health: Tensor  # (N,) int64
    unit: Tensor  # (N,) int64
    cycle: Tensor  # (N,) int64, cycle of the window's last row

    def __len__(self) -> int:
        return int(self.x.shape[0])


def window_rows(cfg: DataConfig) -> int:
    """Rows of one network input: ``data.window``, plus 2 with ``data.window_features``."""
    return cfg.window + (SUMMARY_ROWS if cfg.window_features else 0)


def window_summary(x: np.ndarray) -> np.ndarray:
    """Windows (N, W, F) with each sensor's mean and least-squares slope appended as 2 rows.

    Row W is the mean over the window's W rows; row W + 1 the slope of the ordinary
    least-squares line through (t, x_t), t = 0..W-1, in scaled units per cycle:
    ``sum_t (t - t_mean)(x_t - x_mean) / sum_t (t - t_mean)^2``. Front-padded rows count
    as rows (the same window gives the same summary at training and prediction time).
    """
    values = np.asarray(x, dtype=np.float64)
    t = np.arange(values.shape[1], dtype=np.float64)
    t -= t.mean()
    mean = values.mean(axis=1)
    slope = np.einsum("t,ntf->nf", t, values - mean[:, None]) / (t @ t)
    return np.concatenate([x, np.stack([mean, slope], axis=1).astype(x.dtype)], axis=1)


def make_windows(
    features: np.ndarray,
    frame: pd.DataFrame,
    window: int,
    last_only: bool = False,
    summary: bool = False,
) -> Split:
    """Cut stride-1 windows from each unit; labels come from each window's last row.

    ``features`` are the rows of ``frame`` (ordered by unit, then cycle), already
    scaled. Units shorter than ``window`` are front-padded by repeating their first
    row. ``last_only`` keeps only the last window of each unit. ``summary``
    (``data.window_features``) appends :func:`window_summary`'s two rows to every
    window. A frame without ``rul``/``health`` columns (unlabelled data) gives NaN RUL
    and health -1. Training, evaluation and ``grace predict`` all cut windows here.
    """
    if window < 1:
        raise GraceError(f"window must be >= 1 (got {window})")
    features = np.asarray(features, dtype=np.float32)
    if len(features) != len(frame):
        raise ValueError(f"features have {len(features)} rows, frame has {len(frame)}")
    units = frame["unit"].to_numpy(dtype=np.int64)
    if len(units) == 0:
        raise GraceError("no rows to cut windows from")
    starts = np.flatnonzero(np.r_[True, units[1:] != units[:-1]])
    if len(starts) != len(np.unique(units)):
        raise ValueError("frame rows must be grouped by unit (ordered by unit, then cycle)")
    lengths = np.diff(np.r_[starts, len(units)])
    pad = np.maximum(window - lengths, 0)
    padded = lengths + pad
    # Row index of every position of every padded unit: the first `pad` positions
    # repeat the unit's first row.
    offsets = np.r_[0, np.cumsum(padded)[:-1]]
    pos = np.arange(padded.sum()) - np.repeat(offsets, padded)
    rows = np.repeat(starts, padded) + np.maximum(pos - np.repeat(pad, padded), 0)
    if last_only:
        first = offsets + padded - window
    else:
        n_win = padded - window + 1
        first = np.repeat(offsets, n_win) + (
            np.arange(n_win.sum()) - np.repeat(np.r_[0, np.cumsum(n_win)[:-1]], n_win)
        )
    index = np.lib.stride_tricks.sliding_window_view(rows, window)[first]  # (N, window)
    last = index[:, -1]
    x = features[index]
    if summary:
        x = window_summary(x)
    if "rul" in frame:
        rul = frame["rul"].to_numpy(dtype=np.float32)[last]
        health = frame["health"].to_numpy(dtype=np.int64)[last]
    else:
        rul = np.full(len(last), np.nan, dtype=np.float32)
        health = np.full(len(last), -1, dtype=np.int64)
    return Split(
        x=torch.from_numpy(np.ascontiguousarray(x)),
        rul=torch.from_numpy(rul),
        health=torch.from_numpy(health),
        unit=torch.from_numpy(units[last]),
        cycle=torch.from_numpy(frame["cycle"].to_numpy(dtype=np.int64)[last]),
    )


@dataclass
class CMAPSSData:
    """A subset ready to train on: windowed train/val/test splits and the fitted scaling."""

    dataset: str
    train: Split
    val: Split  # every window of the validation units
    val_last: Split  # last windows of validation units cut at seeded random points
    test: Split | None  # the last window of each test unit, in unit order (None: not built)
    normalizer: Normalizer
    feature_names: tuple[str, ...]
    train_units: list[int]
    val_units: list[int]
    test_split: str = "test units, last window"  # how the test split was made (metrics.json)


def split_units(units: np.ndarray, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded hold-out of ``round(val_fraction * n)`` whole units: (train units, val units)."""
    units = np.unique(units)
    if len(units) < 2:
        raise GraceError(f"need at least 2 training units to hold some out (got {len(units)})")
    n_val = min(max(int(round(val_fraction * len(units))), 1), len(units) - 1)
    chosen = np.random.default_rng(seed).choice(units, size=n_val, replace=False)
    val = sorted(int(u) for u in chosen)
    train = sorted(int(u) for u in np.setdiff1d(units, chosen))
    return train, val


def fold_units(lengths: pd.Series, k: int, seed: int) -> list[list[int]]:
    """Deal whole units into ``k`` seeded folds, stratified by life length.

    ``lengths`` maps unit -> number of cycles. Units are sorted by length and taken in
    blocks of ``k``; each block's units go to the ``k`` folds in an order drawn by
    ``numpy.random.default_rng(seed)``, so every fold gets short, medium and long lives
    and fold sizes differ by at most one. Returns ``k`` sorted unit lists, disjoint and
    covering every unit once.
    """
    if k < 2:
        raise GraceError(f"folds must be >= 2 (got {k})")
    order = lengths.sort_values(kind="stable").index.to_numpy()
    if k > len(order):
        raise GraceError(
            f"data.folds={k} is more than the {len(order)} training units: each fold needs one"
        )
    rng = np.random.default_rng(seed)
    folds: list[list[int]] = [[] for _ in range(k)]
    for start in range(0, len(order), k):
        block = order[start : start + k]
        # the short last block goes to the currently smallest folds, in random order
        targets = sorted(range(k), key=lambda f: (len(folds[f]), rng.random()))[: len(block)]
        for unit, f in zip(block, rng.permutation(targets)):
            folds[int(f)].append(int(unit))
    return [sorted(f) for f in folds]


def holdout_units(frame: pd.DataFrame, cfg: DataConfig, seed: int) -> tuple[list[int], list[int]]:
    """(train units, validation units) of a labelled training frame under ``cfg``.

    One seeded hold-out (:func:`split_units`), or fold ``cfg.fold`` of :func:`fold_units`.
    """
    if cfg.folds >= 2:
        folds = fold_units(frame.groupby("unit").size(), cfg.folds, seed)
        if cfg.fold < 1:
            raise GraceError("data.fold must name the held-out fold (1..data.folds)")
        val = folds[cfg.fold - 1]
        train = sorted(u for f in folds for u in f if u not in set(val))
        return train, val
    return split_units(frame["unit"].to_numpy(), cfg.val_fraction, seed)


def check_window(train: pd.DataFrame, window: int, source: str) -> None:
    """Refuse a window longer than a training unit: one rule for every fleet.

    A unit shorter than the window would train only on front-padded windows.
    """
    lengths = train.groupby("unit").size()
    if window > int(lengths.max()):
        raise GraceError(
            f"data.window={window} is longer than every training unit of {source} "
            f"(longest: {int(lengths.max())} cycles): each of its {len(lengths)} units has "
            f"fewer than data.window={window} rows"
        )
    short = lengths[lengths < window]
    if len(short):
        labels = train.attrs.get("unit_labels")
        unit = labels[int(short.index[0]) - 1] if labels is not None else short.index[0]
        raise GraceError(
            f"{source}: unit {unit} has {short.iloc[0]} rows, fewer than data.window={window} "
            f"({len(short)} such unit(s)); lower data.window or drop the unit"
        )


def build_data(raw: RawSubset, cfg: DataConfig, seed: int, with_test: bool = True) -> CMAPSSData:
    """Windows, labels, split and scaling of any fleet read into a :class:`RawSubset`.

    ``with_test=False`` builds no test split (``test`` is ``None``): what a tuning trial
    sees, so no choice it makes can depend on the test set.
    """
    check_window(raw.train, cfg.window, raw.dataset)
    train_all = label_frame(raw, raw.train, cfg)
    train_units, val_units = holdout_units(train_all, cfg, seed)
    in_val = train_all["unit"].isin(val_units).to_numpy()
    train, val = train_all[~in_val], train_all[in_val]
    normalizer = fit_normalizer(raw, train, cfg)
    val_split = make_windows(
        normalizer.transform(val), val, cfg.window, summary=cfg.window_features
    )
    return CMAPSSData(
        dataset=raw.dataset,
        train=make_windows(
            normalizer.transform(train), train, cfg.window, summary=cfg.window_features
        ),
        val=val_split,
        val_last=truncated_windows(val_split, cfg.val_cuts, seed),
        test=test_windows(raw, normalizer, cfg) if with_test else None,
        normalizer=normalizer,
        feature_names=tuple(raw.sensors),
        train_units=train_units,
        val_units=val_units,
        test_split=raw.test_split,
    )


def label_frame(
    raw: RawSubset, frame: pd.DataFrame, cfg: DataConfig, final_rul: np.ndarray | None = None
) -> pd.DataFrame:
    """Capped RUL and health of every row of one of ``raw``'s frames.

    Computed from the cycles (:func:`add_labels`), or taken from ``raw.label_column``
    (capped at ``max_rul``) where the fleet records the true RUL of every row.
    """
    if raw.label_column is None:
        return add_labels(frame, cfg.max_rul, cfg.critical_rul, cfg.degrading_rul, final_rul)
    rul = np.minimum(frame[raw.label_column].to_numpy(dtype=np.float64), float(cfg.max_rul))
    return frame.assign(rul=rul, health=health_class(rul, cfg.critical_rul, cfg.degrading_rul))


def test_windows(raw: RawSubset, normalizer: Normalizer, cfg: DataConfig) -> Split:
    """The test windows of ``raw``, labelled and scaled with ``normalizer``.

    The last window of every test unit; test units that run to failure
    (``raw.test_cuts``) are cut like validation units instead: ``data.val_cuts``
    windows per unit, drawn with the fixed seed :data:`TEST_SEED`.
    """
    if raw.test_cuts:
        test = label_frame(raw, raw.test, cfg)
        split = make_windows(
            normalizer.transform(test), test, cfg.window, summary=cfg.window_features
        )
        return truncated_windows(split, cfg.val_cuts, TEST_SEED)
    test = label_frame(raw, raw.test, cfg, raw.test_rul)
    return make_windows(
        normalizer.transform(test), test, cfg.window, last_only=True, summary=cfg.window_features
    )


def truncated_windows(split: Split, cuts: int, seed: int) -> Split:
    """Validation built like the test set: each unit cut at ``cuts`` seeded random points.

    A C-MAPSS test unit stops at an unknown cycle before failure and is scored on its
    last window only. Cutting a validation unit after cycle ``c`` and taking its last
    window is the same as taking the unit's window that ends at ``c``, so this picks
    ``cuts`` distinct windows per unit of ``split`` (all of them when the unit has
    fewer), uniformly among its windows, with ``numpy.random.default_rng(seed)``.
    Rows stay in unit, then cycle order.
    """
    if cuts < 1:
        raise GraceError(f"cuts must be >= 1 (got {cuts})")
    units = split.unit.numpy()
    starts = np.flatnonzero(np.r_[True, units[1:] != units[:-1]])
    ends = np.r_[starts[1:], len(units)]
    rng = np.random.default_rng(seed)
    chosen = [
        np.sort(rng.choice(np.arange(a, b), size=min(cuts, b - a), replace=False))
        for a, b in zip(starts, ends)
    ]
    index = torch.from_numpy(np.concatenate(chosen))
    return Split(
        x=split.x[index],
        rul=split.rul[index],
        health=split.health[index],
        unit=split.unit[index],
        cycle=split.cycle[index],
    )


def unit_windows(
    raw: RawSubset, normalizer: Normalizer, cfg: DataConfig, unit: int, split: str = "test"
) -> Split:
    """Every window along one unit's life (for a full RUL trajectory), labelled as in training."""
    if split not in ("train", "test"):
        raise GraceError(f"split must be train or test (got '{split}')")
    frame = raw.test if split == "test" else raw.train
    rows = frame[frame["unit"] == unit]
    if rows.empty:
        known = frame["unit"].unique()
        raise GraceError(
            f"{raw.dataset} {split} has no unit {unit} (units {known.min()}..{known.max()})"
        )
    final = None
    if split == "test":
        final = raw.test_rul[np.searchsorted(np.unique(frame["unit"].to_numpy()), unit)]
        final = np.array([final])
    labelled = label_frame(raw, rows, cfg, final)
    return make_windows(
        normalizer.transform(labelled), labelled, cfg.window, summary=cfg.window_features
    )
