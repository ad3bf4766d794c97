"""The monitored executor factory: pools sized from headroom, and a fallback ladder.

``get_executor(n, task_type)`` asks the thread resource manager how many workers
the kernel's limits allow, plans a ladder of executors (process pool, thread pool
where threads help, fewer workers, sequential) and runs batches down that ladder:
a pool that cannot start, refuses a submit or breaks mid-run hands its unfinished
batches to the next rung. Finished batches are yielded exactly once, so nothing is
lost and nothing is counted twice, whichever rung ran them.

``executor="dask"`` puts a Dask rung on top (``templ_pipeline.core.dask_backend``):
a scheduler you name, or a LocalCluster sized by the same grant. An unreachable
scheduler is a fallback to the local ladder.
"""

from __future__ import annotations

import multiprocessing
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, BrokenExecutor, CancelledError, Executor, Future, wait
from dataclasses import dataclass
from typing import Any

import telemetry
from templ_pipeline.core.batch import BatchResult, BatchTask, score_batch
from templ_pipeline.core.pools import POOLS, PoolRegistry, manager_died


@dataclass(frozen=True)
class TaskProfile:
    """How a task type uses workers."""

    # AlignMol holds the GIL: measured here, two threads score 395 conformers/s
    # against 407/s for one thread alone (benchmarks/bench_select_best.py reports
    # it on every run). A thread pool would cost threads and buy nothing, so for
    # scoring the rung below the process pool is "fewer processes", then sequential.
    threads_help: bool = False


TASK_PROFILES: dict[str, TaskProfile] = {
    "scoring": TaskProfile(threads_help=False),
}

# Caps used when the thread manager cannot be asked: a few workers start almost anywhere.
CAP_MANAGER_UNAVAILABLE = 4
CAP_MANAGER_FAILED = 2

HEALTH_CHECK_SECONDS = 0.5
"""How often the executor looks at a pool's manager thread while it waits for results."""

STALL_SECONDS = 300.0
"""A pool that finishes no batch for this long is taken as broken (a scoring batch takes
well under a second; a worker stuck this long is deadlocked, not slow)."""

#: Values of ``executor=`` (``--executor``): the local ladder (auto, process), or Dask on top of it.
EXECUTOR_CHOICES: tuple[str, ...] = ("auto", "process", "dask")


@dataclass(frozen=True)
class Rung:
    """One step of the ladder: an executor kind and its worker count."""

    kind: str  # "dask" | "process" | "thread" | "sequential"
    workers: int


@dataclass(frozen=True)
class Grant:
    """Workers granted for a request, and why fewer when fewer."""

    requested: int
    granted: int
    reason: str | None = None
    detail: str = ""
    headroom: int | None = None


class PoolFailure(Exception):
    """A rung failed: carries the fallback reason and the original error."""

    def __init__(self, reason: str, error: BaseException) -> None:
        super().__init__(f"{reason}: {error}")
        self.reason = reason
        self.error = error


def plan_ladder(workers: int, profile: TaskProfile, in_daemon: bool) -> list[Rung]:
    """The rungs to try, best first; the last one is always sequential."""
    rungs: list[Rung] = []
    if workers >= 2:
        kinds = ([] if in_daemon else ["process"]) + (["thread"] if profile.threads_help else [])
        for kind in kinds:
            rungs.append(Rung(kind, workers))
        if kinds:
            count = workers // 2
            while count >= 2:
                rungs.append(Rung(kinds[-1], count))
                count //= 2
    rungs.append(Rung("sequential", 1))
    return rungs


def grant_workers(requested: int, task_type: str, executor_kind: str) -> Grant:
    """Ask the thread resource manager; cap at 4, then 2, when it cannot answer."""
    try:
        from templ_pipeline.core.thread_manager import get_thread_manager
    except Exception as exc:  # the manager is optional: never let it stop the run
        granted = min(requested, CAP_MANAGER_UNAVAILABLE)
        return Grant(requested, granted, "manager_unavailable", f"thread manager not importable: {exc}")
    try:
        answer = get_thread_manager().get_safe_worker_count(requested, task_type, executor_kind=executor_kind)
    except Exception as exc:
        granted = min(requested, CAP_MANAGER_FAILED)
        return Grant(requested, granted, "manager_failed", f"thread manager failed: {exc}")
    return Grant(requested, answer.granted, answer.reason, answer.detail, answer.headroom)


