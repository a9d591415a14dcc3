"""Where sweep cells run: a local pool of worker processes, or Ray tasks on a cluster.

An executor runs one picklable function on one task at a time per slot and hands
back its outcome dict. Scheduling beyond that (skips, retries, progress) is the
sweep's job; the executors stay thin wrappers over ``concurrent.futures`` and Ray.

This module does not import torch: spawned workers set their thread environment
before the function they run pulls torch in.
"""

from __future__ import annotations

import concurrent.futures as cf
import ctypes
import multiprocessing
import os
import signal
import sys
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from grace_rul.errors import GraceError

EXECUTORS = ("local", "ray")

Outcome = dict[str, Any]
CellFn = Callable[[Any], Outcome]

RAY_MISSING = "ray is not installed: pip install 'grace-rul[ray]'"
PR_SET_PDEATHSIG = 1  # linux/prctl.h


@dataclass(frozen=True)
class ExecutorSpec:
    """How a sweep's cells run: the executor ``kind`` and its settings, checked when made.

    ``workers`` sizes the local pool; ``ray_address`` (None: start a local instance),
    ``cpus_per_task`` and ``gpus_per_task`` are Ray's.
    """

    kind: str = "local"
    workers: int = 1
    ray_address: str | None = None
    cpus_per_task: float = 1
    gpus_per_task: float = 0

    def __post_init__(self) -> None:
        if self.kind not in EXECUTORS:
            raise GraceError(
                f"unknown executor '{self.kind}' (choose from: {', '.join(EXECUTORS)})"
            )
        if self.kind == "local" and self.workers < 1:
            raise GraceError(f"--workers must be >= 1 (got {self.workers})")
        if self.kind == "ray" and self.cpus_per_task <= 0:
            raise GraceError(f"--cpus-per-task must be > 0 (got {self.cpus_per_task})")
        if self.kind == "ray" and self.gpus_per_task < 0:
            raise GraceError(f"--gpus-per-task must be >= 0 (got {self.gpus_per_task})")

    def threads(self, requested: int = 0) -> int:
        """Torch threads per cell: ``requested`` when > 0, else the local pool's share of the
        cores (:func:`threads_per_cell`) or Ray's ``cpus_per_task``."""
        if requested > 0:
            return requested
        if self.kind == "local":
            return threads_per_cell(self.workers)
        return max(1, int(self.cpus_per_task))


