"""The monitored executor factory: pools sized from headroom, and a fallback ladder.

``get_executor(n, task_type)`` asks the thread resource manager how many workers
the kernel's limits allow, plans a ladder of rungs (process pool, thread pool
where threads help, fewer workers, sequential) and runs batches down that ladder:
a rung whose backend cannot start, refuses work or breaks mid-run hands its
unfinished batches to the next rung. Finished batches are yielded exactly once,
so nothing is lost and nothing is counted twice, whichever rung ran them.

``executor="dask"`` puts a Dask rung on top (``templ_pipeline.core.dask_backend``):
a scheduler you name, or a LocalCluster sized by the same grant, connected when
the rung first runs. An unreachable scheduler is a fallback to the local ladder.

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
from typing import Any

from templ_pipeline.core.backend import STALL_SECONDS, Backend, PoolBackend, RungFailure
from templ_pipeline.core.batch import BatchResult, BatchTask, score_batch
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
    LimitsObserved,
    Observer,
    ReductionReason,
    TaskType,
    WorkersGranted,
    WorkersReduced,
    cause_of,
    no_room_reason,
    values,
)
from templ_pipeline.core.pools import POOLS, PoolRegistry
from templ_pipeline.core.sizing import WorkPlan, insists_on_workers, plan_workers


@dataclass(frozen=True)
class TaskProfile:
    """How a task type uses workers."""

    # AlignMol holds the GIL: measured here, two threads score 395 conformers/s
    # against 407/s for one thread alone (benchmarks/bench_select_best.py reports
    # it on every run). A thread pool would cost threads and buy nothing, so for
    # scoring the rung below the process pool is "fewer processes", then sequential.
    threads_help: bool = False


TASK_PROFILES: dict[str, TaskProfile] = {
    TaskType.SCORING: TaskProfile(threads_help=False),
}

# Caps used when the thread manager cannot be asked: a few workers start almost anywhere.
CAP_MANAGER_UNAVAILABLE = 4
CAP_MANAGER_FAILED = 2

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


@dataclass(frozen=True)
class Grant:
    """Workers granted for a request, and why fewer when fewer."""

    requested: int
    granted: int
    reason: str | None = None
    detail: str = ""
    headroom: int | None = None
    answer: Any = None  # the thread manager's WorkerGrant, whose ledger claim release_grant gives back

    def event(self, task_type: TaskType) -> WorkersGranted | WorkersReduced:
        """The grant as an event: a reduction when fewer were granted than requested."""
        if self.granted >= self.requested:
            return WorkersGranted(task_type, self.requested, self.granted)
        reason = ReductionReason(self.reason) if self.reason in ReductionReason._value2member_map_ else (
            ReductionReason.MANAGER_FAILED)
        return WorkersReduced(task_type, self.requested, self.granted, reason, self.detail, self.headroom)


def plan_ladder(workers: int, profile: TaskProfile, in_daemon: bool) -> list[Rung]:
    """The rungs to try, best first; the last one is always sequential."""
    rungs: list[Rung] = []
    if workers >= 2:
        kinds = ([] if in_daemon else [ExecutorKind.PROCESS]) + ([ExecutorKind.THREAD] if profile.threads_help else [])
        for kind in kinds:
            rungs.append(Rung(kind, workers))
        if kinds:
            count = workers // 2
            while count >= 2:
                rungs.append(Rung(kinds[-1], count))
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


def grant_workers(requested: int, task_type: str, executor_kind: str) -> Grant:
    """Ask the thread resource manager; cap at 4, then 2, when it cannot answer."""
    try:
        from templ_pipeline.core.thread_manager import get_thread_manager
    except Exception as exc:  # the manager is optional: never let it stop the run
        granted = min(requested, CAP_MANAGER_UNAVAILABLE)
        return Grant(requested, granted, ReductionReason.MANAGER_UNAVAILABLE, f"thread manager not importable: {exc}")
    try:
        answer = get_thread_manager().claim_workers(requested, task_type, executor_kind=executor_kind)
    except Exception as exc:
        granted = min(requested, CAP_MANAGER_FAILED)
        return Grant(requested, granted, ReductionReason.MANAGER_FAILED, f"thread manager failed: {exc}")
    return Grant(requested, answer.granted, answer.reason, answer.detail, answer.headroom, answer)


def release_grant(grant: Grant) -> None:
    """Give back the shared-ledger reservation of ``grant``: its workers have started, or never will."""
    if grant.answer is None or grant.answer.claim is None:
        return
    try:
        from templ_pipeline.core.thread_manager import get_thread_manager

        get_thread_manager().release(grant.answer)
    except Exception:  # an expired claim is reclaimed by the next grant anyway
        pass


def observe_limits(emit: Observer, context: str) -> None:
    """Emit the manager's (cached) snapshot of the limits, and log thread status at debug level."""
    try:
        from templ_pipeline.core.thread_manager import get_thread_manager, log_thread_status

        emit(LimitsObserved(get_thread_manager().snapshot(), context))
        log_thread_status(context)
    except Exception:  # best effort; grant_workers already reported a broken manager
        pass


def classify_failure(error: BaseException, refusals_before: int | None = None) -> FallbackCause:
    """The limit (or seccomp) that refused a thread or process start, per the manager.

    ``refusals_before`` is the pids controller's refusal count read before the attempt
    (:func:`pids_refusals`): a rise since then names the pids cgroup.
    """
    try:
        from templ_pipeline.core.thread_manager import classify_start_failure

        return FallbackCause(classify_start_failure(error, refusals_before=refusals_before).cause)
    except Exception:
        return FallbackCause.UNKNOWN


