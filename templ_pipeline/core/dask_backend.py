"""Batches on a Dask cluster: a scheduler you name, or a LocalCluster on this machine.

``DaskSessions.acquire`` connects a client to ``tcp://HOST:PORT`` (or starts a
``LocalCluster`` of single-threaded process workers) and keeps it for the next
call, like ``PoolRegistry`` does for pools; sessions are closed at exit.
``DaskSession.run`` submits one task per batch and yields each batch's result
once, when it arrives. Dask reschedules a batch whose worker died (or died
holding its result); the scheduler announces the loss on its ``all`` event topic,
and the driver reports the batches concerned as resubmissions. A result that was
lost while it was fetched and does not come back within the fetch's bound (under
load, distributed can lose track of one it recomputes) is submitted again, once.

Every wait is bounded (:class:`ClusterWatch`): a scheduler without a worker for
``worker_timeout`` seconds (none came, or all left) is a ``no_workers`` failure, a
scheduler the client lost is ``scheduler_lost``; the caller goes on locally. A
scheduler that answers and keeps workers busy is never given up on.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterable, Iterator
from concurrent.futures import CancelledError
from typing import Any

from distributed import Client, Future, KilledWorker, LocalCluster, as_completed
from distributed.comm import connect
from distributed.core import Status
from distributed.security import Security
from tornado.platform.asyncio import BaseAsyncIOLoop

from templ_pipeline.core.backend import BatchFn, RungFailure
from templ_pipeline.core.batch import BatchResult, BatchTask
from templ_pipeline.core.events import BatchResubmitted, ExecutorKind, FallbackReason, Observer, ResubmissionReason
from templ_pipeline.core.pools import worker_env

SCHEDULER_ENV = "DASK_SCHEDULER_ADDRESS"
CONNECT_TIMEOUT = 3.0
"""Seconds to reach a scheduler before the run goes on locally; also the longest one round trip to it
may take, and how long the client may be reconnecting before the scheduler counts as lost."""
WORKER_TIMEOUT_ENV = "TEMPL_DASK_WORKER_TIMEOUT"
WORKER_TIMEOUT = 60.0
"""Seconds a run waits for the scheduler to have a worker (at the start, or after every worker left)
before it goes on locally: long enough for ``dask worker`` processes to start and import RDKit on a
busy node (2-5 s here), short enough that a campaign without a cluster does not sit idle."""
HEALTH_SECONDS = 5.0
"""How often, at most, a run asks the scheduler how many worker threads it has (one round trip). Each asking
cost the driver about 1.1 ms of CPU here; once a second, that was a third of its CPU per query in a campaign of
0.2-1.5 s queries. A lost scheduler is seen at once (the client's status, no round trip), and a cluster whose
workers all left is given up ``--worker-timeout`` (60 s) after a check first finds none, so 5 s costs little."""
WAIT_SECONDS = 0.5
"""The longest a run waits for results at a time before it checks the cluster (and signals run)."""
ALLOWED_FAILURES = 1
"""Losses of a worker under one task that a LocalCluster's scheduler tolerates: a task is run again once
elsewhere; a second loss is ``KilledWorker`` (a batch: ``broken_pool``; a query: a ``worker_lost`` row)."""
CLOSE_TIMEOUT = 5.0
TERMINATE_SECONDS = 0.5
"""How long a LocalCluster's nannies give their workers to close when the run is stopped (SIGINT, SIGTERM):
the nannies then kill them. Their own default is 5 s, and a worker inside a native embedding cannot close, so
a stopped campaign waited 4 s for its workers."""
LOCAL = "local"
TASK_PREFIX = "templ-batch"
RESUBMIT_REASONS = {"processing-tasks": ResubmissionReason.WORKER_LOST,
                    "lost-computed-tasks": ResubmissionReason.RESULT_LOST}
"""Keys of the scheduler's ``remove-worker`` event, and the resubmission reason each stands for."""

_HELD = frozenset({"waiting", "queued", "no-worker", "processing"})
"""Scheduler task states in which a task still runs, or will, on some worker."""

OnResubmit = Callable[[int, ResubmissionReason, str], None]  # (batch index, reason, worker address)

EventMessage = dict[str, Any]
"""A scheduler event's message: a dict decoded from the wire, its values whatever the sender put."""


class DaskFailure(RungFailure):
    """The cluster cannot run (the rest of) the batches: a fallback reason and the error."""


def worker_timeout(explicit: float | None = None) -> float:
    """Seconds to wait for a worker: ``explicit``, else ``$TEMPL_DASK_WORKER_TIMEOUT``, else 60."""
    if explicit is not None:
        return max(0.0, explicit)
    try:
        return max(0.0, float(os.environ.get(WORKER_TIMEOUT_ENV, WORKER_TIMEOUT)))
    except ValueError:
        return WORKER_TIMEOUT


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


class TopicRelay:
    """Relays the dict messages of one scheduler event topic that ``accept`` keeps to the runs listening."""

    def __init__(self, client: Client, topic: str, accept: Callable[[EventMessage], bool]) -> None:
        self._lock = threading.Lock()
        self._listeners: set[queue.SimpleQueue[EventMessage]] = set()
        self._accept = accept
        client.subscribe_topic(topic, self._on_event)

    def _on_event(self, event: tuple[float, object]) -> None:
        # Called on the client's event loop; a loss is announced before the results of the rescheduled tasks.
        message = event[1]
        if isinstance(message, dict) and self._accept(message):
            with self._lock:
                for listener in self._listeners:
                    listener.put(message)

    def listen(self) -> queue.SimpleQueue[EventMessage]:
        listener: queue.SimpleQueue[EventMessage] = queue.SimpleQueue()
        with self._lock:
            self._listeners.add(listener)
        return listener

    def forget(self, listener: queue.SimpleQueue[EventMessage]) -> None:
        with self._lock:
            self._listeners.discard(listener)


def _worker_removed(message: EventMessage) -> bool:
    return message.get("action") == "remove-worker"


def drain(listener: queue.SimpleQueue[EventMessage]) -> list[EventMessage]:
    """Every message waiting in ``listener``, without waiting."""
    messages = []
    while not listener.empty():
        messages.append(listener.get_nowait())
    return messages


def arrived(stream: as_completed, timeout: float) -> list[Any]:
    """The futures of ``stream`` that finished, waiting up to ``timeout`` seconds for the first.

    ``as_completed``'s iterator waits until a future finishes, however long; its ``queue``
    (a ``queue.Queue`` of finished futures) is what the iterator reads, so a bounded ``get``
    on it is the same stream with a bound.
    """
    found: list[Any] = []  # distributed.Futures of each caller's own result type, keyed by the str keys it gave
    try:
        found.append(stream.queue.get(timeout=max(0.0, timeout)))
        while True:
            found.append(stream.queue.get_nowait())
    except queue.Empty:
        pass
    return found


class DaskSession:
    """A client (and the LocalCluster it owns, if any) that runs batches."""

    def __init__(self, client: Client, cluster: LocalCluster | None, size: int) -> None:
        self.client = client
        self.cluster = cluster
        self.size = size
        self.losses = TopicRelay(client, "all", _worker_removed)
        self._relays: dict[str, TopicRelay] = {}
        self._relay_lock = threading.Lock()

    def relay(self, topic: str) -> TopicRelay:
        """The relay of the worker event ``topic`` (``Worker.log_event``), subscribed on first use."""
        with self._relay_lock:
            if topic not in self._relays:
                self._relays[topic] = TopicRelay(self.client, topic, lambda message: True)
            return self._relays[topic]

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
                env=worker_env(), scheduler_kwargs={"allowed_failures": ALLOWED_FAILURES},
            )
        except Exception as error:  # a worker process could not start
            raise DaskFailure(FallbackReason.PROCESS_START_FAILED, error) from error
        return cls(Client(cluster, set_as_default=False), cluster, workers)

    @property
    def healthy(self) -> bool:
        running = self.client.status == "running"
        return running and (self.cluster is None or self.cluster.status == Status.running)

    @property
    def address(self) -> str:
        """The scheduler's address, for messages (empty while the client has no scheduler connection)."""
        if self.cluster is not None:
            return str(self.cluster.scheduler_address)
        scheduler = self.client.scheduler
        return "" if scheduler is None else str(scheduler.address)

    def events(self, topic: str, timeout: float = CONNECT_TIMEOUT) -> list[Any]:
        """The scheduler's event log of ``topic`` (Dask keeps its last 1,000), oldest first: one round trip,
        bounded; empty when it does not come within ``timeout`` or the client is closing."""
        scheduler = self.client.scheduler
        if scheduler is None:  # no scheduler connection: no log to read
            return []
        try:
            return list(self.client.sync(scheduler.events, topic=topic, callback_timeout=timeout))
        except Exception:  # timed out, or the client is closing: the caller goes on without the log
            return []

    def gather(self, futures: Iterable[Future[Any]], timeout: float = CLOSE_TIMEOUT) -> dict[str, Any]:
        """The results of finished ``futures`` by key, in one request however many there are; a future that
        failed is left out, and so are all when they do not come within ``timeout`` (a result lost with its
        worker is being computed again): the caller asks for those one by one, with their errors."""
        wanted = {str(future.key): future for future in futures}
        if not wanted:
            return {}
        pending: concurrent.futures.Future[dict[str, Any]] | None = None
        try:
            pending = self._on_loop(self.client.gather(wanted, errors="skip", asynchronous=True))
            found = pending.result(timeout=timeout)
        except Exception:  # timed out, or the client is closing: nothing is lost, the caller asks again
            if pending is not None:
                pending.cancel()
            return {}
        return {key: value for key, value in found.items() if value is not None}

    def restart(self, workers: list[str], timeout: float,
                cancelled: Iterable[str] = ()) -> concurrent.futures.Future[Any] | None:
        """Ask the scheduler to restart ``workers`` and return at once; the future is done when they are down.

        The scheduler's own restart, without waiting for the new workers: it kills each worker process
        (within ``timeout``) and its nanny starts a new one; a worker without a nanny is removed, for its
        deployment to start again. ``cancelled`` are keys just cancelled on those workers: a cancel travels
        on the client's batched stream, which the restart's own request can overtake, and a task still held
        when its worker goes is handed to another worker (a query stuck past its time limit would then
        block that worker too). So the restart waits until the scheduler has let them go, at most
        ``timeout``. None when the request could not be made (a closed client).
        """
        scheduler = self.client.scheduler
        if scheduler is None:  # no scheduler connection: the worker goes with the cluster
            return None
        keys = list(cancelled)

        async def restart_once_released() -> Any:
            deadline = time.monotonic() + timeout
            while keys and time.monotonic() < deadline:
                states = await scheduler.get_task_status(keys=keys)
                if not _HELD.intersection(states.values()):
                    break
                await asyncio.sleep(0.05)
            return await scheduler.restart_workers(
                workers=workers, timeout=timeout, wait_for_workers=False, on_error="return",
                stimulus_id=f"templ-restart-{time.time()}")

        try:
            return self._on_loop(restart_once_released())
        except RuntimeError:  # the client's event loop is closed: so is the cluster, for this driver
            return None

    def _on_loop(self, work: Coroutine[Any, Any, Any]) -> concurrent.futures.Future[Any]:
        """Run ``work`` on the client's event loop; the caller's thread goes on."""
        loop = self.client.loop
        if not isinstance(loop, BaseAsyncIOLoop):
            work.close()
            raise RuntimeError("the Dask client has no running event loop")
        return asyncio.run_coroutine_threadsafe(work, loop.asyncio_loop)

    def nthreads(self) -> int:
        """Worker threads the scheduler has now: one round trip, ``scheduler_lost`` when it does not answer."""
        try:
            return sum(self.client.nthreads(callback_timeout=CONNECT_TIMEOUT).values())
        except Exception as error:  # closed, reconnecting, timed out: the scheduler is not there for us
            raise DaskFailure(FallbackReason.SCHEDULER_LOST, error) from error

    def run(self, tasks: Iterable[BatchTask], fn: Callable[[BatchTask], BatchResult],
            on_resubmit: OnResubmit, watch: ClusterWatch) -> Iterator[BatchResult]:
        """Yield each batch's result once, as it arrives; ``on_resubmit`` hears of batches Dask runs again.

        Raises ``DaskFailure``: ``broken_pool`` when Dask gave up on a batch after losing
        workers on it; ``scheduler_lost`` or ``no_workers`` when ``watch`` finds the cluster gone.
        """
        # Unique on a shared scheduler; Dask's task prefix (its metrics' task_prefix_name) is "templ-batch".
        run_id = uuid.uuid4().hex
        waiting = {f"{TASK_PREFIX}-{task.index}-{run_id}": task for task in tasks}
        listener = self.losses.listen()
        futures = []
        fetched_again: set[int] = set()  # batches submitted again because their result could not be fetched
        stream = as_completed(loop=self.client.loop)

        def submit(key: str, task: BatchTask) -> None:
            futures.append(self.client.submit(fn, task, key=key, pure=False))
            stream.add(futures[-1])

        try:
            for key, task in waiting.items():
                submit(key, task)
            while waiting:
                done = arrived(stream, WAIT_SECONDS)
                self._report_losses(listener, waiting, on_resubmit)  # the loss was announced before the result
                for future in done:
                    try:
                        result = self._result(future)
                    except DaskFailure as failure:
                        # Its worker died while the result was fetched, and Dask's rerun did not bring it back
                        # in time (distributed can lose track of a result it recomputes): while the client has
                        # its scheduler, the batch is submitted again, once.
                        lost = waiting.pop(future.key, None)
                        if (lost is None or lost.index in fetched_again or not self.healthy
                                or failure.reason != FallbackReason.SCHEDULER_LOST):
                            raise
                        fetched_again.add(lost.index)
                        key = f"{TASK_PREFIX}-{lost.index}-{run_id}-again"
                        waiting[key] = lost
                        submit(key, lost)
                        continue
                    finally:
                        future.release()
                    if waiting.pop(future.key, None) is not None:
                        yield result
                watch.check()
        finally:
            self.losses.forget(listener)
            if self.client.status == "running":
                self.client.cancel([future for future in futures if not future.done()])

    @staticmethod
    def _result(future: Future[BatchResult]) -> BatchResult:
        try:
            return future.result(timeout=CLOSE_TIMEOUT)  # as_completed yielded it: it is done
        except KilledWorker as error:
            raise DaskFailure(FallbackReason.BROKEN_POOL, error) from error
        except (CancelledError, OSError, TimeoutError) as error:
            if future.status == "error":
                raise  # the batch itself raised on its worker
            raise DaskFailure(FallbackReason.SCHEDULER_LOST, error) from error

    @staticmethod
    def _report_losses(
        listener: queue.SimpleQueue[EventMessage], waiting: dict[str, BatchTask], on_resubmit: OnResubmit
    ) -> None:
        for message in drain(listener):
            for field, reason in RESUBMIT_REASONS.items():
                for key in sorted(map(str, message.get(field, ()))):
                    if key in waiting:
                        on_resubmit(waiting[key].index, reason, str(message.get("worker", "")))

    def close(self, *, terminate: bool = False) -> None:
        """Close the client, then the LocalCluster (its worker processes exit); ``terminate``: its workers get
        :data:`TERMINATE_SECONDS` to close before they are killed."""
        try:
            if self.client.status == "running":
                self.client.unsubscribe_topic("all")
            self.client.close(timeout=CLOSE_TIMEOUT)
        finally:
            if self.cluster is not None:
                if terminate:
                    self._close_workers(TERMINATE_SECONDS)
                self.cluster.close(timeout=CLOSE_TIMEOUT)

    def _close_workers(self, timeout: float) -> None:
        """Close the LocalCluster's nannies, each killing its worker after ``timeout`` (or less)."""
        cluster = self.cluster
        assert cluster is not None

        async def close_all() -> None:
            await asyncio.gather(*(worker.close(timeout=timeout) for worker in list(cluster.workers.values())),
                                 return_exceptions=True)

        try:
            cluster.sync(close_all, callback_timeout=CLOSE_TIMEOUT)
        except Exception:  # the cluster's own close still ends them, in its own time
            pass


