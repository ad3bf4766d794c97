"""Workers granted from the kernel's limits, for every caller that starts workers.

The executor's pools, a campaign's query processes and RDKit's embedding threads all
ask here. :func:`grant_for_work` decides how many workers some work gets: the work's
cuts first (:mod:`templ_pipeline.core.sizing`), then the headroom of the limits, which
the thread resource manager (:mod:`templ_pipeline.core.thread_manager`) reads and
shares with the project's other processes through its ledger. These helpers never raise: reporting
and sizing must not stop the work, so a manager that cannot be imported or fails caps
the request (at 4, then 2 workers: a few start almost anywhere) and says so as a
reduction like any other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from templ_pipeline.core.events import (
    FallbackCause,
    LimitsObserved,
    Observer,
    ReductionReason,
    TaskType,
    WorkersGranted,
    WorkersReduced,
)
from templ_pipeline.core.limits.model import WorkerGrant
from templ_pipeline.core.recent_work import NO_RECENT_WORK, RecentWork
from templ_pipeline.core.sizing import insists_on_workers, plan_workers

CAP_MANAGER_UNAVAILABLE = 4
"""Workers granted when the thread manager cannot be imported."""

CAP_MANAGER_FAILED = 2
"""Workers granted when the thread manager raised while granting."""


@dataclass(frozen=True, slots=True)
class Grant:
    """Workers granted for a request, and why fewer when fewer.

    ``answer`` is the thread manager's own grant, whose shared-ledger claim
    :func:`release_grant` gives back; None when the manager was not asked.
    """

    requested: int
    granted: int
    reason: str | None = None
    detail: str = ""
    headroom: int | None = None
    answer: WorkerGrant | None = None

    def event(self, task_type: TaskType) -> WorkersGranted | WorkersReduced:
        """The grant as an event: a reduction when fewer were granted than requested."""
        if self.granted >= self.requested:
            return WorkersGranted(task_type, self.requested, self.granted)
        reason = ReductionReason.MANAGER_FAILED
        if self.reason is not None and self.reason in ReductionReason._value2member_map_:
            reason = ReductionReason(self.reason)
        return WorkersReduced(task_type, self.requested, self.granted, reason, self.detail, self.headroom)


@dataclass(frozen=True, slots=True)
class WorkGrant:
    """Workers for some work: the grant, and the events that took the request down to it, in order."""

    grant: Grant
    events: tuple[WorkersGranted | WorkersReduced, ...]


def grant_for_work(
    requested: int,
    task_type: TaskType,
    executor_kind: str,
    *,
    exact_workers: bool = False,
    conformers: int | None = None,
    queries: int | None = None,
    warm: Sequence[int] = (),
    recent: RecentWork = NO_RECENT_WORK,
    one_starts_a_worker: bool = False,
) -> WorkGrant:
    """The workers to start for ``requested``: sized for the work, then granted from the limits.

    The work's cuts (CPUs, ``conformers`` to score with the ``recent`` calls' or
    ``queries`` left, ``warm`` pool sizes) are skipped when the user insists
    (``exact_workers`` or ``TEMPL_EXACT_WORKERS``). The limits are asked at what an
    ``executor_kind`` worker costs, and only when a worker starts: for one worker
    that is this thread, unless ``one_starts_a_worker`` (a campaign's single query
    process). A grant that recent calls earned says so in its detail. The caller
    releases the grant (:func:`release_grant`).
    """
    work = plan_workers(requested, task_type, exact=insists_on_workers(exact_workers), conformers=conformers,
                        queries=queries, warm=warm, recent=recent)
    wanted = work.workers
    starts = wanted > 1 or (one_starts_a_worker and wanted == 1)
    grant = grant_workers(wanted, task_type, executor_kind) if starts else Grant(wanted, wanted)
    granted = grant.event(task_type)
    if work.note and isinstance(granted, WorkersGranted):
        granted = replace(granted, detail=work.note)
    return WorkGrant(grant, (*work.reductions, granted))


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
