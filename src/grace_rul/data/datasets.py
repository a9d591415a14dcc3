"""One entry point for every dataset: a C-MAPSS name, a dataset YAML or an N-CMAPSS file.

``data.dataset`` is ``FD001``..``FD004`` (:mod:`grace_rul.data.cmapss`), a path to a
dataset YAML (``.yaml``/``.yml``, :mod:`grace_rul.data.tables`) or a path to an N-CMAPSS
HDF5 file (``.h5``/``.hdf5``, :mod:`grace_rul.data.ncmapss`). :func:`read_dataset`
reads any of them into a :class:`~grace_rul.data.cmapss.RawSubset`;
:func:`load_dataset` builds its windows with the one contract of
:func:`~grace_rul.data.windows.build_data`. The trainer, evaluation and inference call
these two and nothing else.
"""

from __future__ import annotations

from pathlib import Path

from grace_rul.config import DATASETS, HDF5_SUFFIXES, DataConfig, dataset_name
from grace_rul.data.cmapss import RawSubset, read_cmapss
from grace_rul.data.ncmapss import read_ncmapss
from grace_rul.data.tables import dataset_defaults as table_defaults
from grace_rul.data.tables import read_tables
from grace_rul.data.windows import CMAPSSData, build_data


def dataset_kind(name: str) -> str:
    """``cmapss``, ``tables`` or ``ncmapss`` for a ``data.dataset`` value."""
    if dataset_name(name) in DATASETS:
        return "cmapss"
    return "ncmapss" if Path(str(name)).suffix.lower() in HDF5_SUFFIXES else "tables"


def read_dataset(cfg: DataConfig, data_dir: str | Path | None = None) -> RawSubset:
    """Read ``cfg.dataset`` (after :meth:`DataConfig.validate`) into a :class:`RawSubset`.

    ``data_dir`` is where the C-MAPSS files are (``None``: the bundled copy); dataset
    files name their own tables.
    """
    cfg.validate()
    kind = dataset_kind(cfg.dataset)
    if kind == "cmapss":
        return read_cmapss(cfg.dataset, data_dir)
    if kind == "ncmapss":
        return read_ncmapss(cfg)
    return read_tables(cfg)


def load_dataset(
    cfg: DataConfig, seed: int, data_dir: str | Path | None = None, with_test: bool = True
) -> CMAPSSData:
    """Windows, labels, split and scaling of any dataset (docs/design.md §1).

    ``with_test=False``: no test split is built (tuning trials).
    """
    return build_data(read_dataset(cfg, data_dir), cfg, seed, with_test)


def dataset_defaults(name: str) -> dict[str, int]:
    """Settings a dataset file sets for ``data.*`` (``window``, ``max_rul``); {} for others."""
    if dataset_kind(name) != "tables" or not Path(str(name)).expanduser().is_file():
        return {}
    return table_defaults(name)