class ClusterWatch:
    """Bounded waits on a session's cluster: for a first worker, and for a scheduler or workers that left."""

    def __init__(self, session: DaskSession, timeout: float) -> None:
        self._session = session
        self.timeout = timeout
        self.threads = 0
        self._checked = 0.0
        self._without_since: float | None = None
        self._down_since: float | None = None

    def wait_for_workers(self) -> int:
        """The scheduler's worker threads, once it has some; ``no_workers`` after ``timeout`` without."""
        deadline = time.monotonic() + self.timeout
        while (threads := self._session.nthreads()) == 0:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DaskFailure(FallbackReason.NO_WORKERS, TimeoutError(
                    f"the Dask scheduler at {self._session.address} had no worker for {self.timeout:g} s"))
            time.sleep(min(0.25, left))
        self.threads, self._checked = threads, time.monotonic()
        return threads

    def check(self) -> None:
        """Raise ``DaskFailure`` when the scheduler is lost or has had no worker for ``timeout`` seconds.

        Asks the scheduler at most once per ``HEALTH_SECONDS``; a client that is reconnecting
        gets ``CONNECT_TIMEOUT`` seconds before the scheduler counts as lost.
        """
        now = time.monotonic()
        if not self._session.healthy:
            self._down_since = self._down_since or now
            if now - self._down_since >= CONNECT_TIMEOUT or self._session.client.status in ("closed", "closing"):
                raise DaskFailure(FallbackReason.SCHEDULER_LOST, ConnectionError(
                    f"lost the Dask scheduler at {self._session.address} (client {self._session.client.status})"))
            return
        self._down_since = None
        if now - self._checked < HEALTH_SECONDS:
            return
        self._checked = now
        self.threads = self._session.nthreads()
        if self.threads:
            self._without_since = None
            return
        self._without_since = self._without_since or now
        if now - self._without_since >= self.timeout:
            raise DaskFailure(FallbackReason.NO_WORKERS, TimeoutError(
                f"every worker left the Dask scheduler at {self._session.address}, none came back "
                f"within {self.timeout:g} s"))


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

    def shutdown_all(self, *, terminate: bool = False) -> None:
        """Close every session this process opened (``terminate``: :meth:`DaskSession.close`'s)."""
        with self._lock:
            sessions = list(self._sessions.values()) if os.getpid() == self._pid else []
            self._sessions.clear()
        for session in sessions:
            _close_quietly(session, terminate=terminate)


