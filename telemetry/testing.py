"""Test-only resets of telemetry's state."""

from __future__ import annotations

from templ_pipeline.telemetry import state
from templ_pipeline.telemetry.logs import unconfigure_logging
from templ_pipeline.telemetry.metrics import TemplMetrics, get_metrics, reset_metrics_for_tests
from templ_pipeline.telemetry.tracing import shutdown_tracing


def reset() -> TemplMetrics:
    """Shut tracing down, drop our log handler, and start from a fresh telemetry state (on, new metrics on a
    new registry, no degraded component warned of); return its metrics."""
    shutdown_tracing()
    unconfigure_logging()
    state.begin()
    return get_metrics()


def reset_metrics() -> TemplMetrics:
    """Fresh metrics (their own registry) in the current state, as at process start."""
    return reset_metrics_for_tests()
