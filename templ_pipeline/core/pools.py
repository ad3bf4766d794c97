"""Worker pools kept alive across calls, started whole, and shut down within a bounded time.

A pool is keyed by its kind and size. Asking again for the same kind and size
returns the same healthy pool (process start-up costs a few hundred milliseconds,
so reuse is what makes many small ``select_best`` calls fast); asking for another
size replaces it. Broken pools are discarded. A process pool is started with all
its threads and processes (:func:`start_process_pool`), so that thread exhaustion
shows as a start failure and never as a pool that silently stops moving.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

from templ_pipeline.core.worker_init import WorkerSpawnContext, init_worker

# Native thread pools that numeric libraries start at import, one thread per CPU
# by default: on a 64-core node every process worker would cost 64 tasks more.
# Workers are single-threaded by design, so they get one thread each.
_WORKER_THREAD_ENV = {
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}
_ENV_LOCK = threading.Lock()


@contextmanager
def worker_environment() -> Iterator[None]:
    """Environment for starting process workers: one native thread per library.

    Workers are started by ``submit``, so callers hold this around submission.
    Values the user set are kept; the parent's environment is restored afterwards.
    """
    with _ENV_LOCK:
        added = [name for name in _WORKER_THREAD_ENV if name not in os.environ]
        for name in added:
            os.environ[name] = _WORKER_THREAD_ENV[name]
        try:
            yield
        finally:
            for name in added:
                os.environ.pop(name, None)


def start_method() -> str:
    """How process workers start: ``TEMPL_MP_START_METHOD``, else spawn.

    Not fork: the parent runs threads (OpenTelemetry's span export, the metrics
    server, the pool's own helpers), and a child forked while one of them holds
    a lock deadlocks; OpenTelemetry's own after-fork hook was seen to hang that
    way here. Not forkserver either: under a full pids cgroup the fork server's
    own fork fails and the server exits, which the pool reports as a bare EOF or,
    seen here, not at all. With spawn the parent starts each worker itself, so a
    refused start is an ``OSError`` (EAGAIN) raised right where the pool is
    started, and the fallback ladder takes over. Pools are reused across calls,
    so the start-up cost (a few hundred milliseconds) is paid once.

    The stdlib's spawn runs the caller's main module again in every worker, and
    a script without an ``if __name__ == "__main__":`` guard was measured to run
    once per worker besides its own run. TEMPL's spawn workers leave the main
    module out (:func:`templ_pipeline.core.worker_init.worker_preparation_data`),
    so no guard is needed. The opt-in ``forkserver`` is the stdlib's and does run
    it again (its children are prepared like spawn's); ``fork`` copies the parent
    and runs nothing.
    """
    requested = os.environ.get("TEMPL_MP_START_METHOD", "").strip()
    return requested if requested in multiprocessing.get_all_start_methods() else "spawn"


def worker_env() -> dict[str, str]:
    """The thread-count variables a process worker starts with (the user's values win)."""
    return {name: os.environ.get(name, value) for name, value in _WORKER_THREAD_ENV.items()}


_WORKER_SPAWN = WorkerSpawnContext()


def pool_context(method: str | None = None) -> multiprocessing.context.BaseContext:
    """The multiprocessing context process pools are made with.

    For spawn that is :class:`~templ_pipeline.core.worker_init.WorkerSpawnContext`,
    whose workers do not run the caller's main module (a script, or the ``templ``
    CLI) again; fork and forkserver (opt-in, ``TEMPL_MP_START_METHOD``) are the stdlib's.
    """
    method = method or start_method()
    return _WORKER_SPAWN if method == "spawn" else multiprocessing.get_context(method)


def start_process_pool(workers: int) -> ProcessPoolExecutor:
    """A process pool whose every helper thread and worker process is already running.

    ``ProcessPoolExecutor`` starts what it needs lazily: spawn workers at submit, the
    executor-manager thread at the first submit, and the call queue's feeder thread
    inside the manager thread at its first put. A refused feeder kills the manager
    thread and leaves every future pending forever; a refused manager thread fails
    a submit half-way. Started here, in the caller's thread, each refusal is an
    exception (``RuntimeError`` for a thread, ``OSError`` for a process) raised where
    the fallback ladder handles start failures, and a pool that is returned needs no
    new task until it is shut down.

    The public API cannot start a pool eagerly, so this calls three members that
    ``concurrent.futures.process`` and ``multiprocessing.queues`` have kept from
    Python 3.9 to 3.13: ``_launch_processes``, ``_call_queue._start_thread`` and
    ``_start_executor_manager_thread``. Workers run :func:`init_worker` first.
    """
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=pool_context(),
                               initializer=init_worker, initargs=(os.getpid(),))
    try:
        with worker_environment():
            pool._launch_processes()  # type: ignore[attr-defined]  # first: fork must not copy a live feeder
            pool._call_queue._start_thread()  # type: ignore[attr-defined]
            pool._start_executor_manager_thread()
    except BaseException:
        _shutdown(pool, terminate=True)
        raise
    return pool


PoolFactory = Callable[[str, int], Executor]


def new_pool(kind: str, workers: int) -> Executor:
    """The pool of ``kind`` the registry starts by default: only "process" has one."""
    if kind == "process":
        return start_process_pool(workers)
    raise ValueError(f"no pool for executor kind {kind!r}")


def is_broken(pool: Executor) -> bool:
    """True when the pool can take no more work (a worker died, or it was shut down)."""
    return bool(getattr(pool, "_broken", False) or getattr(pool, "_shutdown_thread", False)
                or getattr(pool, "_shutdown", False))


def manager_died(pool: Executor) -> bool:
    """True when a process pool's executor-manager thread has exited while the pool is open.

    That thread moves work to the workers and results back; without it every
    pending future waits forever, so the caller treats the pool as broken.
    """
    manager = getattr(pool, "_executor_manager_thread", None)
    return manager is not None and not manager.is_alive() and not is_broken(pool)


@dataclass(eq=False)
class _Entry:
    """A pool, its size, and how many calls are using it right now."""

    kind: str
    workers: int
    pool: Executor
    users: int = 0
    retired: bool = False  # replaced by a pool of another size; shut down when its last user leaves


class PoolRegistry:
    """The live pools of this process, one current pool per executor kind.

    Calls lease a pool (``acquire``) and give it back (``release``). A call that
    needs another size gets a new pool; the old one keeps serving the calls that
    still use it and is shut down when the last of them releases it, so concurrent
    calls with different worker counts never pull a pool from under each other.
    """

    def __init__(self, factory: PoolFactory = new_pool) -> None:
        self._factory = factory
        self._lock = threading.Lock()
        self._current: dict[str, _Entry] = {}
        self._leased: dict[int, _Entry] = {}  # id(pool) -> entry, for pools with users
        self._pid = os.getpid()

    def acquire(self, kind: str, workers: int) -> tuple[Executor, bool]:
        """Lease a pool of ``kind`` with ``workers`` workers; say whether it was reused."""
        idle: _Entry | None = None
        with self._lock:
            self._forget_if_forked()
            entry = self._current.get(kind)
            reused = entry is not None and entry.workers == workers and not is_broken(entry.pool)
            if entry is None or not reused:
                if entry is not None:
                    entry.retired = True
                    idle = entry if entry.users == 0 else None
                entry = _Entry(kind, workers, self._factory(kind, workers))
                self._current[kind] = entry
            entry.users += 1
            self._leased[id(entry.pool)] = entry
        if idle is not None:
            _shutdown(idle.pool)
        return entry.pool, reused

    def warm_sizes(self, kind: str) -> tuple[int, ...]:
        """Sizes of the healthy pools of ``kind`` that a call of that size would reuse (at most one)."""
        with self._lock:
            entry = self._current.get(kind)
            return (entry.workers,) if entry is not None and not is_broken(entry.pool) else ()

    def release(self, pool: Executor) -> None:
        """Give a leased pool back; a retired pool is shut down with its last user."""
        with self._lock:
            entry = self._leased.get(id(pool))
            if entry is None:
                return
            entry.users -= 1
            if entry.users > 0:
                return
            del self._leased[id(pool)]
            if not entry.retired:
                return
        _shutdown(pool)

    def discard(self, kind: str, pool: Executor, *, terminate: bool = False) -> None:
        """Shut a failed ``pool`` down now and forget it; results already finished stay readable.

        ``terminate`` ends its workers at once instead of letting them finish their batch.
        """
        with self._lock:
            entry = self._current.get(kind)
            if entry is not None and entry.pool is pool:
                del self._current[kind]
            leased = self._leased.get(id(pool))
            if leased is not None:
                leased.retired = True
        _shutdown(pool, terminate=terminate)

    def shutdown_all(self, *, terminate: bool = False) -> None:
        """Shut every pool down and wait (a bounded time) for its workers to exit.

        ``terminate=True`` ends the workers at once instead of letting them finish
        their batches: for a run that was interrupted.
        """
        with self._lock:
            pools = {id(e.pool): e.pool for e in (*self._current.values(), *self._leased.values())}
            self._current.clear()
            self._leased.clear()
        for pool in pools.values():
            _shutdown(pool, terminate=terminate)

    def _forget_if_forked(self) -> None:
        # A forked child inherits the parent's pool objects but not their workers.
        if os.getpid() != self._pid:
            self._current.clear()
            self._leased.clear()
            self._pid = os.getpid()


SHUTDOWN_GRACE_SECONDS = 10.0
"""How long a shut-down pool's workers may take to finish their batch before they are ended."""


def _shutdown(pool: Executor, *, terminate: bool = False, grace: float = SHUTDOWN_GRACE_SECONDS) -> None:
    """Shut ``pool`` down within a bounded time; ``terminate`` ends its workers at once.

    ``Executor.shutdown(wait=True)`` joins the manager thread without a timeout, and
    a pool whose manager thread died or never started has nobody to stop its
    workers: they would wait on the call queue forever. So the wait here is
    bounded, workers still alive after it are terminated (then killed), and the
    call queue's feeder thread is stopped by hand when the manager cannot do it.
    """
    processes = list((getattr(pool, "_processes", None) or {}).values())
    manager: threading.Thread | None = getattr(pool, "_executor_manager_thread", None)
    call_queue = getattr(pool, "_call_queue", None)
    # Queued work is cancelled by the pool's own manager thread: a future cancelled from
    # outside and then failed by the manager when a worker dies raises InvalidStateError there.
    pool.shutdown(wait=False, cancel_futures=True)
    if not isinstance(pool, ProcessPoolExecutor):
        return  # a factory's other executor: it has no processes to end
    if terminate:
        for process in processes:
            end_process(process, 0)
    deadline = time.monotonic() + grace
    started = manager if manager is not None and manager.ident is not None else None
    if started is not None:
        started.join(max(0.0, deadline - time.monotonic()))
    for process in processes:
        end_process(process, max(0.0, deadline - time.monotonic()))
    if started is not None:
        started.join(1.0)  # with its workers gone it returns at once
    if call_queue is not None and not (started is not None and not started.is_alive()):
        _stop_feeder(call_queue)


def end_process(process: multiprocessing.process.BaseProcess, grace: float) -> None:
    """Wait up to ``grace`` seconds for ``process`` to exit, then terminate it, then kill it."""
    if process.pid is None:  # never started
        return
    process.join(grace)
    for stop in (process.terminate, process.kill):
        if not process.is_alive():
            break
        stop()
        process.join(1.0)


def _stop_feeder(call_queue: multiprocessing.queues.Queue[object]) -> None:
    """Stop a call queue's feeder thread when the manager thread that would have is gone.

    Its workers are gone, so closing the reader first makes a feeder blocked on a
    full pipe fail with EPIPE (which the pool's queue ignores) instead of waiting.
    """
    feeder = getattr(call_queue, "_thread", None)
    try:
        call_queue._reader.close()  # type: ignore[attr-defined]
        call_queue.close()
    except OSError:
        pass
    if feeder is not None and feeder.ident is not None:
        feeder.join(1.0)


POOLS = PoolRegistry()
atexit.register(POOLS.shutdown_all)
