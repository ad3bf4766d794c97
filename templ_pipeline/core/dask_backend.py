"""Batches on a Dask cluster: a scheduler you name, or a LocalCluster on this machine.

``DaskSessions.acquire`` connects a client to ``tcp://HOST:PORT`` (or starts a
``LocalCluster`` of single-threaded process workers) and keeps it for the next
call, like ``PoolRegistry`` does for pools; sessions are closed at exit.
``DaskSession.run`` submits one task per batch and yields each batch's result
once, when it arrives. Dask reschedules a batch whose worker died (or died
holding its result); the scheduler announces the loss on its ``all`` event topic,
and the driver reports the batches concerned as resubmissions.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import queue
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import CancelledError

from distributed import Client, KilledWorker, LocalCluster, as_completed
from distributed.comm import connect
from distributed.core import Status
from distributed.security import Security

from templ_pipeline.core.backend import BatchFn, RungFailure
from templ_pipeline.core.batch import BatchResult, BatchTask
from templ_pipeline.core.events import BatchResubmitted, ExecutorKind, FallbackReason, Observer, ResubmissionReason
from templ_pipeline.core.pools import worker_env

SCHEDULER_ENV = "DASK_SCHEDULER_ADDRESS"
CONNECT_TIMEOUT = 3.0
"""Seconds to reach a scheduler before the run goes on locally."""
CLOSE_TIMEOUT = 5.0
LOCAL = "local"
TASK_PREFIX = "templ-batch"
RESUBMIT_REASONS = {"processing-tasks": ResubmissionReason.WORKER_LOST,
                    "lost-computed-tasks": ResubmissionReason.RESULT_LOST}
"""Keys of the scheduler's ``remove-worker`` event, and the resubmission reason each stands for."""

OnResubmit = Callable[[int, ResubmissionReason, str], None]  # (batch index, reason, worker address)


class DaskFailure(RungFailure):
    """The cluster cannot run (the rest of) the batches: a fallback reason and the error."""


def scheduler_address(explicit: str | None) -> str | None:
    """The scheduler to use: ``explicit``, else ``$DASK_SCHEDULER_ADDRESS``; None means a LocalCluster."""
    return explicit or os.environ.get(SCHEDULER_ENV) or None


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT) -> None:
    """Open and close one comm to ``address``; raise ``DaskFailure("scheduler_unreachable")`` on failure.

    Done before making a ``Client``: a client that cannot connect leaves its event-loop thread behind.
    Skipped inside a running event loop (a notebook), where the client's own timeout applies.
    """

    async def probe() -> None:
        comm = await connect(address, timeout=timeout, **Security().get_connection_args("client"))
        await comm.close()

    if _in_event_loop():
        return
    try:
        asyncio.run(probe())
    except Exception as error:  # refused, timed out, unresolvable, or not a Dask scheduler
        raise DaskFailure(FallbackReason.SCHEDULER_UNREACHABLE, error) from error


def _in_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class LossWatch:
    """Relays the scheduler's ``remove-worker`` events to the runs listening on this client."""

    def __init__(self, client: Client) -> None:
        self._lock = threading.Lock()
        self._listeners: set[queue.SimpleQueue] = set()
        client.subscribe_topic("all", self._on_event)

    def _on_event(self, event: tuple[float, dict]) -> None:
        # Called on the client's event loop, before the results of the rescheduled tasks arrive.
        message = event[1]
        if isinstance(message, dict) and message.get("action") == "remove-worker":
            with self._lock:
                for listener in self._listeners:
                    listener.put(message)

    def listen(self) -> queue.SimpleQueue:
        listener: queue.SimpleQueue = queue.SimpleQueue()
        with self._lock:
            self._listeners.add(listener)
        return listener

    def forget(self, listener: queue.SimpleQueue) -> None:
        with self._lock:
            self._listeners.discard(listener)


