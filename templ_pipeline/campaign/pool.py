"""The campaign's process workers: one query each at a time, the next few queued, a time limit per query,
replaced when lost.

``concurrent.futures`` pools do not serve here: they cannot say which worker
holds which query, nor end one worker whose query runs over its time limit (the
only way to stop a native ETKDG embedding) without breaking the whole pool, and
they need a manager and a feeder thread in the parent that a full thread budget
can refuse. So each worker has a pipe of its own (:mod:`templ_pipeline.campaign.worker`)
and every wait here is a selector's ``select`` with a bound.

What happens is reported as events: a worker that cannot start is a fallback to
fewer workers (the pool goes on with those it has; with none at the start it raises
:class:`NoWorkers`, later it sets :attr:`QueryPool.gone`, and the campaign goes on
in-process), a query over its limit ends its
worker and becomes a ``timeout`` outcome, a worker that dies mid-query has its
query run once more by another worker, then a ``worker_lost`` outcome, and a
worker whose memory grew or that ran its quota of queries is ended between two
queries and replaced (:mod:`~templ_pipeline.campaign.recycling`). Each
replacement is a :class:`~templ_pipeline.core.events.WorkerReplaced` event.

A worker may hold up to :data:`DEPTH` queries: the one it runs and the next, waiting in its pipe, so it
starts its next query the moment it sends an outcome, and the parent need not wake for every outcome. While
every worker has a query waiting, :meth:`QueryPool.wait` lingers after the first outcome arrives (a share
of a query's time) and handles those that came meanwhile in one pass. Measured on 2 cores with 2 workers and
results every 20 ms (``bench_screen``'s busy pace): 3-5 outcomes a pass, and the parent's CPU per query fell
from 0.85-0.89 to 0.45-0.59 ms, as the Python code it runs per outcome stays in the caches for the outcomes
after the first. The runner asks for queued places only outside a campaign's tail, so the last queries still
go to whichever worker is free.
"""

from __future__ import annotations

import selectors
import statistics
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.reduction import ForkingPickler

from templ_pipeline.campaign import spares
from templ_pipeline.campaign.recycling import RecyclePolicy
from templ_pipeline.campaign.spares import start_worker
from templ_pipeline.campaign.task import CampaignSettings, QueryOutcome, QueryTask, failed
from templ_pipeline.campaign.worker import READY, Finished, serve
from templ_pipeline.core.backend import start_failure_reason
from templ_pipeline.core.events import (
    ExecutorKind,
    Fallback,
    Observer,
    QueryFailureReason,
    QueryStatus,
    ReplacementReason,
    WorkerReplaced,
)
from templ_pipeline.core.grants import classify_failure, pids_refusals
from templ_pipeline.core.pools import end_process, pool_context

START_SECONDS = 120.0
"""How long a new worker may take to import RDKit and prepare the templates (0.2-0.5 s here;
much more only on a node whose file system or CPUs are saturated)."""

MAX_ATTEMPTS = 2
"""Runs of one query on workers that die under it before it is a ``worker_lost`` outcome: a
worker killed by something else (the OOM killer, an operator) gets the query a second chance,
a query that crashes RDKit itself does not take down worker after worker."""

SWEEP_SECONDS = 5.0
"""How often every worker is asked whether it is alive, besides the sentinels that say so at once."""

STOP_SECONDS = 5.0
"""How long stopped workers may take to exit before they are killed."""

DEPTH = 4
"""Queries a worker holds at most when the runner asks for places ahead: the one it runs and three waiting.
Enough that the parent can linger over about one query's time and still find every worker busy."""

QUEUE_BYTES = 32 * 1024
"""Bytes of waiting queries sent ahead into one worker's pipe. A send into a full pipe would block the parent
until the worker reads, that is for a whole query; a query over this (a large molfile) waits in the parent
until its worker has nothing else waiting."""

LINGER_SHARE = 0.5
"""Share of the median recent query time, per query every worker has waiting, that the parent lingers after an
outcome. The queries waiting may be shorter than those before (the largest go first); half of the median
per query leaves room for that. Measured over the bundled library at 2 workers (0.2-1.5 s a query), the
workers were idle 1.4-1.9 % of the campaign with it and 1.0-1.6 % without lingering, about the noise from
run to run; the shortest recent time instead of the median left the busy pace's parent its old CPU."""

