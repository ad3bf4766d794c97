"""The monitored executor factory: pools sized from headroom, and a fallback ladder.

``get_executor(n, task_type)`` sizes the workers for the work and asks how many the
kernel's limits allow (:func:`~templ_pipeline.core.grants.grant_for_work`), plans a
ladder of rungs (process pool, fewer processes, sequential) and runs batches down it:
a rung whose backend cannot start, refuses work or breaks mid-run hands its
unfinished batches to the next rung. Finished batches are yielded exactly once,
so nothing is lost and nothing is counted twice, whichever rung ran them.

``executor="dask"`` puts a Dask rung on top (``templ_pipeline.core.dask_backend``):
a scheduler you name, or a LocalCluster sized by the same grant, connected when
the rung first runs. An unreachable scheduler is a fallback to the local ladder.

A scoring call too small to repay a cold pool alone, that the recent calls say is part of
a stream (:mod:`templ_pipeline.core.sizing`), does not wait for the pool: the pool starts
in the background (:meth:`~templ_pipeline.core.pools.PoolRegistry.start_in_background`)
and the call scores in the caller, a ``pool_starting`` reduction saying so; the first
call that finds the pool ready leases it. A background start that fails is a
``Fallback`` of the next call, as a refused start of its own would be.

The executor reports what it decides and what happens as typed events
(``templ_pipeline.core.events``) to the observers it is given; it knows nothing
of metrics, spans or logs. Building one does no process or network I/O.
"""

from __future__ import annotations

import multiprocessing
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import partial

from templ_pipeline.core.backend import STALL_SECONDS, Backend, PoolBackend, RungFailure, start_failure_reason
from templ_pipeline.core.batch import BatchResult, BatchTask, align_batch, with_positions
from templ_pipeline.core.events import (
    BatchDone,
    CallDone,
    Emitter,
    ExecutorCreated,
    ExecutorEvent,
    ExecutorKind,
    Fallback,
    FallbackCause,
    FallbackReason,
    Observer,
    ReductionReason,
    TaskType,
    WorkersReduced,
    cause_of,
    no_room_reason,
    values,
)
from templ_pipeline.core.grants import classify_failure, grant_for_work, observe_limits, pids_refusals, release_grant
from templ_pipeline.core.pools import POOLS, BackgroundStart, PoolRegistry
from templ_pipeline.core.recent_work import NO_RECENT_WORK, SCORING_HISTORY, WorkHistory
from templ_pipeline.core.sizing import insists_on_workers, repays_cold_pool, stream_note


class ExecutorChoice(StrEnum):
    """Values of ``executor=`` (``--executor``): the local ladder (auto, process), or Dask on top of it."""

    AUTO = "auto"
    PROCESS = "process"
    DASK = "dask"


EXECUTOR_CHOICES: tuple[str, ...] = values(ExecutorChoice)


@dataclass(frozen=True)
class Rung:
    """One step of the ladder: an executor kind and its worker count."""

    kind: ExecutorKind
    workers: int


def plan_ladder(workers: int, in_daemon: bool) -> list[Rung]:
    """The rungs to try, best first: the process pool, then half as many processes down to 2, then sequential.

    No rung is a thread pool: AlignMol holds the GIL, and measured here two threads score
    395 conformers/s against 407/s for one thread alone (``benchmarks/bench_select_best.py``
    reports it on every run), so threads would cost tasks and buy nothing. A daemon process
    may not start children: its only rung is sequential.
    """
    rungs: list[Rung] = []
    if workers >= 2 and not in_daemon:
        count = workers
        while count >= 2:
            rungs.append(Rung(ExecutorKind.PROCESS, count))
            count //= 2
    rungs.append(Rung(ExecutorKind.SEQUENTIAL, 1))
    return rungs


def _grant_kind(dask: bool, scheduler: str | None, in_daemon: bool) -> str:
    """The cost model of the workers this process starts: a LocalCluster's, a pool's, or threads in a daemon."""
    if in_daemon:
        return "thread"
    if dask:
        from templ_pipeline.core.dask_backend import scheduler_address

        if scheduler_address(scheduler) is None:
            return "dask"  # a LocalCluster: nannies in this process, worker processes, its event loops
    return "process"


