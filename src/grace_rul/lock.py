"""Exclusive directory locks, so that two processes never write into one directory.

A holder keeps ``DIR/.lock`` locked with ``fcntl.flock`` for as long as it writes there:
the kernel drops the lock when its holder closes the file or dies (even by SIGKILL), so
a left-over file never blocks a later process. The holder writes its pid into the file;
a second process is refused at once with one line naming that pid. ``grace sweep`` locks
its sweep directory and ``grace train`` its run directory this way.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from grace_rul.errors import GraceError

LOCK_FILE = ".lock"


class DirLock:
    """An exclusive, non-waiting lock on a directory, taken by :meth:`acquire`.

    ``what`` names the holder in messages (``grace sweep``, ``grace train``). Used as a
    context manager it releases the lock (if taken) however the block ends.
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self.fd: int | None = None

    def acquire(self, directory: str | Path) -> None:
        """Take the lock on ``directory`` (created if needed), or raise ``GraceError``.

        Does not wait: while another holder has it, the message names that holder's pid.
        flock locks belong to an open file description, so a second lock on the same
        directory is refused inside one process too.
        """
        directory = Path(directory)
        path = directory / LOCK_FILE
        noun = self.what.split()[-1]
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise GraceError(f"cannot create the {noun} lock {path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise GraceError(
                f"{directory} is in use by another {self.what} (pid {holder}); "
                "wait for it to finish or stop it"
            ) from None
        except OSError as exc:
            os.close(fd)
            raise GraceError(f"cannot lock {path}: {exc.strerror}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd

    def release(self) -> None:
        """Drop the lock (closing the file releases it); a no-op when not held."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> DirLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextmanager
def dir_lock(directory: str | Path, what: str) -> Iterator[None]:
    """Hold the exclusive lock on ``directory`` for the ``with`` block (see :class:`DirLock`)."""
    with DirLock(what) as lock:
        lock.acquire(directory)
        yield


def _holder(fd: int) -> str:
    """The pid the lock's holder wrote, or ``unknown`` (it may not have written it yet)."""
    text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    return text if text.isdigit() else "unknown"
