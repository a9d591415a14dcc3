"""The data contract a model was trained under, and where its operating regimes lie.

A model only makes sense on data prepared exactly as its training data was: the same
sensors, window length (and window summary rows), RUL cap and health thresholds, and the
same scaling. The
:class:`DataContract` holds those settings; members of an ensemble must share one.

Operating regimes: every row's three operational settings are rounded to
:data:`~grace_rul.data.scaling.REGIME_DECIMALS` (0, 2, 0) decimals. In ``regime`` mode
a row whose rounded settings equal a fitted regime is scaled with that regime's
statistics and any other row with the nearest fitted centroid's
(:meth:`~grace_rul.data.Normalizer.assign`). An operating point is *unseen* when its
Euclidean distance to the nearest centroid of the regimes seen in the training units,
measured in rounding steps (1 for setting1, 0.01 for setting2, 1 for setting3), is more
than :data:`UNSEEN_REGIME_STEPS`. The centroids are those of the training units' regime
keys, whatever the scaling mode, so a ``global``-scaled FD001 model (one regime near
(0, 0, 100)) flags an FD002 operating point 20 steps away. Models of other fleets
(dataset YAMLs, N-CMAPSS) name their own unit, time and setting columns, which
``grace predict`` input must use; their ``unseen_regime`` flag is not computed (no
rounding steps to measure in), so it is never set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from grace_rul.config import dataset_name
from grace_rul.data.cmapss import SETTINGS
from grace_rul.data.scaling import REGIME_DECIMALS
from grace_rul.data.windows import SUMMARY_ROWS
from grace_rul.errors import GraceError

HEALTH_CLASSES: tuple[str, ...] = ("healthy", "degrading", "critical")  # health_class 0, 1, 2
UNSEEN_REGIME_STEPS = 1.0
REGIME_RULE = (
    "settings rounded to (0, 2, 0) decimals; a row whose rounded settings equal a fitted "
    "regime uses its statistics, any other row the nearest fitted centroid's (Euclidean "
    "distance in rounding steps: 1, 0.01, 1); 'global' mode uses one set of statistics"
)
UNSEEN_RULE = (
    "an engine is flagged unseen_regime when a row of its last window lies more than "
    "threshold_steps rounding steps (Euclidean; 1, 0.01, 1) from every centroid of the "
    "regimes seen in the training units"
)
_FIELDS = {  # attribute -> how a mismatch is named
    "dataset": "subset",
    "sensors": "sensors",
    "window": "window",
    "max_rul": "max_rul",
    "critical_rul": "critical_rul threshold",
    "degrading_rul": "degrading_rul threshold",
    "normalization": "normalisation",
    "window_features": "window features",
}


@dataclass(frozen=True)
class DataContract:
    """What a model expects of its input: sensors, window, RUL cap, thresholds, scaling mode."""

    dataset: str
    sensors: tuple[str, ...]
    window: int
    max_rul: int
    critical_rul: int
    degrading_rul: int
    normalization: str  # resolved: "global" or "regime"
    settings: tuple[str, ...] = SETTINGS
    unit_column: str = "unit"
    time_column: str = "cycle"
    window_features: bool = False  # data.window_features: 2 summary rows after the window

    @property
    def rows(self) -> int:
        """Rows of one network input (:func:`grace_rul.data.windows.window_rows`)."""
        return self.window + (SUMMARY_ROWS if self.window_features else 0)

    @classmethod
    def from_run(
        cls,
        data_cfg: Any,
        sensors: list[str],
        normalization: str,
        columns: tuple[str, str, tuple[str, ...]] = ("unit", "cycle", SETTINGS),
    ) -> DataContract:
        """The contract of a run from its :class:`~grace_rul.config.DataConfig`.

        ``columns`` are the input's unit, time and setting column names.
        """
        unit, time, settings = columns
        return cls(
            unit_column=unit,
            time_column=time,
            settings=tuple(settings),
            dataset=dataset_name(data_cfg.dataset),
            sensors=tuple(sensors),
            window=int(data_cfg.window),
            max_rul=int(data_cfg.max_rul),
            critical_rul=int(data_cfg.critical_rul),
            degrading_rul=int(data_cfg.degrading_rul),
            normalization=normalization,
            window_features=bool(getattr(data_cfg, "window_features", False)),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "sensors": list(self.sensors),
            "unit_column": self.unit_column,
            "time_column": self.time_column,
            "settings": list(self.settings),
            "window": self.window,
            "window_features": self.window_features,
            "max_rul": self.max_rul,
            "critical_rul": self.critical_rul,
            "degrading_rul": self.degrading_rul,
            "health_classes": list(HEALTH_CLASSES),
            "normalization": self.normalization,
            "regime_decimals": list(REGIME_DECIMALS),
            "regime_assignment": REGIME_RULE,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataContract:
        if list(d.get("regime_decimals", REGIME_DECIMALS)) != list(REGIME_DECIMALS):
            raise GraceError("the model's regimes were assigned with other rounding")
        return cls(
            dataset=str(d["dataset"]),
            sensors=tuple(str(s) for s in d["sensors"]),
            window=int(d["window"]),
            max_rul=int(d["max_rul"]),
            critical_rul=int(d["critical_rul"]),
            degrading_rul=int(d["degrading_rul"]),
            normalization=str(d["normalization"]),
            settings=tuple(str(s) for s in d.get("settings", SETTINGS)),
            unit_column=str(d.get("unit_column", "unit")),
            time_column=str(d.get("time_column", "cycle")),
            window_features=bool(d.get("window_features", False)),
        )

    def input_columns(self) -> dict[str, Any]:
        """Keyword arguments of :func:`grace_rul.inference.inputs.clean_frame` for this model."""
        return {
            "sensors": self.sensors,
            "settings": self.settings,
            "unit": self.unit_column,
            "time": self.time_column,
        }

    def mismatch(self, other: DataContract) -> str | None:
        """``None`` when equal, else the first differing setting as ``"name a vs b"``."""
        for attr, label in _FIELDS.items():
            a, b = getattr(self, attr), getattr(other, attr)
            if a != b:
                if isinstance(a, tuple):
                    a, b = ",".join(a), ",".join(b)
                return f"{label} {a} vs {b}"
        return None


def regime_steps() -> np.ndarray:
    """The rounding step of each setting: 10 ** -decimals."""
    return 10.0 ** -np.asarray(REGIME_DECIMALS, dtype=np.float64)


def regime_distance(frame: pd.DataFrame, centroids: np.ndarray) -> np.ndarray:
    """Distance of every row's settings to the nearest centroid, in rounding steps.

    Zero for every row when there are no centroids (models of other fleets).
    """
    if np.asarray(centroids).size == 0:
        return np.zeros(len(frame))
    settings = frame[list(SETTINGS)].to_numpy(dtype=np.float64)
    diff = (settings[:, None, :] - np.asarray(centroids)[None]) / regime_steps()
    return np.sqrt((diff**2).sum(axis=2)).min(axis=1)
