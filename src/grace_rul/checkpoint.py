"""Checkpoints: saving one atomically and loading it without running its code."""

from __future__ import annotations

import os
import pickle
import pickletools
import zipfile
from pathlib import Path
from typing import Any

import torch

from grace_rul.errors import GraceError, first_line
from grace_rul.io import atomic_write


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save(obj, path)``, atomically; returns the path."""
    return atomic_write(path, lambda f: torch.save(obj, f))


# Globals a weights-only checkpoint legitimately references (tensor rebuilds, OrderedDict).
_SAFE_PREFIXES = ("torch.", "collections.")


def pickle_globals(path: str | os.PathLike[str]) -> list[str] | None:
    """The ``module.name`` globals a checkpoint's pickle references, read without running it.

    ``None`` when the bytes are not a complete pickle (a damaged or truncated file). Handles
    torch's zip format (its ``data.pkl``) and a bare pickle stream.
    """
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                name = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
                if name is None:
                    return None
                data = archive.read(name)
        else:
            data = Path(path).read_bytes()
        found, strings = [], []
        for op, arg, _ in pickletools.genops(data):
            if op.name == "GLOBAL":
                found.append(str(arg).replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(f"{strings[-2]}.{strings[-1]}")
            if isinstance(arg, str):
                strings.append(arg)
        return found
    except Exception:  # zipfile, struct and pickletools raise many types for damaged bytes
        return None


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a checkpoint dict onto the CPU; a missing or unreadable file is a ``GraceError``.

    Loaded with ``weights_only=True``: only tensors, plain containers, numbers and
    strings are accepted, so a file that tries to build any other object (a pickle with
    a ``__reduce__`` payload) is refused before any of its code runs. When the file is
    not ``best.pt`` and a ``best.pt`` sits beside it, the message offers it.
    """
    path = Path(path)
    if not path.exists():
        raise GraceError(f"checkpoint {path} is missing{_offer_best(path)}")
    if path.is_dir():
        raise GraceError(f"checkpoint {path} is a directory, not a file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # torch's weights-only unpickler reports a refused global and a damaged byte stream
        # with the same exception; reading the opcodes (never executing them) tells them apart.
        calls = pickle_globals(path)
        if calls is not None:
            unsafe = [c for c in calls if not c.startswith(_SAFE_PREFIXES)]
            what = f" (it would call {unsafe[0]})" if unsafe else ""
            raise GraceError(
                f"checkpoint {path} is refused: it holds objects other than tensors and plain "
                f"values{what}; GRACE never unpickles code from a model file"
            ) from None
        raise GraceError(
            f"checkpoint {path} is corrupt or truncated: not a torch checkpoint{_offer_best(path)}"
        ) from None
    except Exception as err:  # torch.load raises many types for damaged files
        raise GraceError(
            f"checkpoint {path} is corrupt or truncated: {first_line(err, None)}{_offer_best(path)}"
        ) from None
    if not isinstance(obj, dict):
        raise GraceError(
            f"checkpoint {path} is not a GRACE checkpoint (holds a {type(obj).__name__}, "
            f"expected a dict){_offer_best(path)}"
        )
    return obj


def _offer_best(path: Path) -> str:
    best = path.with_name("best.pt")
    if path.name != best.name and best.is_file():
        return f"; {best} exists and can be used instead"
    return ""
