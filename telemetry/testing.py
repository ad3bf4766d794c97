"""Test-only resets of telemetry's process-wide state."""

from __future__ import annotations

from templ_pipeline.telemetry.campaign import forget_open_campaign
from templ_pipeline.telemetry.guard import reset_guard_for_tests
from templ_pipeline.telemetry.logs import unconfigure_logging
from templ_pipeline.telemetry.metrics import TemplMetrics, reset_metrics_for_tests
from templ_pipeline.telemetry.state import set_enabled
from templ_pipeline.telemetry.tracing import shutdown_tracing


def reset() -> TemplMetrics:
    """Shut tracing down, re-enable telemetry, drop our log handler, forget degraded warnings and an
    open campaign, and return a fresh metrics singleton."""
    shutdown_tracing()
    forget_open_campaign()
    set_enabled(True)
    unconfigure_logging()
    reset_guard_for_tests()
    return reset_metrics_for_tests()


def reset_metrics() -> TemplMetrics:
    """A fresh metrics singleton (its own registry), as at process start."""
    return reset_metrics_for_tests()
