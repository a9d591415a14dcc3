"""Shared test helpers: the tiny config, a quiet single-thread execution, and a CLI runner
that returns exit code, stdout and stderr."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from grace_rul.cli import main
from grace_rul.config import Config, Execution
from grace_rul.resolve import resolve_config

torch.set_num_threads(1)

QUIET = Execution(threads=1, quiet=True, progress=False)


# Real FD001 windows, shortened: the loop, its cadence and its stabilisers do not depend on
# the window length, and a 10-cycle window trains about three times faster than 30.
SHORT = {"window": 10}


def tiny_config(**train) -> Config:
    """The ``tiny`` preset on real FD001 (10-cycle windows) with ``train`` overrides."""
    return resolve_config("tiny", overrides={"train": train, "data": SHORT})


@dataclass
class CliResult:
    """What one ``grace`` invocation did."""

    code: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return self.err.strip().splitlines()


@pytest.fixture
def cli(capsys):
    """``cli("train", "--preset", "tiny", ...)`` runs ``grace`` in-process."""

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run