class MonitoredExecutor:
    """Runs batches for one call down the fallback ladder, reporting to ``observers``; a context manager.

    Construction asks for the grant and plans the ladder (``workers`` is known at
    once); nothing is started, connected or reported until :meth:`run`, so
    observers subscribed before it (:meth:`subscribe`) hear every event. A scoring
    call's ``conformers`` are noted in ``history``, whose recent calls count with
    them in the sizing (a loop of small calls gets its pool); when the pool is cold and
    the call alone would not repay its start, the pool starts in the background and the
    call runs in the caller.
    """

    def __init__(
        self,
        requested: int,
        task_type: str = TaskType.SCORING,
        *,
        registry: PoolRegistry = POOLS,
        fn: Callable[[BatchTask], BatchResult] = align_batch,
        executor: str = "auto",
        scheduler: str | None = None,
        stall_timeout: float = STALL_SECONDS,
        observers: Iterable[Observer] = (),
        conformers: int | None = None,
        exact_workers: bool = False,
        worker_timeout: float | None = None,
        history: WorkHistory = SCORING_HISTORY,
    ) -> None:
        self.requested = requested
        self.task_type = TaskType(task_type)
        self._fn = fn
        self._emit = Emitter(observers)
        self._refusals_before: int | None = None
        in_daemon = bool(multiprocessing.current_process().daemon)
        dask = executor == "dask"
        recent = NO_RECENT_WORK
        if self.task_type == TaskType.SCORING and conformers is not None:
            recent = history.record(conformers)
        # a Dask cluster's size is the cluster's: work-aware sizing is for the local ladder
        warm = registry.warm_sizes(ExecutorKind.PROCESS)
        work = grant_for_work(requested, self.task_type, _grant_kind(dask, scheduler, in_daemon),
                              exact_workers=dask or exact_workers, conformers=conformers, warm=warm, recent=recent)
        wanted = work.grant.requested
        self.grant = work.grant
        self._grant_held = True  # False once a background start owns the grant (it releases it when done)
        self._registry = registry
        self._rungs = plan_ladder(self.grant.granted, in_daemon)
        self._backends: dict[ExecutorKind, Backend] = {
            ExecutorKind.PROCESS: PoolBackend(ExecutorKind.PROCESS, registry, self._emit, stall_timeout)}
        self._planned: list[ExecutorEvent] = list(work.events)
        if dask:
            self._plan_dask(scheduler, in_daemon, worker_timeout)
        if (wanted > 1 or dask) and self._rungs[0].kind == ExecutorKind.SEQUENTIAL:
            daemon_bound = in_daemon and (self.grant.granted >= 2 or dask)
            reason = FallbackReason.DAEMON_PROCESS if daemon_bound else no_room_reason(self.grant.reason)
            cause = FallbackCause.NONE if daemon_bound else cause_of(self.grant.reason)
            from_kind = ExecutorKind.DASK if dask else ExecutorKind.PROCESS
            self._planned.append(Fallback(from_kind, ExecutorKind.SEQUENTIAL, reason, cause, self.grant.detail))
        self._background: Rung | None = None
        self._why_background = ""
        top = self._rungs[0]
        if (top.kind == ExecutorKind.PROCESS and self.task_type == TaskType.SCORING and not dask
                and conformers is not None and top.workers not in warm and not insists_on_workers(exact_workers)
                and not repays_cold_pool(top.workers, conformers)):
            self._background = top  # the stream's pool: started in the background, this call runs here
            self._rungs = [Rung(ExecutorKind.SEQUENTIAL, 1)]
            self._why_background = stream_note(top.workers, conformers, recent)
        self._position = 0
        self.kinds_used: list[ExecutorKind] = []

    def subscribe(self, observer: Observer) -> None:
        """Add an observer; it hears every event from the next :meth:`run` on."""
        self._emit.subscribe(observer)

    def unsubscribe(self, observer: Observer) -> None:
        self._emit.unsubscribe(observer)

    @property
    def rung(self) -> Rung:
        return self._rungs[self._position]

    @property
    def workers(self) -> int:
        return self.rung.workers

    @property
    def batch_workers(self) -> int:
        """The workers to size the call's batches for: the rung's, or those of the pool starting in the background
        (it takes the batches left once it is ready, and they must be enough to keep all its workers busy)."""
        return self._background.workers if self._background is not None else self.rung.workers

    def __enter__(self) -> MonitoredExecutor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Pools stay alive for the next call (``PoolRegistry`` shuts them down at exit); the grant's
        ledger reservation is given back (a pool starting in the background gives it back when started)."""
        self._release_grant()

    def run(self, tasks: Iterable[BatchTask]) -> Iterator[BatchResult]:
        """Yield each batch's result once, walking down the ladder on failure."""
        for event in self._planned:
            self._emit(event)
        self._planned = []
        self._report_background_failure()
        if self._background is not None:
            self._start_in_background(self._background)
        pending = {task.index: task for task in tasks}
        batches = len(pending)
        try:
            while pending:
                rung = self.rung
                if rung.kind == ExecutorKind.SEQUENTIAL:
                    self._release_grant()
                    self._note_kind(rung.kind)
                    for index in sorted(pending):
                        yield self._run_here(pending.pop(index))
                        if pending and self._background_pool_ready():
                            break  # the pool started for this stream is up: it takes the batches left
                    else:
                        break
                    assert self._background is not None
                    self._rungs, self._position = plan_ladder(self._background.workers, in_daemon=False), 0
                    continue
                try:
                    yield from self._run_on(rung, pending)
                except RungFailure as failure:
                    self._step_down(rung, failure)
        finally:
            self._release_grant()
        self._emit(CallDone(self.task_type, self.requested, self.grant.granted, tuple(self.kinds_used), batches))

    def _background_pool_ready(self) -> bool:
        """Whether the pool this call started (or found starting) in the background is ready now."""
        pool = self._background
        return pool is not None and pool.workers in self._registry.warm_sizes(pool.kind)

    def _release_grant(self) -> None:
        if self._grant_held:
            release_grant(self.grant)

    def _start_in_background(self, pool: Rung) -> None:
        """Start the stream's pool without waiting for it, and say so; this call runs in the caller.

        A pool that became ready since the sizing is used at once. A thread that
        cannot start is the ``thread_start_failed`` fallback a pool's own refused
        thread would be: the call stays in the caller, and nothing was started.
        """
        refusals_before = pids_refusals()
        self._grant_held = False
        try:
            found = self._registry.start_in_background(pool.kind, pool.workers, preload=self._fn,
                                                       refusals_before=refusals_before,
                                                       on_done=partial(release_grant, self.grant))
        except RuntimeError as error:
            self._grant_held = True
            self._emit(Fallback(pool.kind, ExecutorKind.SEQUENTIAL, FallbackReason.THREAD_START_FAILED,
                                classify_failure(error, refusals_before),
                                f"the thread that would start the pool of {pool.workers} {pool.kind} workers in the "
                                f"background could not start ({error}): this call ran in the caller", error))
            return
        if found != BackgroundStart.STARTED:
            self._grant_held = True
        if found == BackgroundStart.READY:
            self._rungs = plan_ladder(pool.workers, in_daemon=False)
            return
        state = (f"the pool of {pool.workers} {pool.kind} workers is starting in the background"
                 if found == BackgroundStart.STARTED
                 else f"a pool of {pool.kind} workers is still starting in the background (an earlier call started it)")
        self._emit(WorkersReduced(self.task_type, pool.workers, 1, ReductionReason.POOL_STARTING,
                                  f"{state}; this call runs in the caller until the pool is ready, and the pool "
                                  f"takes the batches left then. {self._why_background}"))

    def _report_background_failure(self) -> None:
        """The ``Fallback`` of a pool that failed to start in the background since the last call."""
        failure = self._registry.take_start_failure(ExecutorKind.PROCESS)
        if failure is None:
            return
        kind = ExecutorKind(failure.kind)
        reason = start_failure_reason(kind, failure.error)
        cause = (FallbackCause.NONE if reason == FallbackReason.BROKEN_POOL
                 else classify_failure(failure.error, failure.refusals_before))
        self._emit(Fallback(kind, ExecutorKind.SEQUENTIAL, reason, cause,
                            f"the pool of {failure.workers} {kind} workers started in the background could not "
                            f"start ({failure.error}): the call that started it ran in the caller", failure.error))

    def _plan_dask(self, scheduler: str | None, in_daemon: bool, worker_timeout: float | None) -> None:
        """Put the dask rung first: a named scheduler, or a LocalCluster sized by the grant.

        Nothing connects here: the rung's backend connects when it first runs.
        """
        from templ_pipeline.core.dask_backend import DaskBackend, scheduler_address

        address = scheduler_address(scheduler)
        if address is None and (in_daemon or self.grant.granted < 1):
            return  # no LocalCluster here: the daemon/no-headroom fallback names the reason
        self._backends[ExecutorKind.DASK] = DaskBackend(address, self._emit, worker_timeout)
        self._rungs.insert(0, Rung(ExecutorKind.DASK, max(1, self.grant.granted)))

    def _run_on(self, rung: Rung, pending: dict[int, BatchTask]) -> Iterator[BatchResult]:
        """Run ``pending`` on the rung's backend; finished batches leave ``pending`` as they are yielded."""
        self._refusals_before = pids_refusals()
        try:
            lease = self._backends[rung.kind].lease(rung.workers)
        finally:
            self._release_grant()  # started (its tasks are counted by the kernel now), or failed
        self._note_kind(rung.kind)  # the kinds that ran: a rung that could not start is only a fallback
        try:
            self._emit(ExecutorCreated(rung.kind, lease.workers, self.task_type, lease.reused))
            observe_limits(self._emit, f"before {len(pending)} batches on {lease.workers} {rung.kind} workers")
            for result in lease.run([pending[index] for index in sorted(pending)], self._fn):
                yield self._arrived(rung.kind, pending.pop(result.index), result)
        finally:
            lease.release()

    def _run_here(self, task: BatchTask) -> BatchResult:
        """One batch in this thread (it times its own span, as a worker does)."""
        observe_limits(self._emit, f"before batch {task.index}")
        return self._arrived(ExecutorKind.SEQUENTIAL, task, self._fn(task))

    def _arrived(self, kind: ExecutorKind, task: BatchTask, result: BatchResult) -> BatchResult:
        result = with_positions(result)  # the coordinates of an aligned batch are read here, not in the worker
        self._emit(BatchDone(kind, len(task.conf_ids), result))
        observe_limits(self._emit, f"after batch {task.index}")
        return result

    def _step_down(self, rung: Rung, failure: RungFailure) -> None:
        self._position += 1
        no_cause = failure.reason in (FallbackReason.BROKEN_POOL, FallbackReason.SCHEDULER_UNREACHABLE,
                                      FallbackReason.SCHEDULER_LOST, FallbackReason.NO_WORKERS)
        cause = FallbackCause.NONE if no_cause else classify_failure(failure.error, self._refusals_before)
        self._emit(Fallback(rung.kind, self.rung.kind, failure.reason, cause, str(failure.error), failure.error))

    def _note_kind(self, kind: ExecutorKind) -> None:
        if not self.kinds_used or self.kinds_used[-1] != kind:
            self.kinds_used.append(kind)