def threads_per_cell(workers: int, cpu_count: int | None = None) -> int:
    """Torch threads for each of ``workers`` concurrent cells so the pool never oversubscribes."""
    cores = cpu_count if cpu_count is not None else (os.cpu_count() or 1)
    return max(1, cores // max(1, workers))


def crash_outcome(exc: BaseException) -> Outcome:
    """The outcome recorded when the task itself could not report (worker died, pool broke)."""
    return {
        "ok": False,
        "error": f"{type(exc).__name__}: {exc}".strip(),
        "traceback": "".join(traceback.format_exception(exc)),
    }


def _init_worker(threads: int, sweep_pid: int) -> None:
    """First code in every spawned worker: its thread environment, and its tie to the sweep.

    BLAS/OpenMP pools read the thread variables once at start-up, so this runs before torch
    is imported. A sweep killed outright (SIGTERM, SIGKILL) never shuts its pool down, and
    its workers would train on, writing into cells a restarted sweep runs again; on Linux
    the kernel now sends the worker SIGTERM when the sweep process dies.
    """
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != sweep_pid:  # it died before the line above took effect
            os._exit(1)


class CellExecutor:
    """Common interface: ``submit`` a task, ``wait`` for finished ones, ``close``.

    ``slots`` is how many cells run at once; ``threads`` the torch threads each gets.
    """

    name = "base"
    slots = 1
    threads = 1

    def submit(self, fn: CellFn, task: Any) -> Any:
        raise NotImplementedError

    def wait(self, handles: Iterable[Any]) -> list[tuple[Any, Outcome]]:
        """Block until at least one handle finishes; return ``(handle, outcome)`` pairs."""
        raise NotImplementedError

    def close(self, abort: bool = False) -> None:
        """Release the workers; ``abort`` (an error or Ctrl-C) stops running cells too."""
        raise NotImplementedError

    def __enter__(self) -> CellExecutor:
        return self

    def __exit__(self, exc_type: type | None, *exc: object) -> None:
        self.close(abort=exc_type is not None)


class LocalExecutor(CellExecutor):
    """A ``ProcessPoolExecutor`` of ``workers`` spawned processes on this machine.

    Each cell gets ``threads`` torch threads. A pool broken by a dead worker (out of
    memory, segfault) is replaced on the next submit.
    """

    name = "local"

    def __init__(self, workers: int, threads: int) -> None:
        self.slots = workers
        self.threads = threads
        self._pool: cf.ProcessPoolExecutor | None = None

    def _new_pool(self) -> cf.ProcessPoolExecutor:
        return cf.ProcessPoolExecutor(
            max_workers=self.slots,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(self.threads, os.getpid()),
        )

    def submit(self, fn: CellFn, task: Any) -> cf.Future:
        if self._pool is None:
            self._pool = self._new_pool()
        try:
            return self._pool.submit(fn, task)
        except cf.process.BrokenProcessPool:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = self._new_pool()
            return self._pool.submit(fn, task)

    def wait(self, handles: Iterable[cf.Future]) -> list[tuple[cf.Future, Outcome]]:
        done, _ = cf.wait(list(handles), return_when=cf.FIRST_COMPLETED)
        out = []
        for fut in done:
            try:
                out.append((fut, fut.result()))
            except BaseException as exc:  # a dead worker is a cell failure
                out.append((fut, crash_outcome(exc)))
        return out

    def close(self, abort: bool = False) -> None:
        if self._pool is None:
            return
        if abort:
            # shutdown() would let already-queued cells start; stop the workers instead.
            # Their cells keep last.pt and resume on the next run.
            for proc in list(getattr(self._pool, "_processes", {}).values()):
                proc.terminate()
        self._pool.shutdown(wait=not abort, cancel_futures=True)
        self._pool = None


class RayExecutor(CellExecutor):
    """Cells as Ray tasks on an existing cluster (``ray_address``) or a local instance.

    Results are written by the tasks into the sweep directory, which must therefore
    sit on storage every node sees at the same path. Ray's own task retries are off:
    the sweep retries a failed cell once itself.
    """

    name = "ray"

    def __init__(
        self, ray_address: str | None, cpus_per_task: float, gpus_per_task: float, threads: int
    ) -> None:
        try:
            import ray
        except ImportError:
            raise GraceError(RAY_MISSING) from None
        self._ray = ray
        self._started = False
        if not ray.is_initialized():
            try:
                if ray_address is None:
                    ray.init(include_dashboard=False, log_to_driver=False)
                else:
                    ray.init(address=ray_address, log_to_driver=False)
            except ConnectionError as exc:
                raise GraceError(
                    f"cannot connect to the Ray cluster at {ray_address}: {exc}"
                ) from None
            self._started = True
        self.threads = threads
        self._options = {"num_cpus": cpus_per_task, "num_gpus": gpus_per_task, "max_retries": 0}
        total = ray.cluster_resources().get("CPU", 1)
        self.slots = max(1, int(total // cpus_per_task))
        self._remote: dict[CellFn, Any] = {}

    def submit(self, fn: CellFn, task: Any) -> Any:
        if fn not in self._remote:
            self._remote[fn] = self._ray.remote(**self._options)(fn)
        return self._remote[fn].remote(task)

    def wait(self, handles: Iterable[Any]) -> list[tuple[Any, Outcome]]:
        done, _ = self._ray.wait(list(handles), num_returns=1)
        out = []
        for ref in done:
            try:
                out.append((ref, self._ray.get(ref)))
            except Exception as exc:  # a crashed task is a cell failure
                out.append((ref, crash_outcome(exc)))
        return out

    def close(self, abort: bool = False) -> None:
        # A local instance started here is shut down (ending its tasks); tasks on an
        # external cluster run to completion.
        if self._started and self._ray.is_initialized():
            self._ray.shutdown()
        self._started = False


def make_executor(spec: ExecutorSpec, threads: int) -> CellExecutor:
    """Build the executor ``spec`` describes, giving each cell ``threads`` torch threads."""
    if spec.kind == "local":
        return LocalExecutor(spec.workers, threads)
    return RayExecutor(spec.ray_address, spec.cpus_per_task, spec.gpus_per_task, threads)
