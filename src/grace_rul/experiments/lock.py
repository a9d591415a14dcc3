"""An exclusive lock on a sweep directory, so that two ``grace sweep`` never write into one.

``run_sweep`` holds ``SWEEP_DIR/.lock`` for its whole run with ``fcntl.flock``: the
kernel drops the lock when its holder closes the file or dies (even by SIGKILL), so a
left-over file never blocks a later sweep. The holder writes its pid into the file; a
second process is refused at once with one line naming that pid.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from grace_rul.errors import GraceError
from grace_rul.experiments.grid import LOCK_FILE


@contextmanager
def sweep_lock(sweep_dir: str | Path) -> Iterator[None]:
    """Hold the exclusive lock on ``sweep_dir`` (created if needed) for the ``with`` block.

    Does not wait: while another process holds it, raises :class:`GraceError` naming that
    process's pid and changes nothing. flock locks belong to an open file description, so
    a second ``sweep_lock`` on the same directory is refused inside one process too.
    """
    sweep_dir = Path(sweep_dir)
    path = sweep_dir / LOCK_FILE
    try:
        sweep_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise GraceError(f"cannot create the sweep lock {path}: {exc.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise GraceError(
                f"{sweep_dir} is in use by another grace sweep (pid {_holder(fd)}); "
                "wait for it to finish or stop it"
            ) from None
        except OSError as exc:
            raise GraceError(f"cannot lock {path}: {exc.strerror}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)  # releases the lock


def _holder(fd: int) -> str:
    """The pid the lock's holder wrote, or ``unknown`` (it may not have written it yet)."""
    text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    return text if text.isdigit() else "unknown"
