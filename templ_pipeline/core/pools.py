"""Worker pools kept alive across calls, started whole, and shut down within a bounded time.

A pool is keyed by its kind and size. Asking again for the same kind and size
returns the same healthy pool (process start-up costs a few hundred milliseconds,
so reuse is what makes many small ``select_best`` calls fast); asking for another
size replaces it. Broken pools are discarded. A process pool is started with all
its threads and processes (:func:`start_process_pool`), so that thread exhaustion
shows as a start failure and never as a pool that silently stops moving.

A pool can also be started in the background (:meth:`PoolRegistry.start_in_background`):
a thread of its own starts it and waits until every worker has answered once, so the
call that asked for it scores in the caller meanwhile and the first call that finds it
ready leases it warm. A start that fails is kept for the next call to report
(:meth:`PoolRegistry.take_start_failure`); shutting the registry down ends a pool that
is still starting, so none is left half-started.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ALL_COMPLETED, BrokenExecutor, CancelledError, Executor, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum

from templ_pipeline.core.worker_init import MainModuleReference, WorkerSpawnContext, init_worker, refuse_main_references

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
    if method == "spawn":
        return _WORKER_SPAWN
    context = multiprocessing.get_context(method)
    if method == "forkserver":
        from templ_pipeline.core import forkserver_guard

        context.set_forkserver_preload(forkserver_guard.preload())
    return context


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
    leased: bool = False  # a call has used it: a pool started in the background has not, until the first


READY_SECONDS = 120.0
"""How long a pool started in the background may take until each worker has answered once (0.2-0.5 s
measured here, ``benchmarks/bench_worker_start.py``); a pool slower than that is ended as broken."""

_READY_POLL_SECONDS = 0.05
"""How often a background start looks up from its wait to see whether it was cancelled."""


class BackgroundStart(StrEnum):
    """What :meth:`PoolRegistry.start_in_background` found: it started the pool, another start of the kind
    was under way, or a pool of that size is running already."""

    STARTED = "started"
    STARTING = "starting"
    READY = "ready"


@dataclass(frozen=True, slots=True)
class StartFailure:
    """A pool that could not start in the background: its size, the error, and the pids controller's
    refusal count the starter read before it (so the limit that refused it can still be named)."""

    kind: str
    workers: int
    error: BaseException
    refusals_before: int | None = None


@dataclass(eq=False)
class _Start:
    """A pool being started by a background thread; ``done`` is set once it is installed or ended."""

    kind: str
    workers: int
    refusals_before: int | None
    on_done: Callable[[], None]
    preload: object = None
    done: threading.Event = field(default_factory=threading.Event)
    cancelled: bool = False  # the registry is shutting down: the pool is ended, not installed


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
        self._starting: dict[str, _Start] = {}  # kind -> its start under way in the background
        self._failed: dict[str, StartFailure] = {}  # kind -> a background start that failed, not yet reported
        self._pid = os.getpid()

    def acquire(self, kind: str, workers: int) -> tuple[Executor, bool]:
        """Lease a pool of ``kind`` with ``workers`` workers; say whether a call used it before.

        A start of ``kind`` under way in the background is waited for first (a bounded
        wait: the start ends within :data:`READY_SECONDS`), so no second pool starts beside it.
        """
        self._await_start(kind)
        idle: _Entry | None = None
        with self._lock:
            self._forget_if_forked()
            entry = self._current.get(kind)
            healthy = entry is not None and entry.workers == workers and not is_broken(entry.pool)
            if entry is None or not healthy:
                if entry is not None:
                    entry.retired = True
                    idle = entry if entry.users == 0 else None
                entry = _Entry(kind, workers, self._factory(kind, workers))
                self._current[kind] = entry
            reused, entry.leased = entry.leased, True
            entry.users += 1
            self._leased[id(entry.pool)] = entry
        if idle is not None:
            _shutdown(idle.pool)
        return entry.pool, reused

    def start_in_background(self, kind: str, workers: int, *, preload: object = None,
                            refusals_before: int | None = None,
                            on_done: Callable[[], None] = lambda: None) -> BackgroundStart:
        """Start a pool of ``kind`` with ``workers`` workers in a thread of its own, and return at once.

        Each worker unpickles ``preload`` (the batch function: its module's imports are
        most of a cold start) before the pool counts as ready. One start of a kind runs at
        a time. ``on_done`` runs in that thread once the pool is installed or ended (only
        when this call started it). ``refusals_before`` is kept with a failure
        (:class:`StartFailure`). A thread that cannot start raises the ``RuntimeError``
        here, and nothing is left started.
        """
        try:
            refuse_main_references(preload)
        except MainModuleReference:
            preload = None  # a worker cannot unpickle it: the first batch reports that, as it does today
        with self._lock:
            self._forget_if_forked()
            if kind in self._starting:
                return BackgroundStart.STARTING
            entry = self._current.get(kind)
            if entry is not None and entry.workers == workers and not is_broken(entry.pool):
                return BackgroundStart.READY
            start = _Start(kind, workers, refusals_before, on_done, preload)
            thread = threading.Thread(target=self._start, args=(start,), name=f"templ-{kind}-pool-start",
                                      daemon=True)  # not joined at exit: shutdown_all cancels and awaits it
            self._starting[kind] = start
            try:
                thread.start()
            except BaseException:
                del self._starting[kind]
                raise
        return BackgroundStart.STARTED

    def take_start_failure(self, kind: str) -> StartFailure | None:
        """The background start of ``kind`` that failed since the last call asked, once; None if none did."""
        with self._lock:
            return self._failed.pop(kind, None)

    def settle(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the background starts under way; True when none is left."""
        deadline = time.monotonic() + timeout
        with self._lock:
            starts = list(self._starting.values())
        return all(start.done.wait(max(0.0, deadline - time.monotonic())) for start in starts)

    def _start(self, start: _Start) -> None:
        """The background thread: start the pool, wait until it is ready, then install or end it."""
        pool: Executor | None = None
        error: BaseException | None = None
        try:
            try:
                pool = self._factory(start.kind, start.workers)
                _await_ready(pool, start.workers, start.preload, lambda: start.cancelled)
            except BaseException as exc:  # kept for the next call to report: this thread has nobody to tell
                error = exc
            idle = self._install(start, pool, error)
            if idle is not None:
                _shutdown(idle)
            start.on_done()
        finally:
            start.done.set()

    def _install(self, start: _Start, pool: Executor | None, error: BaseException | None) -> Executor | None:
        """Make a started ``pool`` the current one of its kind, or end it; return a pool to shut down."""
        with self._lock:
            if self._starting.get(start.kind) is start:
                del self._starting[start.kind]
            if error is None and not start.cancelled and pool is not None:
                old = self._current.get(start.kind)
                self._current[start.kind] = _Entry(start.kind, start.workers, pool)
                if old is None:
                    return None
                old.retired = True
                return old.pool if old.users == 0 else None
            if error is not None and not start.cancelled:
                self._failed[start.kind] = StartFailure(start.kind, start.workers, error, start.refusals_before)
        if pool is not None:
            _shutdown(pool, terminate=True)  # its workers only ever started: nothing of theirs to finish
        return None

    def _await_start(self, kind: str) -> None:
        while True:
            with self._lock:
                start = self._starting.get(kind)
            if start is None:
                return
            start.done.wait(READY_SECONDS)

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
            self._failed.clear()
            for start in self._starting.values():
                start.cancelled = True  # its thread ends the pool instead of installing it
        self.settle(SHUTDOWN_GRACE_SECONDS)
        for pool in pools.values():
            _shutdown(pool, terminate=terminate)

    def _forget_if_forked(self) -> None:
        # A forked child inherits the parent's pool objects but not their workers.
        if os.getpid() != self._pid:
            self._current.clear()
            self._leased.clear()
            self._starting.clear()
            self._failed.clear()
            self._pid = os.getpid()