def _close_quietly(session: DaskSession, *, terminate: bool = False) -> None:
    try:
        session.close(terminate=terminate)
    except Exception:  # a lost scheduler cannot be told goodbye; its client is gone either way
        pass


SESSIONS = DaskSessions()
atexit.register(SESSIONS.shutdown_all)  # registered after distributed's own hooks, so it runs before them


class DaskBackend:
    """The dask rung: connects (or starts its LocalCluster) when it first runs, not when it is planned."""

    kind = ExecutorKind.DASK

    def __init__(self, address: str | None, emit: Observer, worker_wait: float | None = None) -> None:
        self.address = address
        self._emit = emit
        self._worker_wait = worker_timeout(worker_wait)

    def lease(self, workers: int) -> DaskLease:
        session, reused = SESSIONS.acquire(self.address, workers)
        watch = ClusterWatch(session, self._worker_wait)
        try:
            watch.wait_for_workers()
        except DaskFailure as failure:
            if failure.reason == FallbackReason.SCHEDULER_LOST:
                SESSIONS.discard(session)
            raise
        return DaskLease(session, reused, self._emit, watch)


class DaskLease:
    """A Dask session running one call's batches; a lost scheduler's session is discarded."""

    def __init__(self, session: DaskSession, reused: bool, emit: Observer, watch: ClusterWatch) -> None:
        self._session = session
        self._emit = emit
        self._watch = watch
        self.reused = reused
        self.workers = max(1, watch.threads)

    def run(self, tasks: list[BatchTask], fn: BatchFn) -> Iterator[BatchResult]:
        def resubmitted(index: int, reason: ResubmissionReason, worker: str) -> None:
            self._emit(BatchResubmitted(ExecutorKind.DASK, index, reason, worker))

        try:
            yield from self._session.run(tasks, fn, resubmitted, self._watch)
        except DaskFailure as failure:
            if failure.reason in (FallbackReason.SCHEDULER_UNREACHABLE, FallbackReason.SCHEDULER_LOST):
                SESSIONS.discard(self._session)
            raise

    def release(self) -> None:
        """Sessions stay open for the next call; ``DaskSessions`` closes them at exit."""


def run_on_workers(address: str, fn: Callable[[], dict[str, Any]]) -> list[dict[str, Any]]:
    """``fn()`` on every worker of the cluster at ``address``, with the worker's address and thread count."""
    check_reachable(address)
    with Client(address, timeout=CONNECT_TIMEOUT, set_as_default=False) as client:
        nthreads = client.nthreads()
        answers = client.run(fn)
    return [{"address": worker, "nthreads": nthreads.get(worker), **answers[worker]} for worker in sorted(answers)]
