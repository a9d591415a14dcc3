"""Training stabilisers usable on any ``torch.nn.Module`` training loop (docs/design.md §5)."""

from grace_rul.stabilisers.clipping import GradClipper
from grace_rul.stabilisers.ema import ModelEma
from grace_rul.stabilisers.guards import NonFiniteGuard, SpikeDetector, TrainingDiverged
from grace_rul.stabilisers.precision import Precision
from grace_rul.stabilisers.seeding import (
    RngStreams,
    rng_state,
    seed_everything,
    set_rng_state,
    stream_seed,
)

__all__ = [
    "GradClipper",
    "ModelEma",
    "NonFiniteGuard",
    "Precision",
    "RngStreams",
    "SpikeDetector",
    "TrainingDiverged",
    "rng_state",
    "seed_everything",
    "set_rng_state",
    "stream_seed",
]
