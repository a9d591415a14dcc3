"""The sweep directory lock: a second sweep on a directory in use is refused and writes nothing.

No training here: the refusal comes before any cell runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from grace_rul.config import Execution
from grace_rul.errors import GraceError
from grace_rul.experiments.grid import LOCK_FILE, Grid, write_grid
from grace_rul.experiments.lock import sweep_lock
from grace_rul.experiments.sweep import run_sweep

GRID = dict(datasets=["FD001"], balancers=["equal", "gaba"], seeds=[42, 123], preset="tiny")
TRAIN = {"train": {"epochs": 1}}
ONE_THREAD = Execution(threads=1)
ARGV = "sweep --datasets FD001 --balancers equal gaba --seeds 42 123 --preset tiny --epochs 1"

# Another process that holds the lock the way any flock holder would, and writes its pid.
HOLDER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, str(os.getpid()).encode())
print("held", flush=True)
sys.stdin.read()
"""


def _snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def holder(tmp_path):
    """A subprocess holding SWEEP_DIR/.lock; ``kill()`` it to see the lock die with it."""
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(sweep / LOCK_FILE)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "held"
        yield sweep, proc
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("existing", [False, True], ids=["new-dir", "existing-sweep"])
def test_second_sweep_is_refused_with_the_holders_pid_and_writes_nothing(holder, existing, capsys):
    sweep, proc = holder
    if existing:  # the grid the first sweep recorded, and a cell of it
        write_grid(sweep, Grid(**GRID, overrides={"train": {"epochs": 1}}, protocol="val"))
        (sweep / "runs" / "FD001-equal-s42").mkdir(parents=True)
        (sweep / "runs" / "FD001-equal-s42" / "events.log").write_text("epoch 1\n")
    before = _snapshot(sweep)

    with pytest.raises(GraceError, match=rf"in use by another grace sweep \(pid {proc.pid}\)"):
        run_sweep(sweep, **GRID, overrides=TRAIN, execution=ONE_THREAD, progress=False)

    from grace_rul.cli import main

    assert main([*ARGV.split(), "--threads", "1", "--quiet", "--out", str(sweep)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("grace: error: ") and err.count("\n") == 1
    assert f"(pid {proc.pid})" in err and str(sweep) in err
    assert _snapshot(sweep) == before  # nothing written, not even the lock file's pid


def test_the_lock_dies_with_its_process(holder):
    sweep, proc = holder
    with pytest.raises(GraceError, match=f"pid {proc.pid}"):
        with sweep_lock(sweep):
            pass
    proc.kill()  # SIGKILL: no clean-up code runs in the holder
    proc.wait()
    with sweep_lock(sweep):
        assert (sweep / LOCK_FILE).read_text() == f"{os.getpid()}\n"


def test_one_process_cannot_take_the_lock_twice(tmp_path):
    # flock locks belong to an open file description: a second open in this process is refused.
    sweep = tmp_path / "new" / "sweep"
    with sweep_lock(sweep):
        assert (sweep / LOCK_FILE).read_text() == f"{os.getpid()}\n"
        with pytest.raises(GraceError, match=rf"^{sweep} is in use .*\(pid {os.getpid()}\)"):
            with sweep_lock(sweep):
                pass
    with sweep_lock(sweep):  # released on leaving the block
        pass


def test_a_left_over_lock_file_does_not_make_a_directory_foreign(tmp_path):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / LOCK_FILE).write_text("12345\n")  # a sweep killed before it wrote sweep.yaml
    with pytest.raises(GraceError, match="unknown balancer"):  # got past the directory check
        run_sweep(
            sweep,
            **{**GRID, "balancers": ["nope"]},
            overrides=TRAIN,
            execution=ONE_THREAD,
            progress=False,
        )
    assert sorted(p.name for p in sweep.iterdir()) == [LOCK_FILE]
