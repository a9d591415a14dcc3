"""A model ready for new engines: member networks, the data contract and the calibration.

One :class:`GraceModel` serves a single run and a seed ensemble alike. Each member keeps
the normaliser fitted on its own training units (seeds hold out different units), so
every member scales the input itself, cuts the last window of every unit with
:func:`~grace_rul.data.windows.make_windows` (``last_only=True``, front padding of short
units, the two summary rows of ``data.window_features`` as in training) and runs its
network. The model's RUL is the mean of the members' RUL; its health
probabilities are the mean of the members' softmax probabilities and its health class
their argmax.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from grace_rul.data.scaling import Normalizer
from grace_rul.data.windows import Split, make_windows
from grace_rul.errors import GraceError
from grace_rul.inference.conformal import Calibration
from grace_rul.inference.contract import DataContract
from grace_rul.model import DualTaskNet, predict

BACKENDS: tuple[str, ...] = ("torch", "onnx")
# Scaled inputs beyond this many training standard deviations are input errors, not engines.
MAX_SCALED = 1e6


@dataclass
class Member:
    """One trained network of a model and the normaliser fitted on its own training units."""

    net: DualTaskNet
    normalizer: Normalizer
    config: dict[str, Any]  # the run's resolved config (Config.to_dict())
    info: dict[str, Any] = field(default_factory=dict)  # provenance: run, seed, preset, test...


@dataclass
class Outputs:
    """Every member's outputs on the last window of every unit (units ascending)."""

    unit: np.ndarray  # (N,) int64
    member_rul: np.ndarray  # (M, N) float32, cycles
    member_logits: np.ndarray  # (M, N, 3) float32
    true_rul: np.ndarray  # (N,) capped RUL labels of labelled frames, else NaN
    true_health: np.ndarray  # (N,) health labels of labelled frames, else -1

    @property
    def rul(self) -> np.ndarray:
        """Mean RUL of the members, float64."""
        return self.member_rul.astype(np.float64).mean(axis=0)

    @property
    def probs(self) -> np.ndarray:
        """Mean of the members' softmax probabilities (N, 3), float64."""
        return softmax(self.member_logits).mean(axis=0)

    @property
    def health(self) -> np.ndarray:
        """Health class (argmax of the mean probabilities)."""
        return self.probs.argmax(axis=1)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis in float64."""
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


class GraceModel:
    """A trained RUL + health predictor: member networks, data contract, calibration.

    Build one with :func:`grace_rul.load_model` and use it with :func:`grace_rul.predict`.
    ``centroids`` are the regime centroids of the members' training units (for the
    ``unseen_regime`` flag), ``metrics`` the stored test metrics, ``provenance`` where the
    model came from, ``onnx_file`` the exported ONNX graph (for ``backend="onnx"``).
    """

    def __init__(
        self,
        members: list[Member],
        contract: DataContract,
        calibration: Calibration,
        centroids: np.ndarray,
        *,
        metrics: dict[str, Any] | None = None,
        provenance: dict[str, Any] | None = None,
        source: str = "",
        onnx_file: Path | None = None,
    ) -> None:
        if not members:
            raise GraceError("a model needs at least one member network")
        for i, m in enumerate(members):
            bad = [k for k, v in m.net.state_dict().items() if not torch.isfinite(v).all()]
            if bad:
                raise GraceError(f"member {i}'s weights are not finite ({bad[0]}; corrupt model?)")
        self.members = members
        self.contract = contract
        self.calibration = calibration
        centroids = np.asarray(centroids, dtype=np.float64)
        self.centroids = centroids.reshape(-1, 3) if centroids.size else np.zeros((0, 3))
        self.metrics = metrics
        self.provenance = dict(provenance or {})
        self.source = source
        self.onnx_file = onnx_file
        self._session: Any = None

    def __repr__(self) -> str:
        c = self.contract
        return (
            f"GraceModel({c.dataset}, members={len(self.members)}, window={c.window}, "
            f"normalization={c.normalization!r}, source={self.source!r})"
        )

    def windows(self, frame: pd.DataFrame) -> list[Split]:
        """Each member's last window of every unit of a checked frame (ordered by unit).

        A value more than :data:`MAX_SCALED` standard deviations from a member's training
        data is refused in one line naming unit, cycle and sensor: it is an input error
        (a unit slip, a corrupt cell), and the network's output on it is meaningless.
        """
        splits = []
        for m in self.members:
            scaled = m.normalizer.transform(frame)
            _check_scaled(scaled, frame, m.normalizer.sensors)
            splits.append(
                make_windows(
                    scaled,
                    frame,
                    self.contract.window,
                    last_only=True,
                    summary=self.contract.window_features,
                )
            )
        return splits

    def outputs(self, frame: pd.DataFrame, backend: str = "torch") -> Outputs:
        """Run every member on the last window of every unit of ``frame``."""
        splits = self.windows(frame)
        if backend == "torch":
            pairs = [predict(m.net, s.x) for m, s in zip(self.members, splits)]
            rul = np.stack([r.numpy() for r, _ in pairs])
            logits = np.stack([g.numpy() for _, g in pairs])
        elif backend == "onnx":
            rul, logits = self._run_onnx(splits)
        else:
            raise GraceError(f"backend must be one of {', '.join(BACKENDS)} (got '{backend}')")
        first = splits[0]
        for values in (rul, logits):
            bad = ~np.isfinite(values.reshape(len(values), len(first.unit), -1)).all(axis=(0, 2))
            if bad.any():
                raise GraceError(
                    f"the model's output is not finite for unit "
                    f"{_unit_name(frame, int(first.unit[np.flatnonzero(bad)[0]]))}; "
                    "refusing to report it (check that unit's input values)"
                )
        return Outputs(
            unit=first.unit.numpy(),
            member_rul=rul,
            member_logits=logits,
            true_rul=first.rul.numpy().astype(np.float64),
            true_health=first.health.numpy(),
        )

    def _run_onnx(self, splits: list[Split]) -> tuple[np.ndarray, np.ndarray]:
        from grace_rul.inference.onnx_export import onnx_session

        if self._session is None:
            if self.onnx_file is None or not Path(self.onnx_file).is_file():
                raise GraceError(
                    f"{self.source or 'this model'} has no model.onnx: export it with "
                    "grace export RUN_DIR --out MODEL_DIR --onnx"
                )
            self._session = onnx_session(Path(self.onnx_file))
        x = np.stack([s.x.numpy() for s in splits])
        if len(self.members) == 1:
            rul, logits = self._session.run(None, {"windows": x[0]})
            return rul[None], logits[None]
        rul, logits = self._session.run(None, {"windows": x})
        return np.asarray(rul), np.asarray(logits)

    @torch.no_grad()
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Every member's weights under the prefix ``member{i}.`` (contiguous CPU copies)."""
        out = {}
        for i, m in enumerate(self.members):
            for key, value in m.net.state_dict().items():
                out[f"member{i}.{key}"] = value.detach().cpu().contiguous().clone()
        return out


def _unit_name(frame: pd.DataFrame, unit: int) -> Any:
    """A unit of a checked frame as the input named it (its text id, or its number)."""
    labels = frame.attrs.get("unit_labels")
    return labels[unit] if labels is not None else unit


def _check_scaled(scaled: np.ndarray, frame: pd.DataFrame, sensors: tuple[str, ...]) -> None:
    bad = ~(np.abs(scaled) <= MAX_SCALED)  # also catches NaN
    if bad.any():
        row, col = (int(i[0]) for i in np.nonzero(bad))
        value = frame[sensors[col]].iloc[row]
        raise GraceError(
            f"unit {_unit_name(frame, int(frame['unit'].iloc[row]))}, cycle "
            f"{int(frame['cycle'].iloc[row])}: sensor {sensors[col]} = {value:.6g} is more than "
            f"{MAX_SCALED:.0e} standard deviations from the model's training data; "
            "refusing to predict"
        )
