"""Worker pools kept alive across calls, and shut down cleanly at exit.

A pool is keyed by its kind and size. Asking again for the same kind and size
returns the same healthy pool (process start-up costs a few hundred milliseconds,
so reuse is what makes many small ``select_best`` calls fast); asking for another
size replaces it. Broken pools are discarded.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import threading
from collections.abc import Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

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

    Like forkserver, spawn imports the caller's main module in each worker:
    scripts that call ``select_best`` with several workers need the usual
    ``if __name__ == "__main__":`` guard (without it the pool cannot start and the
    run falls back to sequential, with a fallback event).
    """
    requested = os.environ.get("TEMPL_MP_START_METHOD", "").strip()
    return requested if requested in multiprocessing.get_all_start_methods() else "spawn"


def worker_env() -> dict[str, str]:
    """The thread-count variables a process worker starts with (the user's values win)."""
    return {name: os.environ.get(name, value) for name, value in _WORKER_THREAD_ENV.items()}


def pool_context(method: str | None = None) -> multiprocessing.context.BaseContext:
    """The multiprocessing context process pools are made with."""
    return multiprocessing.get_context(method or start_method())


def _new_pool(kind: str, workers: int) -> Executor:
    if kind == "process":
        return ProcessPoolExecutor(max_workers=workers, mp_context=pool_context())
    if kind == "thread":
        return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="templ-worker")
    raise ValueError(f"no pool for executor kind {kind!r}")


def is_broken(pool: Executor) -> bool:
    """True when the pool can take no more work (a worker died, or it was shut down)."""
    return bool(getattr(pool, "_broken", False) or getattr(pool, "_shutdown_thread", False)
                or getattr(pool, "_shutdown", False))


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

    def __init__(self) -> None:
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
            if not reused:
                if entry is not None:
                    entry.retired = True
                    idle = entry if entry.users == 0 else None
                entry = _Entry(kind, workers, _new_pool(kind, workers))
                self._current[kind] = entry
            entry.users += 1
            self._leased[id(entry.pool)] = entry
        if idle is not None:
            _shutdown(idle.pool)
        return entry.pool, reused

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

    def discard(self, kind: str, pool: Executor) -> None:
        """Shut a failed ``pool`` down now and forget it; results already finished stay readable."""
        with self._lock:
            entry = self._current.get(kind)
            if entry is not None and entry.pool is pool:
                del self._current[kind]
            leased = self._leased.get(id(pool))
            if leased is not None:
                leased.retired = True
        _shutdown(pool)

    def shutdown_all(self) -> None:
        """Shut every pool down, waiting for its workers to exit."""
        with self._lock:
            pools = {id(e.pool): e.pool for e in (*self._current.values(), *self._leased.values())}
            self._current.clear()
            self._leased.clear()
        for pool in pools.values():
            _shutdown(pool)

    def _forget_if_forked(self) -> None:
        # A forked child inherits the parent's pool objects but not their workers.
        if os.getpid() != self._pid:
            self._current.clear()
            self._leased.clear()
            self._pid = os.getpid()


def _shutdown(pool: Executor) -> None:
    """Shut ``pool`` down, waiting for its workers.

    A process pool whose start failed half-way (one worker started, the next
    refused) may have no manager thread to stop its workers: they are ended here.
    """
    started = list((getattr(pool, "_processes", None) or {}).values())
    try:
        pool.shutdown(wait=True, cancel_futures=True)
    except RuntimeError:  # its manager thread was never started: nothing to wait for
        pool.shutdown(wait=False, cancel_futures=True)
    for process in started:
        if process.is_alive():
            process.kill()
        process.join(timeout=5)


POOLS = PoolRegistry()
atexit.register(POOLS.shutdown_all)