RECENT = 8
"""Scored queries whose times the linger looks at."""

MAX_LINGER = 1.0
"""Seconds the parent lingers at most: rows and progress are at most this late."""


class NoWorkers(Exception):
    """No campaign worker could start; ``fallback`` says why (already emitted)."""

    def __init__(self, fallback: Fallback) -> None:
        super().__init__(fallback.detail)
        self.fallback = fallback


@dataclass(slots=True)
class _Held:
    """A query given to a worker: its pickled form until it is sent, and its size."""

    task: QueryTask
    payload: bytes | None
    size: int


@dataclass(eq=False)
class _Worker:
    process: object  # multiprocessing.process.BaseProcess
    connection: Connection
    started: float
    ready: bool = False
    tasks: deque[_Held] = field(default_factory=deque)  # its queries in order, the first the one it runs
    since: float = 0.0  # when it started its first query
    queries: int = 0  # queries it finished
    baseline: int = 0  # bytes resident after its first query
    retiring: str | None = None  # why it is recycled once its waiting queries are done

    @property
    def pid(self) -> int:
        return self.process.pid  # type: ignore[attr-defined]

    @property
    def task(self) -> QueryTask | None:
        """The query it runs now."""
        return self.tasks[0].task if self.tasks else None

    def waiting(self) -> list[QueryTask]:
        """The queries behind the one it runs: none of them has started."""
        return [held.task for held in list(self.tasks)[1:]]


@dataclass
class Arrivals:
    """What one :meth:`QueryPool.wait` brought: finished queries, and queries to run again."""

    finished: list[tuple[QueryTask, QueryOutcome]] = field(default_factory=list)
    retry: list[QueryTask] = field(default_factory=list)


