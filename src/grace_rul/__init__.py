"""GRACE: remaining-useful-life prediction with a two-task network and gradient-aware balancing."""

__version__ = "0.1.0"

__all__ = ["GraceModel", "__version__", "load_model", "predict"]


def __getattr__(name: str) -> object:
    """``grace_rul.load_model``, ``grace_rul.predict`` and ``grace_rul.GraceModel``, imported
    on first use so that ``import grace_rul`` (and the CLI) does not load torch."""
    if name in ("GraceModel", "load_model", "predict"):
        from grace_rul import inference

        return getattr(inference, name)
    raise AttributeError(f"module 'grace_rul' has no attribute {name!r}")
