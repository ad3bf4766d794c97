"""Size a worker pool from a snapshot: how many workers fit under every limit."""

from __future__ import annotations

from templ_pipeline.core.limits.model import (
    STACK_MEMORY,
    TASK_LIMITS,
    Limit,
    Snapshot,
    WorkerGrant,
)
from templ_pipeline.core.limits.worker_cost import WorkerCost

RESERVE_TASKS = 2
"""Headroom left free after a pool starts: room for a short-lived library thread (a log or
telemetry exporter) and for the probe thread of ``classify_start_failure``."""


def _fit(room: int, fixed: int, per_worker: int) -> int | None:
    """Workers that fit in ``room`` after ``fixed``; None when workers cost nothing here."""
    if room < fixed:
        return 0
    return None if per_worker == 0 else (room - fixed) // per_worker


def _allowance(
    snapshot: Snapshot, lim: Limit, headroom: int, cost: WorkerCost, reserve: int
) -> tuple[int | None, int, int]:
    """(workers allowed by ``lim`` with ``headroom``, fixed cost, cost per worker) in the limit's own unit.

    Thread workers cost one task and one stack each. Process workers cost their tasks
    under every task limit, plus the pool's helper threads and processes once; under
    ``stack_memory`` the parent needs stacks for the pool's helper threads, each worker has its own
    address space (inherited ``RLIMIT_AS`` and VmSize) for its extra native threads, and only those
    extra stacks draw on shared memory.
    """
    if cost.kind == "thread" or lim.name in TASK_LIMITS:
        fixed = cost.fixed_tasks
        return _fit(headroom - reserve, fixed, cost.per_worker), fixed, cost.per_worker
    fixed = cost.pool_helpers  # helper processes have their own address space
    extra = cost.per_worker - 1
    as_fit, memory_fit = snapshot.stack.as_fit, snapshot.stack.memory_fit
    if headroom - reserve < fixed or (as_fit is not None and as_fit < extra):
        return 0, fixed, extra
    if memory_fit is None:
        return None, fixed, extra
    return _fit(memory_fit - reserve, fixed, extra), fixed, extra


def _tightest(
    snapshot: Snapshot, cost: WorkerCost, reserve: int
) -> tuple[int, Limit, int, int] | None:
    """(allowed, limit, fixed, per worker) of the limit that allows the fewest workers."""
    best = None
    for lim in snapshot.limits:
        headroom = lim.enforced_headroom
        if headroom is None:
            continue
        allowed, fixed, per_worker = _allowance(snapshot, lim, headroom, cost, reserve)
        if allowed is not None and (best is None or allowed < best[0]):
            best = (allowed, lim, fixed, per_worker)
    return best


def max_workers(snapshot: Snapshot, cost: WorkerCost, reserve: int = RESERVE_TASKS) -> int | None:
    """The most workers the limits allow, None when no known limit constrains them."""
    best = _tightest(snapshot, cost, reserve)
    return None if best is None else best[0]


def compute_grant(
    snapshot: Snapshot, requested: int, cost: WorkerCost, reserve: int = RESERVE_TASKS
) -> WorkerGrant:
    """Grant ``min(requested, what the tightest limit allows)`` workers, at least 0."""
    requested = max(0, requested)
    best = _tightest(snapshot, cost, reserve)
    if best is None:
        return WorkerGrant(requested, requested, None, None,
                           f"no known limit constrains {cost.kind} workers; granted all {requested}")
    allowed, lim, fixed, per_worker = best
    granted = min(requested, allowed)
    unit = "thread stacks" if lim.name == STACK_MEMORY else "tasks"
    helpers = f" (+{fixed} pool helper tasks)" if fixed else ""
    detail = (f"{lim.name}: {lim.headroom} {unit} of headroom, each {cost.kind} worker costs "
              f"{per_worker}{helpers}, reserve {reserve} -> {allowed} worker(s); "
              f"granted {granted} of {requested}")
    reason = lim.name if granted < requested else None
    return WorkerGrant(requested, granted, reason, lim.headroom, detail)
