"""The root span of one ``templ`` command's run: every span the run makes nests under it, so a run is one
trace. The CLI opens it (the edge); the chemistry's and the campaign's spans come from their events
(``telemetry.recorder``)."""

from __future__ import annotations

from opentelemetry import context as otel_context, trace
from opentelemetry.trace import Status, StatusCode

from templ_pipeline.telemetry import catalog as c
from templ_pipeline.telemetry.tracing import get_tracer

__all__ = ["CommandSpan"]


class CommandSpan:
    """The span ``catalog.command_span_name(command)``, current from its start to :meth:`end`."""

    __slots__ = ("_span", "_token")

    def __init__(self, command: str) -> None:
        self._span = get_tracer().start_span(c.command_span_name(command))
        self._token = otel_context.attach(trace.set_span_in_context(self._span))

    def end(self, success: bool) -> None:
        """End the span, in the thread that started it: outcome ``ok``, or ``error`` with status ERROR."""
        if self._span.is_recording():
            self._span.set_attribute(c.ATTR_OUTCOME, "ok" if success else "error")
            if not success:
                self._span.set_status(Status(StatusCode.ERROR, "the run failed or was stopped"))
        otel_context.detach(self._token)
        self._span.end()
