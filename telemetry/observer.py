"""Telemetry as an observer of the executor's events: each event becomes its metrics, span event and log line.

The executor emits typed events (``templ_pipeline.core.events``) and knows nothing
about reporting; ``observe`` is the one place that maps them onto telemetry.
"""

from __future__ import annotations

from templ_pipeline.core import events as ev
from telemetry import events as record
from telemetry.metrics import update_thread_gauges


def observe(event: ev.ExecutorEvent) -> None:
    """Record ``event`` (pass this function as an executor observer)."""
    if isinstance(event, ev.BatchDone):
        result = event.result
        record.record_batch(result.index, event.size, event.kind, len(result.scored), len(result.failed),
                            result.duration_seconds, pid=result.pid, span=result.span)
    elif isinstance(event, ev.LimitsObserved):
        update_thread_gauges(event.snapshot)
    elif isinstance(event, ev.WorkersGranted):
        record.record_workers(event.task_type, event.requested, event.granted)
    elif isinstance(event, ev.WorkersReduced):
        record.record_worker_reduction(event.task_type, event.requested, event.granted, event.reason,
                                       event.detail, headroom=event.headroom)
    elif isinstance(event, ev.ExecutorCreated):
        record.record_executor_created(event.kind, event.workers, event.task_type, reused=event.reused)
    elif isinstance(event, ev.Fallback):
        record.record_fallback(event.from_kind, event.to_kind, event.reason, event.cause, event.detail,
                               error=event.error)
    elif isinstance(event, ev.PoolRestarted):
        record.record_pool_restart(event.kind, event.reason, event.detail, error=event.error)
    elif isinstance(event, ev.BatchResubmitted):
        record.record_batch_resubmission(event.kind, event.index, event.reason, event.worker)