class DaskSession:
    """A client (and the LocalCluster it owns, if any) that runs batches."""

    def __init__(self, client: Client, cluster: LocalCluster | None, size: int) -> None:
        self.client = client
        self.cluster = cluster
        self.size = size
        self._watch = LossWatch(client)

    @classmethod
    def open(cls, address: str | None, workers: int) -> DaskSession:
        """Connect to ``address``, or start a LocalCluster of ``workers`` single-threaded process workers."""
        if address is not None:
            check_reachable(address)
            try:
                client = Client(address, timeout=CONNECT_TIMEOUT, set_as_default=False)
            except Exception as error:
                raise DaskFailure(FallbackReason.SCHEDULER_UNREACHABLE, error) from error
            return cls(client, None, 0)
        try:
            cluster = LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                dashboard_address="127.0.0.1:0",  # None would still bind :8787; this is a free loopback port
                env=worker_env(),
            )
        except Exception as error:  # a worker process could not start
            raise DaskFailure(FallbackReason.PROCESS_START_FAILED, error) from error
        return cls(Client(cluster, set_as_default=False), cluster, workers)

    @property
    def healthy(self) -> bool:
        running = self.client.status == "running"
        return running and (self.cluster is None or self.cluster.status == Status.running)

    def nthreads(self) -> int:
        """Worker threads the cluster offers now (the LocalCluster's size for a local one)."""
        if self.cluster is not None:
            return self.size
        return sum(self.client.nthreads().values())

    def run(self, tasks: Iterable[BatchTask], fn: Callable[[BatchTask], BatchResult],
            on_resubmit: OnResubmit) -> Iterator[BatchResult]:
        """Yield each batch's result once, as it arrives; ``on_resubmit`` hears of batches Dask runs again.

        Raises ``DaskFailure``: ``broken_pool`` when Dask gave up on a batch after losing
        several workers on it, ``scheduler_unreachable`` when the scheduler was lost.
        """
        # Unique on a shared scheduler; Dask's task prefix (its metrics' task_prefix_name) is "templ-batch".
        run_id = uuid.uuid4().hex
        waiting = {f"{TASK_PREFIX}-{task.index}-{run_id}": task for task in tasks}
        listener = self._watch.listen()
        futures = []
        try:
            futures = [self.client.submit(fn, task, key=key, pure=False) for key, task in waiting.items()]
            for future in as_completed(futures, loop=self.client.loop):
                result = self._result(future)
                future.release()
                self._report_losses(listener, waiting, on_resubmit)  # the loss was announced before this result
                if waiting.pop(future.key, None) is not None:
                    yield result
        finally:
            self._watch.forget(listener)
            if self.client.status == "running":
                self.client.cancel([future for future in futures if not future.done()])

    @staticmethod
    def _result(future) -> BatchResult:
        try:
            return future.result(timeout=CLOSE_TIMEOUT)  # as_completed yielded it: it is done
        except KilledWorker as error:
            raise DaskFailure(FallbackReason.BROKEN_POOL, error) from error
        except (CancelledError, OSError, TimeoutError) as error:
            if future.status == "error":
                raise  # the batch itself raised on its worker
            raise DaskFailure(FallbackReason.SCHEDULER_UNREACHABLE, error) from error

    @staticmethod
    def _report_losses(listener: queue.SimpleQueue, waiting: dict[str, BatchTask], on_resubmit: OnResubmit) -> None:
        while not listener.empty():
            message = listener.get_nowait()
            for field, reason in RESUBMIT_REASONS.items():
                for key in sorted(map(str, message.get(field, ()))):
                    if key in waiting:
                        on_resubmit(waiting[key].index, reason, str(message.get("worker", "")))

    def close(self) -> None:
        """Close the client, then the LocalCluster (its worker processes exit)."""
        try:
            if self.client.status == "running":
                self.client.unsubscribe_topic("all")
            self.client.close(timeout=CLOSE_TIMEOUT)
        finally:
            if self.cluster is not None:
                self.cluster.close(timeout=CLOSE_TIMEOUT)


class DaskSessions:
    """The live Dask sessions of this process: one per scheduler address, one LocalCluster."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sessions: dict[str, DaskSession] = {}
        self._pid = os.getpid()

    def acquire(self, address: str | None, workers: int) -> tuple[DaskSession, bool]:
        """A session for ``address`` (None: a LocalCluster of ``workers``), and whether it was reused."""
        key = address or LOCAL
        with self._lock:
            if os.getpid() != self._pid:  # a forked child does not own the parent's clients
                self._sessions.clear()
                self._pid = os.getpid()
            current = self._sessions.pop(key, None)
            if current is not None:
                if current.healthy and (address is not None or current.size == workers):
                    self._sessions[key] = current
                    return current, True
                _close_quietly(current)
            session = DaskSession.open(address, workers)
            self._sessions[key] = session
            return session, False

    def discard(self, session: DaskSession) -> None:
        """Close ``session`` and forget it."""
        with self._lock:
            for key, current in list(self._sessions.items()):
                if current is session:
                    del self._sessions[key]
        _close_quietly(session)

    def shutdown_all(self) -> None:
        """Close every session this process opened."""
        with self._lock:
            sessions = list(self._sessions.values()) if os.getpid() == self._pid else []
            self._sessions.clear()
        for session in sessions:
            _close_quietly(session)


def _close_quietly(session: DaskSession) -> None:
    try:
        session.close()
    except Exception:  # a lost scheduler cannot be told goodbye; its client is gone either way
        pass


SESSIONS = DaskSessions()
atexit.register(SESSIONS.shutdown_all)  # registered after distributed's own hooks, so it runs before them


class DaskBackend:
    """The dask rung: connects (or starts its LocalCluster) when it first runs, not when it is planned."""

    kind = ExecutorKind.DASK

    def __init__(self, address: str | None, emit: Observer) -> None:
        self.address = address
        self._emit = emit

    def lease(self, workers: int) -> DaskLease:
        session, reused = SESSIONS.acquire(self.address, workers)
        return DaskLease(session, reused, self._emit)


class DaskLease:
    """A Dask session running one call's batches; a lost scheduler's session is discarded."""

    def __init__(self, session: DaskSession, reused: bool, emit: Observer) -> None:
        self._session = session
        self._emit = emit
        self.reused = reused
        self.workers = max(1, session.nthreads())

    def run(self, tasks: list[BatchTask], fn: BatchFn) -> Iterator[BatchResult]:
        def resubmitted(index: int, reason: ResubmissionReason, worker: str) -> None:
            self._emit(BatchResubmitted(ExecutorKind.DASK, index, reason, worker))

        try:
            yield from self._session.run(tasks, fn, resubmitted)
        except DaskFailure as failure:
            if failure.reason == FallbackReason.SCHEDULER_UNREACHABLE:
                SESSIONS.discard(self._session)
            raise

    def release(self) -> None:
        """Sessions stay open for the next call; ``DaskSessions`` closes them at exit."""


def run_on_workers(address: str, fn: Callable[[], dict]) -> list[dict]:
    """``fn()`` on every worker of the cluster at ``address``, with the worker's address and thread count."""
    check_reachable(address)
    with Client(address, timeout=CONNECT_TIMEOUT, set_as_default=False) as client:
        nthreads = client.nthreads()
        answers = client.run(fn)
    return [{"address": worker, "nthreads": nthreads.get(worker), **answers[worker]} for worker in sorted(answers)]
