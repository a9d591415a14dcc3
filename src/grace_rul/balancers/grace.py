"""GRACE: GABA weights plus the adaptive weight-decay schedule (docs/design.md §4-5).

GRACE = GABA (inverse-gradient-norm weights, EMA beta = 0.99, 100 warmup steps,
floor 0.05) + the failure-weighted MSE (the trainer's RUL loss for every method)
+ weight decay multiplied by 0.5 from epoch 100 and by 0.1 from epoch 200.
The schedule is a training setting (``train.weight_decay_schedule``); choosing
``--balancer grace`` sets it to :data:`GRACE_WEIGHT_DECAY_SCHEDULE` unless the
configuration gives one, so ``grace`` is the write-up's combination.
"""

from __future__ import annotations

from grace_rul.balancers.gaba import GABA
from grace_rul.balancers.registry import register

# (epoch, factor of the base weight decay) from that 0-based epoch on.
GRACE_WEIGHT_DECAY_SCHEDULE: tuple[tuple[int, float], ...] = ((100, 0.5), (200, 0.1))


@register("grace")
class Grace(GABA):
    """GABA under its own name: the configuration adds GRACE's weight-decay schedule."""
