"""One small protocol for the rungs that run batches elsewhere: lease workers, run tasks, fail typed.

A ``Backend`` leases workers (``lease``) and the ``Lease`` runs batches, yielding each
result once as it arrives. Whatever goes wrong on the way (a pool that cannot
start, a worker that dies, a scheduler that is gone) is one exception type,
:class:`RungFailure`, with a typed reason; the results yielded before it stand.
The executor walks its ladder over backends and knows nothing else about them.
``PoolBackend`` is the local process pool; ``dask_backend.DaskBackend`` the cluster.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, BrokenExecutor, CancelledError, Executor, Future, wait
from typing import Protocol

from templ_pipeline.core.batch import BatchResult, BatchTask
from templ_pipeline.core.events import ExecutorKind, FallbackReason, Observer, PoolRestarted
from templ_pipeline.core.pools import PoolRegistry, manager_died
from templ_pipeline.core.worker_init import refuse_main_references

HEALTH_CHECK_SECONDS = 0.5
"""How often a pool's manager thread is looked at while results are awaited."""

STALL_SECONDS = 300.0
"""A pool that finishes no batch for this long is taken as broken (a scoring batch takes
well under a second; a worker stuck this long is deadlocked, not slow)."""

BatchFn = Callable[[BatchTask], BatchResult]


class RungFailure(Exception):
    """A rung cannot run (the rest of) the batches: a typed fallback reason and the error behind it."""

    def __init__(self, reason: FallbackReason, error: BaseException) -> None:
        super().__init__(f"{reason}: {error}")
        self.reason = reason
        self.error = error


class Lease(Protocol):
    """Workers leased for one call."""

    workers: int
    reused: bool

    def run(self, tasks: list[BatchTask], fn: BatchFn) -> Iterator[BatchResult]:
        """Yield each task's result once, as it arrives; raise ``RungFailure`` when the rest cannot run."""
        ...

    def release(self) -> None:
        """Give the workers back (they stay warm for the next call)."""
        ...


class Backend(Protocol):
    """Where a rung's batches run."""

    kind: ExecutorKind

    def lease(self, workers: int) -> Lease:
        """Workers for one call; raise ``RungFailure`` when none can be had."""
        ...


def start_failure_reason(kind: ExecutorKind, error: BaseException) -> FallbackReason:
    """The fallback reason of a pool that failed to start or to take work."""
    if isinstance(error, (BrokenExecutor, CancelledError)):
        return FallbackReason.BROKEN_POOL
    if "can't start new thread" in str(error):
        return FallbackReason.THREAD_START_FAILED
    return FallbackReason.PROCESS_START_FAILED


class PoolBackend:
    """Process pools from a ``PoolRegistry``: started whole, checked while they work."""

    def __init__(self, kind: ExecutorKind, registry: PoolRegistry, emit: Observer,
                 stall_timeout: float = STALL_SECONDS) -> None:
        self.kind = kind
        self._registry = registry
        self._emit = emit
        self._stall_timeout = stall_timeout

    def lease(self, workers: int) -> PoolLease:
        try:
            pool, reused = self._registry.acquire(self.kind, workers)
        except (OSError, RuntimeError) as error:
            raise RungFailure(start_failure_reason(self.kind, error), error) from error
        return PoolLease(self, pool, workers, reused)


class PoolLease:
    """A leased pool running one call's batches."""

    def __init__(self, backend: PoolBackend, pool: Executor, workers: int, reused: bool) -> None:
        self._backend = backend
        self._pool = pool
        self.workers = workers
        self.reused = reused

    def release(self) -> None:
        self._backend._registry.release(self._pool)

    def run(self, tasks: list[BatchTask], fn: BatchFn) -> Iterator[BatchResult]:
        """Submit every task, yield results as they come; on failure yield the finished ones, then raise.

        Every wait is bounded: between results the pool's manager thread is checked
        (a dead one is a broken pool), and a pool that finishes nothing for the
        stall timeout is taken as broken too. If the caller abandons the call (an
        interrupt, or the generator is closed early) with batches still queued, the
        pool is ended at once: its queued work is nobody's any more.

        A process pool's workers do not import the caller's ``__main__``, so a batch
        function defined there is refused before anything is submitted
        (:class:`~templ_pipeline.core.worker_init.MainModuleReference`); unrefused,
        each worker would die unpickling it and the pool would break.
        """
        backend, pool = self._backend, self._pool
        if backend.kind == ExecutorKind.PROCESS:
            refuse_main_references(fn)
        futures: dict[Future[BatchResult], BatchTask] = {}
        try:
            for task in tasks:
                futures[pool.submit(fn, task)] = task
            last_result = time.monotonic()
            while futures:
                done, _ = wait(futures, timeout=HEALTH_CHECK_SECONDS, return_when=FIRST_COMPLETED)
                if not done:
                    self._check(last_result)
                    continue
                last_result = time.monotonic()
                for future in done:
                    del futures[future]
                    yield future.result(timeout=0)
        except (BrokenExecutor, CancelledError, OSError, RuntimeError, EOFError) as error:
            # EOFError: with TEMPL_MP_START_METHOD=forkserver, a fork server that could not fork exits;
            # CancelledError: a concurrent call found this shared pool broken and discarded it
            backend._registry.discard(backend.kind, pool)
            if isinstance(error, BrokenExecutor):
                backend._emit(PoolRestarted(backend.kind, FallbackReason.BROKEN_POOL, str(error), error))
            for future in list(futures):  # batches that finished before the failure are kept
                if future.done() and not future.cancelled() and future.exception(timeout=0) is None:
                    yield future.result(timeout=0)
            raise RungFailure(start_failure_reason(backend.kind, error), error) from error
        except BaseException:
            if futures:
                backend._registry.discard(backend.kind, pool, terminate=True)
            raise

    def _check(self, last_result: float) -> None:
        """Raise ``BrokenExecutor`` when the pool cannot deliver: its manager died, or it stalled."""
        if manager_died(self._pool):
            raise BrokenExecutor("the pool's executor-manager thread died; its pending batches would never finish")
        stalled = time.monotonic() - last_result
        if stalled > self._backend._stall_timeout:
            raise BrokenExecutor(f"no batch finished in {stalled:.0f} s (limit {self._backend._stall_timeout:.0f} s)")