def pids_refusals() -> int | None:
    """The pids controller's count of refused forks in this cgroup now (None when unknown)."""
    try:
        from templ_pipeline.core.thread_manager import get_thread_manager

        return get_thread_manager().pids_refusals()
    except Exception:
        return None


class MonitoredExecutor:
    """Runs batches for one call down the fallback ladder, reporting to ``observers``; a context manager.

    Construction asks for the grant and plans the ladder (``workers`` is known at
    once); nothing is started, connected or reported until :meth:`run`, so
    observers subscribed before it (:meth:`subscribe`) hear every event.
    """

    def __init__(
        self,
        requested: int,
        task_type: str = TaskType.SCORING,
        *,
        registry: PoolRegistry = POOLS,
        fn: Callable[[BatchTask], BatchResult] = score_batch,
        executor: str = "auto",
        scheduler: str | None = None,
        stall_timeout: float = STALL_SECONDS,
        observers: Iterable[Observer] = (),
        conformers: int | None = None,
        exact_workers: bool = False,
        worker_timeout: float | None = None,
    ) -> None:
        self.requested = requested
        self.task_type = TaskType(task_type)
        self._fn = fn
        self._emit = Emitter(observers)
        self._refusals_before: int | None = None
        profile = TASK_PROFILES.get(self.task_type, TaskProfile())
        in_daemon = bool(multiprocessing.current_process().daemon)
        dask = executor == "dask"
        # a Dask cluster's size is the cluster's: work-aware sizing is for the local ladder
        work = WorkPlan(requested) if dask else plan_workers(
            requested, self.task_type, exact=insists_on_workers(exact_workers), conformers=conformers,
            warm=registry.warm_sizes(ExecutorKind.PROCESS))
        wanted = work.workers
        self.grant = (
            grant_workers(wanted, task_type, _grant_kind(dask, scheduler, in_daemon))
            if wanted > 1 else Grant(wanted, wanted)
        )
        self._rungs = plan_ladder(self.grant.granted, profile, in_daemon)
        self._backends: dict[ExecutorKind, Backend] = {
            kind: PoolBackend(kind, registry, self._emit, stall_timeout)
            for kind in (ExecutorKind.PROCESS, ExecutorKind.THREAD)
        }
        self._planned: list[ExecutorEvent] = [*work.reductions, self.grant.event(self.task_type)]
        if dask:
            self._plan_dask(scheduler, in_daemon, worker_timeout)
        if (wanted > 1 or dask) and self._rungs[0].kind == ExecutorKind.SEQUENTIAL:
            daemon_bound = in_daemon and (self.grant.granted >= 2 or dask)
            reason = FallbackReason.DAEMON_PROCESS if daemon_bound else no_room_reason(self.grant.reason)
            cause = FallbackCause.NONE if daemon_bound else cause_of(self.grant.reason)
            from_kind = ExecutorKind.DASK if dask else ExecutorKind.PROCESS
            self._planned.append(Fallback(from_kind, ExecutorKind.SEQUENTIAL, reason, cause, self.grant.detail))
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

    def __enter__(self) -> MonitoredExecutor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Pools stay alive for the next call (``PoolRegistry`` shuts them down at exit); the grant's
        ledger reservation is given back."""
        release_grant(self.grant)

    def run(self, tasks: Iterable[BatchTask]) -> Iterator[BatchResult]:
        """Yield each batch's result once, walking down the ladder on failure."""
        for event in self._planned:
            self._emit(event)
        self._planned = []
        pending = {task.index: task for task in tasks}
        batches = len(pending)
        try:
            while pending:
                rung = self.rung
                if rung.kind == ExecutorKind.SEQUENTIAL:
                    release_grant(self.grant)
                    self._note_kind(rung.kind)
                    for index in sorted(pending):
                        yield self._run_here(pending.pop(index))
                    break
                try:
                    yield from self._run_on(rung, pending)
                except RungFailure as failure:
                    self._step_down(rung, failure)
        finally:
            release_grant(self.grant)
        self._emit(CallDone(self.task_type, self.requested, self.grant.granted, tuple(self.kinds_used), batches))

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
            release_grant(self.grant)  # started (its tasks are counted by the kernel now), or failed
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
    worker_timeout: float | None = None,
) -> MonitoredExecutor:
    """A monitored executor for one call: sized for the work and from headroom, with its fallback ladder.

    ``conformers`` is the size of the work: with no warm pool, work too small to
    repay a cold one runs here (:mod:`templ_pipeline.core.sizing`), and no more
    workers start than the CPUs this process may use, unless ``exact_workers``.
    ``executor="dask"`` runs on the Dask scheduler at ``scheduler`` (default
    ``$DASK_SCHEDULER_ADDRESS``), else on a LocalCluster of the granted size; a scheduler
    without a worker for ``worker_timeout`` seconds (default ``$TEMPL_DASK_WORKER_TIMEOUT``,
    else 60) is a ``no_workers`` fallback to the local ladder. ``observers`` hear its events
    (``select_best`` passes telemetry's and its report's).
    """
    validate_executor(executor, scheduler)
    return MonitoredExecutor(n_workers, task_type, executor=executor, scheduler=scheduler, observers=observers,
                             conformers=conformers, exact_workers=exact_workers, worker_timeout=worker_timeout)


def shutdown_pools(*, terminate: bool = False) -> None:
    """Shut down every pool this process started (also done at exit); ``terminate`` ends workers at once."""
    POOLS.shutdown_all(terminate=terminate)


def shutdown_dask() -> None:
    """Close every Dask client and LocalCluster this process opened (also done at exit)."""
    backend = sys.modules.get("templ_pipeline.core.dask_backend")
    if backend is not None:
        backend.SESSIONS.shutdown_all()
