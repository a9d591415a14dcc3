"""A model ready for new engines: member networks, the data contract and the calibration.

One :class:`GraceModel` serves a single run and a seed ensemble alike. Each member keeps
the normaliser fitted on its own training units (seeds hold out different units), so
every member scales the input itself, cuts the last window of every unit with
:func:`~grace_rul.data.cmapss.make_windows` (``last_only=True``, front padding of short
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

from grace_rul.data.cmapss import Normalizer, Split, make_windows
from grace_rul.errors import GraceError
from grace_rul.inference.conformal import Calibration
from grace_rul.inference.contract import DataContract
from grace_rul.model import DualTaskNet, predict

BACKENDS: tuple[str, ...] = ("torch", "onnx")


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
        """Each member's last window of every unit of a checked frame (ordered by unit)."""
        return [
            make_windows(
                m.normalizer.transform(frame),
                frame,
                self.contract.window,
                last_only=True,
                summary=self.contract.window_features,
            )  # fmt: skip
            for m in self.members
        ]

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