SHUTDOWN_GRACE_SECONDS = 10.0
"""How long a shut-down pool's workers may take to finish their batch before they are ended."""
TERMINATED_MANAGER_SECONDS = 0.5
"""How long the manager thread of a pool whose workers were ended at once gets to return."""


def _answer(preload: object) -> int:
    """A worker's answer to :func:`_await_ready`: unpickling ``preload`` has imported what it names."""
    return os.getpid()


def _await_ready(pool: Executor, workers: int, preload: object, cancelled: Callable[[], bool]) -> None:
    """Return once ``pool`` has answered one task per worker; raise when it cannot or ``cancelled()``.

    A task runs after its worker has started, run its initializer and unpickled the
    task, ``preload`` with it (the imports that make a cold start cost), so an answer
    means a worker that can score; the workers import side by side, so when the last
    answer comes they all can, as a rule.
    """
    answers = [pool.submit(_answer, preload) for _ in range(workers)]
    deadline = time.monotonic() + READY_SECONDS
    while True:
        _, waiting = wait(answers, timeout=_READY_POLL_SECONDS, return_when=ALL_COMPLETED)
        if not waiting:
            for answer in answers:
                answer.result(timeout=0)  # a worker that died at start raises BrokenProcessPool here
            return
        if cancelled():
            raise CancelledError("the registry shut down while the pool was starting")
        if manager_died(pool) or time.monotonic() > deadline:
            raise BrokenExecutor(f"the pool of {workers} workers was not ready within {READY_SECONDS:.0f} s")


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
        # its workers are gone, so the manager returns at once, unless a worker was ended half-way through
        # sending a result: the manager then waits for the rest of it for ever (measured: a SIGTERM that took
        # the full 10 s of grace, and more), so it gets no grace
        grace = min(grace, TERMINATED_MANAGER_SECONDS)
    deadline = time.monotonic() + grace
    started = manager if manager is not None and manager.ident is not None else None
    if started is not None:
        started.join(max(0.0, deadline - time.monotonic()))
    for process in processes:
        end_process(process, max(0.0, deadline - time.monotonic()))
    if started is not None:
        started.join(1.0)  # with its workers gone it returns at once
        if started.is_alive():
            _STUCK.append(started)
    if call_queue is not None and not (started is not None and not started.is_alive()):
        _stop_feeder(call_queue)


_STUCK: list[threading.Thread] = []  # manager threads that outlived their pool's shutdown


def stuck_managers() -> bool:
    """Whether the manager thread of a pool shut down here still runs: interpreter finalization would wait for it
    for ever (``concurrent.futures`` joins it without a timeout), so a process that must end leaves with
    ``os._exit``."""
    return any(thread.is_alive() for thread in _STUCK)


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
