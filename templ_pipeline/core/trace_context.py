"""Batch spans made in process workers, carried back with the batch result.

The parent puts the W3C ``traceparent`` of its ``select_best`` span (in a campaign,
of the query's span) in each task.
A worker times its batch under that trace (its own span id, its own clock) and
returns the span's ids and times with the result; the parent turns them into a
``select_best.batch`` span of the same trace and exports it through its own
pipeline. Workers so need no exporter, no export thread and no network, and a
span is never exported twice or lost with a worker that dies (its batch is
re-run and timed again).

OpenTelemetry is imported on first use, not with this module: a worker imports it only when its
task carries a trace (10 ms of each worker's start otherwise, 7 % of its imports).
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

from templ_pipeline.core.pickled_by_fields import pickled_by_fields

if TYPE_CHECKING:
    from opentelemetry.trace import Span, SpanContext
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator


@cache
def _propagator() -> TraceContextTextMapPropagator:
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return TraceContextTextMapPropagator()


def current_carrier() -> dict[str, str]:
    """``{"traceparent": ...}`` for the current recording span; empty when not tracing.

    A program that never imported OpenTelemetry's trace API has no current span (making one current
    needs that API): it gets an empty carrier without the 8 ms import, in its first ``select_best`` call.
    """
    trace = sys.modules.get("opentelemetry.trace")
    carrier: dict[str, str] = {}
    if trace is None:
        return carrier
    if trace.get_current_span().is_recording():
        _propagator().inject(carrier)
    return carrier


def span_carrier(span: Span) -> dict[str, str]:
    """``{"traceparent": ...}`` for ``span``, current or not; empty when it is not recording."""
    from opentelemetry import trace

    carrier: dict[str, str] = {}
    if span.is_recording():
        _propagator().inject(carrier, context=trace.set_span_in_context(span))
    return carrier


def context_carrier(context: SpanContext) -> dict[str, str]:
    """``{"traceparent": ...}`` (and ``tracestate``) for a span known by its context alone, not a live SDK span.

    Written directly in the W3C format the propagator writes: through the propagator it takes a
    context made for the purpose and a current-span lookup, a quarter of what opening a campaign's
    query span cost the parent.
    """
    carrier = {"traceparent": f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"}
    if context.trace_state:
        carrier["tracestate"] = context.trace_state.to_header()
    return carrier


@pickled_by_fields
@dataclass(frozen=True, slots=True)
class WorkerSpan:
    """Ids and times of a span made in a worker process."""

    trace_id: int
    span_id: int
    parent_span_id: int
    trace_flags: int
    start_ns: int
    end_ns: int
    pid: int


class WorkerSpanClock:
    """Started in the worker when a batch begins; ``finish`` gives the span record."""

    def __init__(self, carrier: Mapping[str, str], pid: int) -> None:
        from opentelemetry import trace

        parent = trace.get_current_span(_propagator().extract(carrier)).get_span_context()
        self._parent = parent
        self._pid = pid
        self._start = time.time_ns()

    @property
    def valid(self) -> bool:
        return self._parent.is_valid

    def finish(self) -> WorkerSpan:
        return WorkerSpan(
            trace_id=self._parent.trace_id,
            span_id=random.getrandbits(64) or 1,
            parent_span_id=self._parent.span_id,
            trace_flags=int(self._parent.trace_flags),
            start_ns=self._start,
            end_ns=time.time_ns(),
            pid=self._pid,
        )


def start_worker_span(carrier: Mapping[str, str], pid: int) -> WorkerSpanClock | None:
    """A clock for the batch span when the parent is tracing, else None."""
    if not carrier:
        return None
    clock = WorkerSpanClock(carrier, pid)
    return clock if clock.valid else None
