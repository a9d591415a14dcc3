"""GRACE: remaining-useful-life prediction with a two-task network and gradient-aware balancing."""

__version__ = "0.1.0"