def observe_thread_limits(context: str) -> None:
    """Thread gauges from the manager's (cached) snapshot, and a debug line of thread status."""
    try:
        from templ_pipeline.core.thread_manager import get_thread_manager, log_thread_status

        telemetry.update_thread_gauges(get_thread_manager().snapshot())
        log_thread_status(context)
    except Exception:  # the gauges are best effort; grant_workers already reported a broken manager
        pass


def classify_failure(error: BaseException, refusals_before: int | None = None) -> str:
    """The limit (or seccomp) that refused a thread or process start, per the manager.

    ``refusals_before`` is the pids controller's refusal count read before the attempt
    (:func:`pids_refusals`): a rise since then names the pids cgroup.
    """
    try:
        from templ_pipeline.core.thread_manager import classify_start_failure

        return classify_start_failure(error, refusals_before=refusals_before).cause
    except Exception:
        return "unknown"


def pids_refusals() -> int | None:
    """The pids controller's count of refused forks in this cgroup now (None when unknown)."""
    try:
        from templ_pipeline.core.thread_manager import get_thread_manager

        return get_thread_manager().pids_refusals()
    except Exception:
        return None


def limit_cause(reason: str | None) -> str:
    """A grant's reason as a fallback cause: the limit that left no room, else "none"."""
    from templ_pipeline.core.limits.model import LIMIT_NAMES

    return reason if reason in LIMIT_NAMES else "none"


def _start_failure_reason(kind: str, error: BaseException) -> str:
    if isinstance(error, (BrokenExecutor, CancelledError)):
        return "broken_pool"
    if "can't start new thread" in str(error) or kind == "thread":
        return "thread_start_failed"
    return "process_start_failed"


