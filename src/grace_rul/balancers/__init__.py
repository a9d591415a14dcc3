"""Multi-task loss balancers: one file per method behind one registry.

Import order registers the methods; ``BALANCERS`` maps names to classes.
"""

from grace_rul.balancers import (  # noqa: F401  (registration)
    alignedmtl,
    cagrad,
    dbmtl,
    dwa,
    equal,
    famo,
    fixed,
    gaba,
    grace,
    gradnorm,
    imtl,
    mgda,
    nashmtl,
    pcgrad,
    uncertainty,
)
from grace_rul.balancers.base import Balancer, Combination, TaskGrads
from grace_rul.balancers.engine import StepGrads, balance_backward
from grace_rul.balancers.registry import BALANCERS, build_balancer, check_balancer, register

__all__ = [
    "BALANCERS",
    "Balancer",
    "Combination",
    "StepGrads",
    "TaskGrads",
    "balance_backward",
    "build_balancer",
    "check_balancer",
    "register",
]
