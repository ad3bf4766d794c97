"""TEMPL telemetry: Prometheus metrics, OpenTelemetry traces and structlog logs from one catalog.

Typical use::

    import telemetry
    telemetry.configure(run_id="abc123")
    with telemetry.select_best_span(n_conformers=40, workers_requested=8) as call:
        with telemetry.batch_span(index=0, size=20, executor_kind="process") as batch:
            ...
            batch.scored = 20
        call.scored = 20

``telemetry.disabled()`` (context manager) or ``configure(enabled=False)`` turns the
per-batch/per-call helpers into near no-ops for overhead measurements.
"""

from __future__ import annotations

from typing import Any, Literal

from telemetry import catalog
from telemetry.events import (
    BatchStats,
    ConformerStats,
    conformers_span,
    SelectBestStats,
    batch_span,
    record_batch,
    record_batch_resubmission,
    record_executor_created,
    record_fallback,
    record_pool_restart,
    record_worker_reduction,
    record_workers,
    select_best_span,
)
from telemetry.guard import reset_guard_for_tests, start_guarded
from telemetry.logs import configure_logging, get_logger, get_run_id, unconfigure_logging
from telemetry.metrics import (
    TemplMetrics,
    get_metrics,
    reset_metrics_for_tests,
    start_metrics_server,
    update_thread_gauges,
)
from telemetry.state import disabled, is_enabled, set_enabled
from telemetry.tracing import configure_tracing, current_trace_ids, get_tracer, shutdown_tracing

__all__ = [
    "BatchStats",
    "ConformerStats",
    "conformers_span",
    "SelectBestStats",
    "TemplMetrics",
    "batch_span",
    "catalog",
    "record_batch",
    "record_batch_resubmission",
    "configure",
    "configure_logging",
    "configure_tracing",
    "current_trace_ids",
    "disabled",
    "get_logger",
    "get_metrics",
    "get_run_id",
    "get_tracer",
    "is_enabled",
    "record_executor_created",
    "record_fallback",
    "record_pool_restart",
    "record_worker_reduction",
    "record_workers",
    "reset_for_tests",
    "reset_metrics_for_tests",
    "select_best_span",
    "set_enabled",
    "shutdown_tracing",
    "start_guarded",
    "start_metrics_server",
    "update_thread_gauges",
]


def configure(
    *,
    enabled: bool = True,
    span_exporter: Any = None,
    synchronous: bool = False,
    log_level: str | int = "INFO",
    log_format: Literal["json", "console", "auto"] = "auto",
    run_id: str | None = None,
    log_stream: Any = None,
    service_name: str = "templ",
    thread_headroom: int | None = None,
) -> None:
    """Set up logging, tracing and metrics in one call (safe to call again).

    Logging is configured first so a degraded span processor can log its warning.
    ``enabled=False`` keeps metrics and logging but makes tracing no-op and the
    per-batch/per-call event helpers return early. ``thread_headroom`` (threads
    the kernel still allows, if known) < 1 skips the batch span processor thread.
    """
    set_enabled(enabled)
    configure_logging(level=log_level, fmt=log_format, stream=log_stream, run_id=run_id)
    get_metrics()
    configure_tracing(
        span_exporter,
        enabled=enabled,
        service_name=service_name,
        synchronous=synchronous,
        headroom=thread_headroom,
        resource_attributes={"templ.run_id": get_run_id()},
    )


def reset_for_tests() -> TemplMetrics:
    """Shut tracing down, re-enable telemetry, drop our log handler, forget degraded warnings,
    and return a fresh metrics singleton."""
    shutdown_tracing()
    set_enabled(True)
    unconfigure_logging()
    reset_guard_for_tests()
    return reset_metrics_for_tests()
