"""GRACE: GABA weights plus the adaptive weight-decay schedule (SPEC §4-5).

GRACE = GABA (inverse-gradient-norm weights, EMA beta = 0.99, 100 warmup steps,
floor 0.05) + the failure-weighted MSE (the trainer's RUL loss for every method)
+ weight decay multiplied by 0.5 after epoch 100 and by 0.1 after epoch 200.
The balancer only declares the schedule; the trainer applies it each epoch.
"""

from __future__ import annotations

from grace_rul.balancers.gaba import GABA
from grace_rul.balancers.registry import register


@register("grace")
class Grace(GABA):
    """GABA with GRACE's weight-decay schedule (x0.5 after epoch 100, x0.1 after epoch 200)."""

    weight_decay_schedule = ((100, 0.5), (200, 0.1))