def validate_executor(executor: str, scheduler: str | None) -> None:
    """The executor choice, checked once at the API boundary (``ValueError`` names what is wrong)."""
    if executor not in EXECUTOR_CHOICES:
        raise ValueError(f"unknown executor {executor!r}: choose one of {', '.join(EXECUTOR_CHOICES)}")
    if scheduler is not None and executor != "dask":
        raise ValueError(f"a scheduler ({scheduler!r}) needs executor='dask', not {executor!r}")
    if executor == "dask":
        import importlib.util

        if importlib.util.find_spec("distributed") is None:
            raise ValueError("executor='dask' needs Dask: pip install 'templ-pipeline[dask]'")


def get_executor(
    n_workers: int, task_type: str = TaskType.SCORING, *, executor: str = "auto", scheduler: str | None = None,
    observers: Sequence[Observer] = (), conformers: int | None = None, exact_workers: bool = False,
    worker_timeout: float | None = None, history: WorkHistory = SCORING_HISTORY,
) -> MonitoredExecutor:
    """A monitored executor for one call: sized for the work and from headroom, with its fallback ladder.

    ``conformers`` is the size of the work: with no warm pool, work too small to
    repay a cold one runs here (:mod:`templ_pipeline.core.sizing`), counting the
    recent calls noted in ``history`` with it (a loop of small calls gets its pool),
    and no more workers start than the CPUs this process may use, unless ``exact_workers``.
    ``executor="dask"`` runs on the Dask scheduler at ``scheduler`` (default
    ``$DASK_SCHEDULER_ADDRESS``), else on a LocalCluster of the granted size; a scheduler
    without a worker for ``worker_timeout`` seconds (default ``$TEMPL_DASK_WORKER_TIMEOUT``,
    else 60) is a ``no_workers`` fallback to the local ladder. ``observers`` hear its events
    (``select_best`` passes telemetry's and its report's).
    """
    validate_executor(executor, scheduler)
    return MonitoredExecutor(n_workers, task_type, executor=executor, scheduler=scheduler, observers=observers,
                             conformers=conformers, exact_workers=exact_workers, worker_timeout=worker_timeout,
                             history=history)


def shutdown_pools(*, terminate: bool = False) -> None:
    """Shut down every pool this process started (also done at exit); ``terminate`` ends workers at once."""
    POOLS.shutdown_all(terminate=terminate)


def shutdown_dask(*, terminate: bool = False) -> None:
    """Close every Dask client and LocalCluster this process opened (also done at exit); ``terminate``: a
    LocalCluster's workers are killed unless they close at once."""
    backend = sys.modules.get("templ_pipeline.core.dask_backend")
    if backend is not None:
        backend.SESSIONS.shutdown_all(terminate=terminate)