class MonitoredExecutor:
    """Runs batches for one call down the fallback ladder; a context manager."""

    def __init__(
        self,
        requested: int,
        task_type: str = "scoring",
        *,
        registry: PoolRegistry = POOLS,
        fn: Callable[[BatchTask], BatchResult] = score_batch,
        executor: str = "auto",
        scheduler: str | None = None,
        stall_timeout: float = STALL_SECONDS,
    ) -> None:
        self.requested = requested
        self.task_type = task_type
        self._registry = registry
        self._fn = fn
        self._stall_timeout = stall_timeout
        self._refusals_before: int | None = None
        profile = TASK_PROFILES.get(task_type, TaskProfile())
        in_daemon = bool(multiprocessing.current_process().daemon)
        self.grant = (
            grant_workers(requested, task_type, "process" if not in_daemon else "thread")
            if requested > 1 else Grant(requested, requested)
        )
        self._rungs = plan_ladder(self.grant.granted, profile, in_daemon)
        self._position = 0
        self.kinds_used: list[str] = []
        self.fallbacks: list[dict[str, str]] = []
        self.reductions: list[dict[str, Any]] = []
        self.resubmissions: list[dict[str, Any]] = []
        self._dask: Any = None  # the DaskSession of the dask rung
        if self.grant.granted < requested:
            self._record_reduction(self.grant)
        else:
            telemetry.record_workers(task_type, requested, self.grant.granted)
        dask = executor == "dask"
        if dask:
            self._add_dask_rung(scheduler, in_daemon)
        if (requested > 1 or dask) and self._rungs[0].kind == "sequential" and not self.fallbacks:
            daemon_bound = in_daemon and (self.grant.granted >= 2 or dask)
            reason = "daemon_process" if daemon_bound else "no_headroom"
            cause = "none" if daemon_bound else limit_cause(self.grant.reason)
            self._record_fallback("dask" if dask else "process", "sequential", reason, cause, self.grant.detail)

    @property
    def rung(self) -> Rung:
        return self._rungs[self._position]

    @property
    def workers(self) -> int:
        return self.rung.workers

    def __enter__(self) -> MonitoredExecutor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Pools stay alive for the next call; ``PoolRegistry`` shuts them down at exit."""

    def run(self, tasks: Iterable[BatchTask]) -> Iterator[BatchResult]:
        """Yield each batch's result once, walking down the ladder on failure."""
        pending = {task.index: task for task in tasks}
        while pending:
            rung = self.rung
            self._note_kind(rung.kind)
            if rung.kind == "sequential":
                for index in sorted(pending):
                    yield self._run_here(pending.pop(index))
                return
            try:
                if rung.kind == "dask":
                    yield from self._run_on_dask(pending)
                else:
                    yield from self._run_on_pool(rung, pending)
            except PoolFailure as failure:
                self._step_down(rung, failure)

    def _add_dask_rung(self, scheduler: str | None, in_daemon: bool) -> None:
        """Connect (or start a LocalCluster sized by the grant) and put the dask rung first.

        An unreachable scheduler, or a LocalCluster that cannot start, is a fallback to the local ladder.
        """
        from templ_pipeline.core.dask_backend import SESSIONS, DaskFailure, scheduler_address

        address = scheduler_address(scheduler)
        if address is None and (in_daemon or self.grant.granted < 1):
            return  # no LocalCluster here: the daemon/no-headroom fallback names the reason
        try:
            self._dask, reused = SESSIONS.acquire(address, self.grant.granted)
        except DaskFailure as failure:
            cause = "none" if failure.reason == "scheduler_unreachable" else classify_failure(failure.error)
            self._record_fallback("dask", self.rung.kind, failure.reason, cause, str(failure.error), failure.error)
            return
        workers = max(1, self._dask.nthreads())
        self._rungs.insert(0, Rung("dask", workers))
        telemetry.record_executor_created("dask", workers, self.task_type, reused=reused)

    def _run_on_dask(self, pending: dict[int, BatchTask]) -> Iterator[BatchResult]:
        """Run ``pending`` on the Dask cluster; finished batches leave ``pending`` as they are yielded."""
        from templ_pipeline.core.dask_backend import SESSIONS, DaskFailure

        observe_thread_limits(f"before {len(pending)} batches on dask")
        try:
            for result in self._dask.run([pending[index] for index in sorted(pending)], self._fn, self._resubmitted):
                yield self._arrived("dask", pending.pop(result.index), result)
        except DaskFailure as failure:
            if failure.reason == "scheduler_unreachable":
                SESSIONS.discard(self._dask)
            raise PoolFailure(failure.reason, failure.error) from failure.error

    def _resubmitted(self, index: int, reason: str, worker: str) -> None:
        self.resubmissions.append({"index": index, "reason": reason, "worker": worker})
        telemetry.record_batch_resubmission("dask", index, reason, worker)

    def _run_here(self, task: BatchTask) -> BatchResult:
        """One batch in this thread, inside its own ``select_best.batch`` span."""
        observe_thread_limits(f"before batch {task.index}")
        with telemetry.batch_span(task.index, len(task.conf_ids), "sequential") as batch:
            result = self._fn(task)
            batch.scored, batch.failed = len(result.scored), len(result.failed)
        observe_thread_limits(f"after batch {task.index}")
        return result

    def _arrived(self, kind: str, task: BatchTask, result: BatchResult) -> BatchResult:
        """Account a batch that a pool worker finished: its span, metrics and log line."""
        telemetry.record_batch(
            task.index, len(task.conf_ids), kind, len(result.scored), len(result.failed),
            result.duration_seconds, pid=result.pid, span=result.span,
        )
        observe_thread_limits(f"after batch {task.index}")
        return result

    def _run_on_pool(self, rung: Rung, pending: dict[int, BatchTask]) -> Iterator[BatchResult]:
        """Run ``pending`` on a leased pool; finished batches leave ``pending`` as they are yielded."""
        self._refusals_before = pids_refusals()
        try:
            pool, reused = self._registry.acquire(rung.kind, rung.workers)
        except (OSError, RuntimeError) as error:
            raise PoolFailure(_start_failure_reason(rung.kind, error), error) from error
        telemetry.record_executor_created(rung.kind, rung.workers, self.task_type, reused=reused)
        try:
            yield from self._submit_and_collect(rung, pool, pending)
        finally:
            self._registry.release(pool)

    def _submit_and_collect(self, rung: Rung, pool: Executor, pending: dict[int, BatchTask]) -> Iterator[BatchResult]:
        """Submit every pending batch, yield results as they come; on failure keep the finished ones.

        Every wait is bounded: between results the pool's manager thread is checked
        (a dead one is a broken pool), and a pool that finishes nothing for
        ``stall_timeout`` seconds is taken as broken too. If the caller abandons the
        call (an interrupt, or the generator is closed early), the pool holding its
        queued batches is ended at once.
        """
        futures: dict[Future, int] = {}
        try:
            observe_thread_limits(f"before {len(pending)} batches on {rung.workers} {rung.kind} workers")
            for index in sorted(pending):
                futures[pool.submit(self._fn, pending[index])] = index
            last_result = time.monotonic()
            while futures:
                done, _ = wait(futures, timeout=HEALTH_CHECK_SECONDS, return_when=FIRST_COMPLETED)
                if not done:
                    self._check_pool(pool, last_result)
                    continue
                last_result = time.monotonic()
                for future in done:
                    index = futures.pop(future)
                    result = future.result(timeout=0)
                    yield self._arrived(rung.kind, pending.pop(index), result)
        except (BrokenExecutor, CancelledError, OSError, RuntimeError, EOFError) as error:
            # EOFError: with TEMPL_MP_START_METHOD=forkserver, a fork server that could not fork exits;
            # CancelledError: a concurrent call found this shared pool broken and discarded it
            self._registry.discard(rung.kind, pool)
            if isinstance(error, BrokenExecutor):
                telemetry.record_pool_restart(rung.kind, "broken_pool", str(error), error=error)
            # Batches that finished before the failure are kept, not re-run.
            for future, index in list(futures.items()):
                if future.done() and not future.cancelled() and future.exception(timeout=0) is None:
                    yield self._arrived(rung.kind, pending.pop(index), future.result(timeout=0))
            raise PoolFailure(_start_failure_reason(rung.kind, error), error) from error
        except BaseException:
            if futures:  # abandoned with batches queued: the pool's work is nobody's any more
                self._registry.discard(rung.kind, pool, terminate=True)
            raise

    def _check_pool(self, pool: Executor, last_result: float) -> None:
        """Raise ``BrokenExecutor`` when the pool cannot deliver: its manager died, or it stalled."""
        if manager_died(pool):
            raise BrokenExecutor("the pool's executor-manager thread died; its pending batches "
                                 "would never finish")
        stalled = time.monotonic() - last_result
        if stalled > self._stall_timeout:
            raise BrokenExecutor(f"no batch finished in {stalled:.0f} s (limit {self._stall_timeout:.0f} s)")

    def _step_down(self, rung: Rung, failure: PoolFailure) -> None:
        self._position += 1
        no_cause = failure.reason in ("broken_pool", "scheduler_unreachable")
        cause = "none" if no_cause else classify_failure(failure.error, self._refusals_before)
        self._record_fallback(rung.kind, self.rung.kind, failure.reason, cause, str(failure.error), failure.error)

    def _note_kind(self, kind: str) -> None:
        if not self.kinds_used or self.kinds_used[-1] != kind:
            self.kinds_used.append(kind)

    def _record_reduction(self, grant: Grant) -> None:
        reason = grant.reason or "unknown"
        self.reductions.append(
            {"task_type": self.task_type, "requested": grant.requested, "granted": grant.granted,
             "reason": reason, "detail": grant.detail}
        )
        telemetry.record_worker_reduction(
            self.task_type, grant.requested, grant.granted, reason, grant.detail, headroom=grant.headroom
        )

    def _record_fallback(
        self, from_kind: str, to_kind: str, reason: str, cause: str, detail: str, error: BaseException | None = None
    ) -> None:
        self.fallbacks.append(
            {"from_kind": from_kind, "to_kind": to_kind, "reason": reason, "cause": cause, "detail": detail}
        )
        telemetry.record_fallback(from_kind, to_kind, reason, cause, detail, error=error)


def get_executor(
    n_workers: int, task_type: str = "scoring", *, executor: str = "auto", scheduler: str | None = None
) -> MonitoredExecutor:
    """A monitored executor for one call: sized from headroom, with its fallback ladder.

    ``executor="dask"`` runs on the Dask scheduler at ``scheduler`` (default
    ``$DASK_SCHEDULER_ADDRESS``), else on a LocalCluster of the granted size.
    """
    if executor not in EXECUTOR_CHOICES:
        raise ValueError(f"unknown executor {executor!r}: choose one of {', '.join(EXECUTOR_CHOICES)}")
    return MonitoredExecutor(n_workers, task_type, executor=executor, scheduler=scheduler)


def shutdown_pools(*, terminate: bool = False) -> None:
    """Shut down every pool this process started (also done at exit); ``terminate`` ends workers at once."""
    POOLS.shutdown_all(terminate=terminate)


def shutdown_dask() -> None:
    """Close every Dask client and LocalCluster this process opened (also done at exit)."""
    backend = sys.modules.get("templ_pipeline.core.dask_backend")
    if backend is not None:
        backend.SESSIONS.shutdown_all()
