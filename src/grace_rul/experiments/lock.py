"""An exclusive lock on a sweep directory, so that two ``grace sweep`` never write into one.

``run_sweep`` holds ``SWEEP_DIR/.lock`` for its whole run with ``fcntl.flock``: the
kernel drops the lock when its holder closes the file or dies (even by SIGKILL), so a
left-over file never blocks a later sweep. The holder writes its pid into the file; a
second process is refused at once with one line naming that pid.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path

from grace_rul.lock import dir_lock


def sweep_lock(sweep_dir: str | Path) -> AbstractContextManager[None]:
    """Hold the exclusive lock on ``sweep_dir`` (created if needed) for the ``with`` block.

    Does not wait: while another process holds it, raises :class:`GraceError` naming that
    process's pid and changes nothing. flock locks belong to an open file description, so
    a second ``sweep_lock`` on the same directory is refused inside one process too
    (:mod:`grace_rul.lock`, which ``grace train`` uses for its run directory).
    """
    return dir_lock(sweep_dir, "grace sweep")
