"""GRACE: GABA weights plus the adaptive weight-decay schedule (docs/design.md §4-5).

GRACE = GABA (inverse-gradient-norm weights, EMA beta = 0.99, 100 warmup steps,
floor 0.05) + the failure-weighted MSE (the trainer's RUL loss for every method)
+ weight decay multiplied by 0.5 from epoch 100 and by 0.1 from epoch 200.
The schedule is a training setting (``train.weight_decay_schedule``); the class
declares it in :attr:`Grace.train_defaults`, which configuration resolution applies
unless the configuration gives a schedule, so ``grace`` is the write-up's combination.
"""

from __future__ import annotations

from typing import Any, ClassVar

from grace_rul.balancers.gaba import GABA
from grace_rul.balancers.registry import register


@register("grace")
class Grace(GABA):
    """GABA under its own name, with GRACE's weight-decay schedule as a training default."""

    # [epoch, factor of the base weight decay] from that 0-based epoch on.
    train_defaults: ClassVar[dict[str, Any]] = {"weight_decay_schedule": [[100, 0.5], [200, 0.1]]}
