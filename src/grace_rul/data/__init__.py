"""The data contract (documented in :mod:`grace_rul.data.cmapss`) and its one entry point.

:func:`load_dataset` reads ``data.dataset`` (a C-MAPSS subset, a dataset YAML or an
N-CMAPSS HDF5 file; :mod:`grace_rul.data.datasets`) and builds its windows.
"""

from grace_rul.config import DATASETS, DataConfig, dataset_name, is_dataset_file
from grace_rul.data.cmapss import (
    COLUMNS,
    SENSORS,
    SETTINGS,
    SHA256,
    RawSubset,
    bundled_dir,
    clear_cache,
    read_cmapss,
)
from grace_rul.data.datasets import dataset_kind, load_dataset, read_dataset
from grace_rul.data.scaling import Normalizer, regime_keys, resolve_normalization
from grace_rul.data.windows import (
    CMAPSSData,
    Split,
    add_labels,
    build_data,
    fold_units,
    health_class,
    label_frame,
    make_windows,
    split_units,
    test_windows,
    truncated_windows,
    unit_windows,
    window_rows,
    window_summary,
)

__all__ = [
    "COLUMNS",
    "DATASETS",
    "SENSORS",
    "SETTINGS",
    "SHA256",
    "CMAPSSData",
    "DataConfig",
    "Normalizer",
    "RawSubset",
    "Split",
    "add_labels",
    "bundled_dir",
    "clear_cache",
    "health_class",
    "make_windows",
    "read_cmapss",
    "regime_keys",
    "resolve_normalization",
    "fold_units",
    "split_units",
    "test_windows",
    "truncated_windows",
    "unit_windows",
    "window_rows",
    "window_summary",
    "build_data",
    "dataset_kind",
    "dataset_name",
    "is_dataset_file",
    "label_frame",
    "load_dataset",
    "read_dataset",
]
