"""Everything telemetry holds, in one object: the metrics registry, the tracer provider and its processor,
the log configuration, the on/off switch and the degraded components already warned of.

A run's session makes a fresh one (:func:`begin`) and the process uses it until the next: the
accessors the rest of telemetry calls (``get_metrics``, ``get_tracer``, ``get_run_id``...) read it, so two
configurations never mix and a test starts from a clean one in one call. Nothing else in telemetry
keeps state between calls.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import logging

    from opentelemetry.sdk.trace import SpanLimits, SpanProcessor, TracerProvider

__all__ = ["TelemetryState", "begin", "current", "disabled", "is_enabled", "set_enabled"]


@dataclass
class TelemetryState:
    """One configuration of telemetry. ``enabled`` False leaves per-call and per-batch events unrecorded and
    hands out a no-op tracer; the safety events (reductions, fallbacks, degraded telemetry) are still recorded."""

    enabled: bool = True
    metrics: Any = None  # telemetry.metrics.TemplMetrics, made on first use (typed loosely: metrics reads this)
    provider: TracerProvider | None = None
    processor: SpanProcessor | None = None  # where finished spans go; None: spans are recorded, not exported
    tracer: Any = None  # the provider's tracer; None: a no-op tracer
    span_limits: SpanLimits | None = None  # the provider's limits (OTEL_*_LIMIT), for spans made without its tracer
    run_id: str | None = None  # on every log line, the resource's service.instance.id
    log_handler: logging.Handler | None = None  # the root handler this configuration installed
    degraded_warned: set[str] = field(default_factory=set)  # components whose degradation was logged
    recorder: Any = None  # telemetry.recorder.Recorder: the spans events opened, made on first use
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)


_current = TelemetryState()


def current() -> TelemetryState:
    """The process's telemetry state."""
    return _current


def begin(previous_metrics: bool = False) -> TelemetryState:
    """Make a fresh state the process's and return it; with ``previous_metrics`` it keeps the current metrics
    (a run's session does: counts made before it, such as a library call's, stay on the same registry)."""
    global _current
    fresh = TelemetryState(metrics=_current.metrics if previous_metrics else None)
    _current = fresh
    return fresh


def is_enabled() -> bool:
    """True when telemetry is on."""
    return _current.enabled


def set_enabled(value: bool) -> None:
    """Turn telemetry on or off for the whole process."""
    _current.enabled = bool(value)


@contextmanager
def disabled() -> Iterator[None]:
    """Temporarily turn telemetry off (restores the previous state on exit)."""
    state = _current
    previous = state.enabled
    state.enabled = False
    try:
        yield
    finally:
        state.enabled = previous
