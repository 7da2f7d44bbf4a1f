"""Worker processes for single-threaded jobs (classical denoisers, SSIM, the probes).

Much of daelab's evaluation is single-threaded library code (scikit-image, SciPy, lbfgs) that
leaves the other cores idle, and small PyTorch models use a second thread poorly. :class:`WorkerPool`
runs such jobs in one process per core (forked on Linux; see :func:`_start_method`), each limited to
one BLAS/OpenMP thread. A job is a module-level function and must be deterministic: its result is then
the same wherever it runs, which the tests check against running it in the parent. A job that uses
PyTorch runs it single-threaded (``torch.set_num_threads(1)``), as PyTorch's own DataLoader workers do
after a fork. A long job can report its progress to the parent through :func:`report`.
"""
from __future__ import annotations

import logging
import os
import signal
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Callable, Sequence

import numpy as np

log = logging.getLogger(__name__)


def available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _start_method():
    """How to start workers here, or None where no way is safe.

    On Linux, fork: a worker starts in milliseconds and never re-imports the caller's script.
    The parent's PyTorch/OpenMP threads do not survive a fork, which is harmless here because each
    worker is limited to one OpenMP/BLAS thread and a job using PyTorch sets it to one thread
    (PyTorch's own DataLoader forks its workers the same way). Elsewhere, spawn -- which imports
    the caller's ``__main__`` again in every worker -- only when that cannot re-run the caller's
    work: an interactive session, or ``python -m package``; a script that is run directly might
    lack an ``if __name__ == "__main__":`` guard, so there the jobs stay in this process.
    """
    import multiprocessing
    import sys
    if sys.platform.startswith("linux"):
        return multiprocessing.get_context("fork")
    main = sys.modules.get("__main__")
    name = getattr(getattr(main, "__spec__", None), "name", None) or ""
    if getattr(main, "__file__", None) is None or name == "__main__" or name.endswith(".__main__"):
        return multiprocessing.get_context("spawn")
    return None


_counters = None  # in a worker: the pool's shared progress counters (see report)


def report(slot: int, value: int) -> None:
    """Set progress counter ``slot`` of the pool running this job to ``value``; outside a worker, nothing.

    The parent reads the counters (:attr:`WorkerPool.counters`) to draw progress bars for jobs
    that run elsewhere.
    """
    if _counters is not None and 0 <= slot < len(_counters):
        _counters[slot] = value


def _worker_init(warm: Callable[[], None] | None, counters) -> None:
    global _counters
    _counters = counters
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; workers just stop
    from threadpoolctl import threadpool_limits
    threadpool_limits(1)  # one process per core: no BLAS threads on top
    if warm is not None:
        warm()


class WorkerPool:
    """Runs jobs in ``workers`` processes, or in this process for ``workers <= 1``.

    ``warm`` (a module-level function) runs once in each worker before its first job: the imports
    and first-call costs that would otherwise land in one job's timing. If the pool cannot start or
    breaks, the remaining jobs run in this process (with one warning). ``counters`` shared integers
    (:attr:`counters`, all 0 at first) let jobs in the workers report progress (:func:`report`).
    Use as a context manager.
    """

    def __init__(self, workers: int, warm: Callable[[], None] | None = None, counters: int = 0):
        self._pool: ProcessPoolExecutor | None = None
        self._calls: dict[Future, tuple[Callable, tuple]] = {}  # what each pooled future runs, to rerun it here
        self.counters: Sequence[int] = [0] * counters
        context = _start_method() if workers > 1 else None
        if context is not None:
            try:
                # shared memory inherited by the workers at their start (it cannot be pickled to them later)
                self.counters = context.RawArray("q", counters) if counters else self.counters
                self._pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init,
                                                 initargs=(warm, self.counters or None))
            except (OSError, ValueError) as exc:
                log.warning("jobs run in this process: cannot start worker processes (%s)", exc)
        self.workers = workers if self._pool is not None else 1

    def submit(self, fn: Callable, *args) -> Future:
        """Schedule ``fn(*args)``; returns a future (already done when there is no pool)."""
        if self._pool is not None:
            try:
                future = self._pool.submit(fn, *args)
                self._calls[future] = (fn, args)
                return future
            except (BrokenProcessPool, RuntimeError, OSError) as exc:
                self._give_up(exc)
        future = Future()
        future.set_result(fn(*args))
        return future

    def result(self, future: Future):
        """The result of a future from :meth:`submit`; its job reruns here if the pool broke."""
        fn, args = self._calls.pop(future, (None, ()))
        try:
            return future.result()
        except BrokenProcessPool as exc:
            self._give_up(exc)
            return fn(*args)

    def map_chunks(self, fn: Callable, arrays: Sequence[np.ndarray], chunk: int) -> list[Future]:
        """Submit ``fn`` on row chunks of ``arrays`` (same length); gather with :meth:`gather_chunks`."""
        return [self.submit(fn, *(a[i:i + chunk] for a in arrays)) for i in range(0, len(arrays[0]), chunk)]

    def gather_chunks(self, futures: list[Future]) -> dict[str, np.ndarray]:
        """Concatenate the per-chunk dicts of arrays that :meth:`map_chunks` jobs return."""
        parts = [self.result(future) for future in futures]
        return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}

    def _give_up(self, exc: BaseException) -> None:
        if self._pool is not None:
            log.warning("jobs continue in this process: the worker processes failed (%s)", exc)
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
