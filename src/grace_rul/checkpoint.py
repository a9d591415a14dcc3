"""Atomic file writes and checkpoint loading.

Every write goes to a temporary file in the target's directory, is flushed and fsync'ed, then
``os.replace``d over the target: a crash or error leaves either the old file or the new one,
never a half-written one, and no temporary file behind.
"""

from __future__ import annotations

import json
import os
import pickle
import pickletools
import uuid
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

from grace_rul.errors import GraceError, WriteError, first_line


def _atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> Path:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # os.open with 0o666 lets the umask decide the final permissions, like a plain open().
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
        fd = os.open(tmp, flags, 0o666)
    except OSError as exc:
        raise WriteError(exc.errno, exc.strerror or str(exc), str(path)) from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, WriteError):
            # disk full, quota, read-only: one line naming the file; nothing half-written
            raise WriteError(exc.errno, exc.strerror or str(exc), str(path)) from None
        if isinstance(exc, RuntimeError) and "write" in str(exc).lower():
            # torch.save reports a failed write (ENOSPC) as a RuntimeError of its zip writer
            raise WriteError(None, first_line(exc), str(path)) from None
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(directory: Path) -> None:
    """Persist the rename itself (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    return _atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically; returns the path."""
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: str | os.PathLike[str], obj: Any, indent: int = 2) -> Path:
    """Write ``obj`` as JSON (plus a final newline) to ``path`` atomically; returns the path."""
    return atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save(obj, path)``, atomically; returns the path."""
    return _atomic_write(path, lambda f: torch.save(obj, f))


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
            f"checkpoint {path} is corrupt or truncated: {_first_line(err)}{_offer_best(path)}"
        ) from None
    if not isinstance(obj, dict):
        raise GraceError(
            f"checkpoint {path} is not a GRACE checkpoint (holds a {type(obj).__name__}, "
            f"expected a dict){_offer_best(path)}"
        )
    return obj


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def _offer_best(path: Path) -> str:
    best = path.with_name("best.pt")
    if path.name != best.name and best.is_file():
        return f"; {best} exists and can be used instead"
    return ""
