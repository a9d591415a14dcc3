"""N-CMAPSS (Arias Chao et al., 2021): run-to-failure turbofan flights at 1 Hz, from HDF5.

Where the files come from: NASA Prognostics Data Repository, "Turbofan Engine
Degradation Simulation Data Set-2" (files ``N-CMAPSS_DS01-005.h5`` ..
``N-CMAPSS_DS08d-010.h5``, 2-3 GB each). ``--dataset path/N-CMAPSS_DS02-006.h5``
trains on one; ``h5py`` comes with ``pip install grace-rul[ncmapss]``.

Layout read (the files' own names): ``W_dev`` (flight conditions alt, Mach, TRA, T2),
``X_s_dev`` (14 measured sensors), ``X_v_dev`` (virtual sensors, unused), ``T_dev``
(health parameters, unused), ``Y_dev`` (RUL in flight cycles, one per row), ``A_dev``
(auxiliary: unit, cycle, Fc flight class, hs health state), the same six with
``_test``, and the column names in ``W_var``, ``X_s_var``, ``X_v_var``, ``T_var``,
``A_var`` (byte strings). The ``_dev`` units train (validation units are held out of
them as for C-MAPSS); the ``_test`` units are the test split. For DS02 that is the split
of the literature: development units 2 5 10 16 18 20, test units 11 14 15.

How GRACE reads it:

Lazily
    Only the unit column of ``A`` is read whole (8 bytes a row); every other array is
    read by row ranges, one unit at a time, already downsampled (h5py strided reads),
    so a 2-3 GB file never has all its arrays in memory at once.
Downsampling
    Every ``data.downsample``-th row (default 10: one row per 10 s) within each unit,
    from the unit's first row.
Features and labels
    The inputs are the flight conditions ``W`` and the sensors ``X_s`` (18 columns),
    standardised globally (flight conditions are continuous: no regimes). The label of
    a row is ``Y`` capped at ``data.max_rul``; health classes as for C-MAPSS.
Windows
    Within each unit, over its downsampled rows in file order (``cycle`` in the windows
    is the row's index within the unit). A window may span the end of one flight and
    the start of the next; the literature cuts windows inside one flight, which differs
    only for the ``window - 1`` windows at each flight boundary.
Test split
    Test units run to failure, so they are scored like validation units: ``data.val_cuts``
    seeded cuts per unit, the last window of each.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from grace_rul.config import DataConfig
from grace_rul.data.cmapss import RawSubset
from grace_rul.errors import GraceError

PARTS: tuple[str, ...] = ("W", "X_s", "X_v", "T", "Y", "A")
NAMES: tuple[str, ...] = ("W_var", "X_s_var", "X_v_var", "T_var", "A_var")
AUX: tuple[str, ...] = ("unit", "cycle", "Fc", "hs")
DS02_UNITS = {"dev": (2, 5, 10, 16, 18, 20), "test": (11, 14, 15)}
LABEL = "rul_true"


def _h5py():
    try:
        import h5py
    except ImportError:
        raise GraceError("N-CMAPSS files need h5py: pip install 'grace-rul[ncmapss]'") from None
    return h5py


def read_ncmapss(cfg: DataConfig) -> RawSubset:
    """Read an N-CMAPSS HDF5 file into a :class:`RawSubset` (see the module docstring)."""
    h5py = _h5py()
    path = Path(cfg.dataset).expanduser()
    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise GraceError(f"{path}: not a readable HDF5 file ({exc})") from None
    with handle as f:
        missing = [
            n for n in (*(f"{p}_{s}" for s in ("dev", "test") for p in PARTS), *NAMES) if n not in f
        ]
        if missing:
            raise GraceError(
                f"{path}: not an N-CMAPSS file (missing {', '.join(missing[:6])}"
                f"{' ...' if len(missing) > 6 else ''})"
            )
        names = {n: _names(f[n], path, n) for n in NAMES}
        if names["A_var"][:2] != ["unit", "cycle"]:
            raise GraceError(f"{path}: A_var starts {names['A_var'][:2]}, expected unit, cycle")
        sensors = tuple(names["W_var"] + names["X_s_var"])
        if len(set(sensors)) != len(sensors):
            raise GraceError(f"{path}: W_var and X_s_var share a column name")
        train = _part(f, "dev", names, cfg.downsample, path)
        test = _part(f, "test", names, cfg.downsample, path)
    units = {s: sorted(int(u) for u in frame["unit"].unique()) for s, frame in (
        ("dev", train), ("test", test))}  # fmt: skip
    if len(units["dev"]) < 3:
        raise GraceError(f"{path}: {len(units['dev'])} development unit(s); need at least 3")
    return RawSubset(
        dataset=path.stem,
        train=train,
        test=test,
        test_rul=np.zeros(len(units["test"])),
        sensors=sensors,
        settings=(),
        regimes="none",
        test_split=(
            f"N-CMAPSS test units {' '.join(map(str, units['test']))} (run to failure, "
            f"{cfg.val_cuts} seeded cuts each)"
        ),
        test_cuts=True,
        label_column=LABEL,
        notes={
            "downsample": cfg.downsample,
            "units": units,
            "sensors_dropped": {n: "virtual sensor (not measured)" for n in names["X_v_var"]},
        },
    )


def _names(dataset: Any, path: Path, name: str) -> list[str]:
    values = np.asarray(dataset[()]).reshape(-1)
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def _part(f: Any, split: str, names: dict[str, list[str]], step: int, path: Path) -> pd.DataFrame:
    """One split's downsampled rows: unit, cycle (row index in unit), flight, W, X_s, label."""
    arrays = {p: f[f"{p}_{split}"] for p in ("W", "X_s", "Y", "A")}
    n = arrays["A"].shape[0]
    for p, want in (("W", len(names["W_var"])), ("X_s", len(names["X_s_var"]))):
        ds = arrays[p]
        if ds.ndim != 2 or ds.shape != (n, want):
            raise GraceError(
                f"{path}: {p}_{split} has shape {ds.shape}, expected ({n}, {want}) "
                f"(rows of A_{split}, names in {p}_var)"
            )
    if arrays["Y"].shape[0] != n:
        raise GraceError(f"{path}: Y_{split} has {arrays['Y'].shape[0]} rows, A_{split} {n}")
    if n == 0:
        raise GraceError(f"{path}: A_{split} has no rows")
    unit = np.asarray(arrays["A"][:, 0]).astype(np.int64)  # one column, not the whole array
    starts = np.flatnonzero(np.r_[True, unit[1:] != unit[:-1]])
    ends = np.r_[starts[1:], n]
    if len(starts) != len(np.unique(unit)):
        raise GraceError(f"{path}: rows of one unit in A_{split} are not contiguous")
    pieces = []
    for a, b in zip(starts, ends):
        rows = slice(int(a), int(b), step)
        aux = np.asarray(arrays["A"][rows], dtype=np.float64)
        values = {
            "unit": aux[:, 0].astype(np.int64),
            "cycle": np.arange(1, len(aux) + 1, dtype=np.int64),
            "flight": aux[:, 1].astype(np.int64),
        }
        for p in ("W", "X_s"):
            block = np.asarray(arrays[p][rows], dtype=np.float64)
            values.update({name: block[:, i] for i, name in enumerate(names[f"{p}_var"])})
        values[LABEL] = np.asarray(arrays["Y"][rows], dtype=np.float64).reshape(-1)
        pieces.append(pd.DataFrame(values))
    frame = pd.concat(pieces, ignore_index=True)
    columns = [c for c in frame.columns if c not in ("unit", "cycle", "flight")]
    bad = ~np.isfinite(frame[columns].to_numpy())
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise GraceError(
            f"{path}: NaN/Inf in {split} column {columns[col]} (unit {frame['unit'].iloc[row]})"
        )
    return frame.sort_values(["unit", "cycle"], kind="stable", ignore_index=True)