class QueryPool:
    """Up to ``size`` worker processes running one query each at a time, reporting to ``emit``."""

    kind = ExecutorKind.PROCESS

    def __init__(self, size: int, settings: CampaignSettings, emit: Observer, *,
                 query_timeout: float | None, start_timeout: float = START_SECONDS,
                 recycle: RecyclePolicy | None = None) -> None:
        self.size = size
        self._recycle = RecyclePolicy.from_environment() if recycle is None else recycle
        self._settings = settings
        self._emit = emit
        self._timeout = query_timeout if query_timeout and query_timeout > 0 else None
        self._start_timeout = start_timeout
        self._workers: list[_Worker] = []
        self._attempts: dict[int, int] = {}
        self._context = pool_context()
        # one selector for the pool's life: multiprocessing.connection.wait builds one per call, which
        # cost the parent a third of its time per query here
        self._selector = selectors.DefaultSelector()
        self._swept = time.monotonic()
        self._recent: deque[float] = deque(maxlen=RECENT)  # the last query times, in seconds
        self.gone: Fallback | None = None  # set when no worker is left: the campaign goes on in-process

    @property
    def workers(self) -> int:
        """Workers alive now (starting or ready)."""
        return len(self._workers)

    def start(self) -> None:
        """Adopt spares and start the other workers; those that cannot start are a fallback to fewer, none is
        ``NoWorkers``. Spares beyond ``size`` are ended (:mod:`~templ_pipeline.campaign.spares`)."""
        for spare in spares.take(self.size):
            try:
                spare.connection.send(self._settings)  # waits, at most, for the spare's imports to end
            except OSError:
                _end(_Worker(spare.process, spare.connection, spare.started), 0.0)
                continue
            self._add(_Worker(spare.process, spare.connection, spare.started))
        spares.end()
        self._grow(self.size - len(self._workers), "starting the campaign's workers")
        if self.gone is not None:
            raise NoWorkers(self.gone)

    def idle(self, ahead: bool = False) -> list[_Worker]:
        """Ready workers without a query; with ``ahead``, a worker once per place it has for one more (up to
        :data:`DEPTH`), the workers with the fewest first."""
        depth = DEPTH if ahead else 1
        open_ = [worker for worker in self._workers if worker.ready and worker.retiring is None]
        return [worker for held in range(depth) for worker in open_ if len(worker.tasks) <= held]

    def starting(self) -> bool:
        """Whether some worker has not reported ready yet."""
        return any(not worker.ready for worker in self._workers)

    def dispatch(self, worker: _Worker, task: QueryTask) -> bool:
        """Hand ``task`` to ``worker`` (to run now, or next when it has a query); False when the worker is gone
        (the task is not its)."""
        payload = bytes(ForkingPickler.dumps(task))
        worker.tasks.append(_Held(task, payload, len(payload)))
        if not self._send(worker):
            worker.tasks.pop()
            return False
        if len(worker.tasks) == 1:
            worker.since = time.monotonic()
            self._started(task)
        return True

    def wait(self, timeout: float) -> Arrivals:
        """Wait up to ``timeout`` seconds for outcomes; handle dead, late and unready workers.

        Once something arrived, it lingers while every worker has a query waiting (:meth:`_linger`)."""
        arrivals = Arrivals()
        if not self._workers:
            return arrivals
        exited: list[_Worker] = []
        ready = self._selector.select(timeout=min(timeout, self._next_deadline()))
        rounds = 1
        if ready and (linger := self._linger()) > 0:
            time.sleep(linger)
            ready, rounds = self._selector.select(timeout=0), DEPTH  # what came meanwhile, a message a round
        for _ in range(rounds):
            for key, _ in ready:
                worker, is_connection = key.data
                if worker not in self._workers:
                    continue
                if is_connection:
                    self._receive(worker, arrivals)
                elif worker not in exited:
                    exited.append(worker)  # its sentinel: the process has ended
            if rounds > 1 and not (ready := self._selector.select(timeout=0)):
                break
        # Asking each worker (waitpid) on every wake-up cost the parent two system calls per worker
        # and query; the sentinels say who ended, and a sweep now and then is the safety net.
        now = time.monotonic()
        if now - self._swept >= SWEEP_SECONDS:
            self._swept = now
            exited = list(self._workers)
        for worker in exited:
            if worker in self._workers and not worker.process.is_alive():  # type: ignore[attr-defined]
                self._lost(worker, arrivals)
        self._enforce_deadlines(arrivals)
        return arrivals

    def _linger(self) -> float:
        """Seconds to wait for more outcomes before handling those in: while every ready worker has a query
        waiting behind the one it runs (none would idle), a share of the median recent scored query per waiting
        query, never past a time limit; 0 otherwise (a worker starting, or one with nothing waiting)."""
        if not self._recent or self.starting():
            return 0.0
        waiting = min((len(worker.tasks) - 1 for worker in self._workers), default=0)
        if waiting < 1:
            return 0.0
        return min(MAX_LINGER, LINGER_SHARE * statistics.median(self._recent) * waiting, self._next_deadline())

    def shutdown(self, *, terminate: bool = False) -> None:
        """Stop every worker within a bounded time; ``terminate`` ends them at once (queries abandoned)."""
        workers, self._workers = self._workers, []
        for worker in workers:
            self._unregister(worker)
            if terminate:
                worker.process.terminate()  # type: ignore[attr-defined]
            else:
                try:
                    worker.connection.send(None)
                except OSError:
                    pass
        deadline = time.monotonic() + (1.0 if terminate else STOP_SECONDS)
        for worker in workers:
            _end(worker, max(0.0, deadline - time.monotonic()))
        self._selector.close()

    # --- inside ---------------------------------------------------------------------------------

    def _grow(self, count: int, why: str) -> None:
        """Start ``count`` workers; a refused start is a fallback event (fewer workers, or NoWorkers)."""
        for _ in range(count):
            before = pids_refusals()
            try:
                process, connection = start_worker(self._context, serve, self._settings)
            except (OSError, RuntimeError) as error:
                self._refused(error, before, why)
                return
            self._add(_Worker(process, connection, time.monotonic()))

    def _add(self, worker: _Worker) -> None:
        self._workers.append(worker)
        self._selector.register(worker.connection, selectors.EVENT_READ, (worker, True))
        self._selector.register(worker.process.sentinel, selectors.EVENT_READ, (worker, False))  # type: ignore[attr-defined]

    def _unregister(self, worker: _Worker) -> None:
        for handle in (worker.connection, worker.process.sentinel):  # type: ignore[attr-defined]
            try:
                self._selector.unregister(handle)
            except (KeyError, ValueError):
                pass

    def _refused(self, error: BaseException, refusals_before: int | None, why: str) -> None:
        cause = classify_failure(error, refusals_before)
        reason = start_failure_reason(ExecutorKind.PROCESS, error)
        alive = len(self._workers)
        to_kind = ExecutorKind.PROCESS if alive else ExecutorKind.SEQUENTIAL
        detail = f"{why}: a worker could not start ({error}); going on with {alive} worker(s)"
        fallback = Fallback(ExecutorKind.PROCESS, to_kind, reason, cause, detail, error)
        self._emit(fallback)
        self.size = alive
        if not alive:
            self.gone = fallback

    def _receive(self, worker: _Worker, arrivals: Arrivals, *, drain: bool = False) -> None:
        """Take one message the selector found waiting (``drain``: every message left, for a dead worker)."""
        try:
            # Connection.poll builds a selector per call; one message per select is cheaper, and
            # a second message waiting makes the next select return at once
            while not drain or worker.connection.poll(0):
                message = worker.connection.recv()
                if isinstance(message, Finished) and worker.tasks:
                    task = worker.tasks.popleft().task
                    arrivals.finished.append((task, message.outcome))
                    self._attempts.pop(task.index, None)
                    if not drain:
                        self._next(worker, message, arrivals)
                    elif worker.tasks:  # it started the next before it died, as far as anyone can tell
                        self._started(worker.tasks[0].task)
                elif isinstance(message, tuple) and message and message[0] == READY:
                    worker.ready = True
                if not drain:
                    return
        except (EOFError, OSError):
            pass  # the worker is gone: its sentinel says so, and _lost handles it

    def _next(self, worker: _Worker, finished: Finished, arrivals: Arrivals) -> None:
        """After an outcome of a live worker: its next query started when the outcome was sent; the rest of its
        queries go into its pipe as they fit; it is recycled if the policy says so."""
        if finished.outcome.status == QueryStatus.OK:  # a refused query takes no time: it says nothing of the next
            self._recent.append(finished.outcome.seconds)
        if worker.tasks:
            worker.since = min(finished.ended, time.monotonic())
            self._started(worker.tasks[0].task)
            self._send(worker)
        self._count(worker, finished.resident, arrivals)

    def _send(self, worker: _Worker) -> bool:
        """Send ``worker`` its queries not sent yet, in order, while the ones waiting fit in its pipe; False when
        the worker is gone."""
        waiting = 0  # bytes sent behind the query it runs, in its pipe
        for position, held in enumerate(worker.tasks):
            if held.payload is None:
                waiting += held.size if position else 0
                continue
            if position and waiting + held.size > QUEUE_BYTES:
                return True  # the rest are sent as the worker takes what waits
            try:
                worker.connection.send_bytes(held.payload)
            except (BrokenPipeError, ConnectionResetError, OSError):
                return False
            held.payload = None
            waiting += held.size if position else 0
        return True

    def _started(self, task: QueryTask) -> None:
        """``task`` is the one its worker runs now: one more run of it."""
        self._attempts[task.index] = self._attempts.get(task.index, 0) + 1

    def _count(self, worker: _Worker, resident: int, arrivals: Arrivals) -> None:
        """A query finished on ``worker``, which now holds ``resident`` bytes: recycle it if the policy says so
        (once the queries it has already been sent are done; those not sent yet run elsewhere)."""
        worker.queries += 1
        if worker.queries == 1:
            worker.baseline = resident
        why = worker.retiring or self._recycle.reason(worker.queries, worker.baseline, resident)
        if why is None:
            return
        if worker.retiring is None:
            arrivals.retry.extend(held.task for held in worker.tasks if held.payload is not None)
            worker.tasks = deque(held for held in worker.tasks if held.payload is None)
            worker.retiring = why
            try:
                worker.connection.send(None)  # after what it was sent: it returns from serve once those are done
            except OSError:
                pass
        if not worker.tasks:
            self._retire(worker)

    def _retire(self, worker: _Worker) -> None:
        self._drop(worker)
        self._emit_replaced(ReplacementReason.RECYCLED, f"worker {worker.pid} recycled: {worker.retiring}")

    def _lost(self, worker: _Worker, arrivals: Arrivals) -> None:
        """A worker exited on its own: run its query again (or fail it), and start another worker."""
        self._receive(worker, arrivals, drain=True)  # an outcome sent just before it died still counts
        if worker.retiring is not None and not worker.tasks:
            self._retire(worker)  # it ended after its last query, as told
            return
        code = worker.process.exitcode  # type: ignore[attr-defined]
        self._drop(worker)
        task = worker.task
        arrivals.retry.extend(worker.waiting())  # never started: not a run
        if task is None and not worker.ready:
            self._refused(RuntimeError(f"worker {worker.pid} exited with code {code} while starting"), None,
                          "a new worker exited before it was ready")
            return
        detail = f"worker {worker.pid} exited with code {code}"
        if task is not None:
            if self._attempts.get(task.index, 0) < MAX_ATTEMPTS:
                arrivals.retry.append(task)
                detail += f" while running query {task.query_id}; it runs again on another worker"
            else:
                self._attempts.pop(task.index, None)
                arrivals.finished.append((task, failed(task.index, QueryFailureReason.WORKER_LOST,
                                                       f"{detail} while running it, after {MAX_ATTEMPTS} runs",
                                                       smiles=task.smiles or "")))
                detail += f" while running query {task.query_id} (given up after {MAX_ATTEMPTS} runs)"
        self._emit_replaced(ReplacementReason.WORKER_LOST, detail)

    def _enforce_deadlines(self, arrivals: Arrivals) -> None:
        now = time.monotonic()
        for worker in list(self._workers):
            if worker.task is not None and self._timeout is not None and now - worker.since > self._timeout:
                task = worker.task
                seconds = now - worker.since
                self._drop(worker, kill=True)
                self._attempts.pop(task.index, None)
                arrivals.retry.extend(worker.waiting())  # never started: not a run
                arrivals.finished.append((task, failed(
                    task.index, QueryFailureReason.TIMEOUT,
                    f"still running after {seconds:.1f} s (limit {self._timeout:g} s); its worker was ended",
                    smiles=task.smiles or "", seconds=seconds)))
                self._emit_replaced(ReplacementReason.TIMEOUT,
                                    f"query {task.query_id} ran over {self._timeout:g} s on worker {worker.pid}")
            elif not worker.ready and now - worker.started > self._start_timeout:
                self._drop(worker, kill=True)
                self._refused(TimeoutError(f"worker {worker.pid} was not ready after {self._start_timeout:g} s"),
                              None, "a new worker did not become ready")

    def _emit_replaced(self, reason: ReplacementReason, detail: str) -> None:
        """Start a worker in place of one that was dropped, and say so."""
        self._emit(WorkerReplaced(self.kind, reason, detail))
        self._grow(1, f"replacing a worker ({reason})")

    def _drop(self, worker: _Worker, *, kill: bool = False) -> None:
        if worker in self._workers:
            self._workers.remove(worker)
        self._unregister(worker)
        if kill:
            worker.process.kill()  # type: ignore[attr-defined]
        _end(worker, 1.0)

    def _next_deadline(self) -> float:
        """Seconds until the earliest query time limit or start limit runs out (at least 0)."""
        now = time.monotonic()
        deadlines = [worker.since + self._timeout - now for worker in self._workers
                     if worker.task is not None and self._timeout is not None]
        deadlines += [worker.started + self._start_timeout - now for worker in self._workers if not worker.ready]
        return max(0.0, min(deadlines, default=3600.0))


def _end(worker: _Worker, grace: float) -> None:
    """Wait up to ``grace`` for the worker to exit, then terminate it, then kill it; close its pipe."""
    end_process(worker.process, grace)  # type: ignore[arg-type]
    worker.connection.close()


def retry_first(retry: Iterable[QueryTask], queue: deque[QueryTask]) -> None:
    """Put queries to run again at the front of ``queue``, in their original order."""
    for task in sorted(retry, key=lambda task: task.index, reverse=True):
        queue.appendleft(task)
