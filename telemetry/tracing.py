"""OpenTelemetry tracing: an SDK TracerProvider in the telemetry state, with a guarded batch processor.

The global ``trace.set_tracer_provider`` works only once per process, so the provider lives in
the telemetry state (``telemetry.state``) and tracers are handed out by :func:`get_tracer`;
:func:`configure_tracing` may be called any number of times (tests do).
Context propagation (current span) is global and independent of the provider.
"""

from __future__ import annotations

import atexit
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.context import Context
from opentelemetry.sdk.resources import (
    SERVICE_INSTANCE_ID,
    SERVICE_NAME,
    SERVICE_VERSION,
    TELEMETRY_SDK_LANGUAGE,
    TELEMETRY_SDK_NAME,
    TELEMETRY_SDK_VERSION,
    OTELResourceDetector,
    Resource,
)
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.sdk.version import __version__ as _SDK_VERSION
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from templ_pipeline import __version__
from templ_pipeline.core.trace_context import WorkerSpan
from templ_pipeline.telemetry import state
from templ_pipeline.telemetry.guard import start_guarded
from templ_pipeline.telemetry.logs import get_run_id

__all__ = [
    "DetachedSpan", "FanOutExporter", "configure_tracing", "current_trace_ids", "export_worker_span", "get_provider",
    "get_tracer", "is_exporting", "shutdown_tracing", "start_detached_span",
]

TRACER_NAME = "templ"

_NOOP_TRACER: trace.Tracer = trace.NoOpTracer()
_SCOPE = InstrumentationScope(TRACER_NAME)
_lock = threading.RLock()  # configuring and shutting down, from any thread


class FanOutExporter(SpanExporter):
    """Hands each batch of spans to several exporters, so one processor (one thread) serves them all."""

    def __init__(self, exporters: Sequence[SpanExporter]) -> None:
        self._exporters = list(exporters)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        results = [exporter.export(spans) for exporter in self._exporters]
        ok = all(result is SpanExportResult.SUCCESS for result in results)
        return SpanExportResult.SUCCESS if ok else SpanExportResult.FAILURE

    def shutdown(self) -> None:
        for exporter in self._exporters:
            exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return all(exporter.force_flush(timeout_millis) for exporter in self._exporters)


def configure_tracing(
    exporter: SpanExporter | Sequence[SpanExporter] | None = None,
    *,
    enabled: bool = True,
    service_name: str = "templ",
    synchronous: bool = False,
    headroom: int | None = None,
    resource_attributes: Mapping[str, Any] | None = None,
    set_global: bool = False,
) -> TracerProvider | None:
    """(Re)configure tracing and return the new provider (``None`` when disabled).

    - ``exporter``: where finished spans go (one, or several behind one processor);
      ``None`` or empty records spans (so trace ids reach logs and exemplars)
      without exporting them.
    - ``synchronous=True`` uses ``SimpleSpanProcessor`` (export on span end; tests).
      Otherwise a ``BatchSpanProcessor`` is started through
      :func:`telemetry.guard.start_guarded`; if its thread cannot start (or
      ``headroom`` < 1) it falls back to ``SimpleSpanProcessor``, counted in
      ``templ_telemetry_degraded_total{component="span_processor"}`` and logged once.
    - ``enabled=False``: no provider; :func:`get_tracer` returns a ``NoOpTracer``.
    - ``service_name`` and ``resource_attributes`` are defaults: ``OTEL_SERVICE_NAME`` and
      ``OTEL_RESOURCE_ATTRIBUTES`` override them (see :func:`_resource`).
    - ``set_global=True`` also installs the provider globally (only effective once per process).
    Any previous provider is flushed and shut down first.
    """
    with _lock:
        shutdown_tracing()
        current = state.current()
        if not enabled:
            return None
        provider = TracerProvider(resource=_resource(service_name, resource_attributes), shutdown_on_exit=False)
        if isinstance(exporter, Sequence):
            exporter = (None if not exporter else exporter[0] if len(exporter) == 1 else FanOutExporter(exporter))
        if exporter is not None:
            processor: Any = None
            if not synchronous:
                processor = start_guarded("span_processor", lambda: BatchSpanProcessor(exporter), headroom=headroom)
            if processor is None:
                processor = SimpleSpanProcessor(exporter)
            provider.add_span_processor(processor)
            current.processor = processor
        current.provider = provider
        current.tracer = provider.get_tracer(TRACER_NAME)
        current.span_limits = SpanLimits()  # as the provider reads them: the environment's, else the defaults
        if set_global:
            trace.set_tracer_provider(provider)
        return provider


def _resource(service_name: str, defaults: Mapping[str, Any] | None) -> Resource:
    """The run's resource: the application's attributes as defaults that the environment overrides.

    Precedence, lowest first: the SDK's ``telemetry.sdk.*``; ``service.name``
    (``service_name``), ``service.version`` (this package's version),
    ``service.instance.id`` (the run id of the logs) and ``defaults``;
    ``OTEL_RESOURCE_ATTRIBUTES``; ``OTEL_SERVICE_NAME``. So an operator's
    ``OTEL_RESOURCE_ATTRIBUTES=service.name=...`` wins, as the OpenTelemetry
    specification asks. ``Resource.create`` merges the other way round (its
    ``attributes`` argument over the environment), and it runs its detectors on a
    ThreadPoolExecutor, which raises "can't start new thread" exactly when thread
    headroom is gone; so the resource is merged here, with the SDK's own
    ``OTELResourceDetector`` reading the environment (percent-decoding, and
    ``OTEL_SERVICE_NAME`` over ``service.name`` in the list).
    """
    attrs: dict[str, Any] = {SERVICE_NAME: service_name, SERVICE_VERSION: __version__}
    run_id = get_run_id()
    if run_id is not None:
        attrs[SERVICE_INSTANCE_ID] = run_id
    if defaults:
        attrs.update(defaults)
    base = Resource(
        {TELEMETRY_SDK_LANGUAGE: "python", TELEMETRY_SDK_NAME: "opentelemetry", TELEMETRY_SDK_VERSION: _SDK_VERSION}
    )
    return base.merge(Resource(attrs)).merge(OTELResourceDetector().detect())


def shutdown_tracing() -> None:
    """Flush and shut down the current provider; tracing becomes no-op until reconfigured."""
    with _lock:
        current = state.current()
        provider, current.provider = current.provider, None
        current.processor = current.tracer = current.span_limits = None
        if provider is not None:
            try:
                provider.force_flush()
            finally:
                provider.shutdown()


def export_worker_span(name: str, record: WorkerSpan, attributes: Mapping[str, Any]) -> None:
    """Export a span a worker timed under this process's trace, through this process's pipeline."""
    current = state.current()
    provider, processor = current.provider, current.processor
    if provider is None or processor is None or not current.enabled:
        return
    flags = TraceFlags(record.trace_flags)
    processor.on_end(ReadableSpan(
        name=name,
        context=SpanContext(record.trace_id, record.span_id, is_remote=False, trace_flags=flags),
        parent=SpanContext(record.trace_id, record.parent_span_id, is_remote=False, trace_flags=flags),
        resource=provider.resource,
        attributes=attributes,
        start_time=record.start_ns,
        end_time=record.end_ns,
        instrumentation_scope=_SCOPE,
    ))


@dataclass(slots=True)
class DetachedSpan:
    """A root span known by its ids, start and attributes until it ends, then exported whole.

    A campaign's query spans are never current (queries overlap) and only their ids travel
    (to the worker, to log lines, to exemplars), so the SDK's live ``Span``, with its lock,
    bounded attributes and processor calls at start, is work the parent does on every query
    for nothing: measured here, opening a query span took the parent's main thread 150 us on
    a campaign's cold caches, most of it in ``Tracer.start_span``. The ids come from the
    provider's id generator and the decision from its sampler (``OTEL_TRACES_SAMPLER``), as
    the SDK's own spans do, and the finished span goes to the same processor.
    """

    name: str
    context: SpanContext
    start_ns: int
    attributes: dict[str, Any]
    links: tuple[Link, ...]

    def ids(self) -> tuple[str, str]:
        """Trace and span id in hex, for log lines."""
        return format(self.context.trace_id, "032x"), format(self.context.span_id, "016x")

    def end(self, status: Status | None = None) -> None:
        """Export the span, ending now (nothing when telemetry was switched off meanwhile)."""
        current = state.current()
        provider, processor = current.provider, current.processor
        if provider is None or processor is None or not current.enabled:
            return
        limits = current.span_limits or SpanLimits()
        attributes: Mapping[str, Any] = self.attributes
        if limits.max_span_attribute_length is not None or len(attributes) > (limits.max_span_attributes or 0):
            # the catalog's attributes are valid values: only limits an operator set have anything to cut
            attributes = BoundedAttributes(limits.max_span_attributes, attributes, immutable=True,
                                           max_value_len=limits.max_span_attribute_length)
        processor.on_end(ReadableSpan(
            name=self.name, context=self.context, parent=None, resource=provider.resource,
            attributes=attributes, links=self.links, status=status or Status(StatusCode.UNSET),
            start_time=self.start_ns, end_time=time.time_ns(), instrumentation_scope=_SCOPE,
        ))


def start_detached_span(name: str, attributes: Mapping[str, Any], links: Sequence[Link] = ()) -> DetachedSpan | None:
    """A new trace's root span, sampled as the provider's sampler decides; None when it is not exported
    (no exporter, telemetry off, or the sampler drops it)."""
    current = state.current()
    provider = current.provider
    if provider is None or current.processor is None or not current.enabled:
        return None
    trace_id = provider.id_generator.generate_trace_id()
    # an empty context: the span is a root, judged by the sampler's root rule (not by the current span's decision)
    decision = provider.sampler.should_sample(Context(), trace_id, name, SpanKind.INTERNAL, attributes, links)
    if not decision.decision.is_sampled():
        return None  # a span recorded but not sampled is never exported: nothing to make
    context = SpanContext(trace_id, provider.id_generator.generate_span_id(), is_remote=False,
                          trace_flags=TraceFlags(TraceFlags.SAMPLED), trace_state=decision.trace_state)
    return DetachedSpan(name, context, time.time_ns(), {**attributes, **dict(decision.attributes or {})}, tuple(links))


def is_exporting() -> bool:
    """Whether finished spans go anywhere: telemetry is on and an exporter is configured."""
    current = state.current()
    return current.processor is not None and current.enabled


def get_provider() -> TracerProvider | None:
    """The current SDK provider, or None when tracing is off."""
    return state.current().provider


def get_tracer() -> trace.Tracer:
    """Tracer from the state's provider; a ``NoOpTracer`` when unconfigured or telemetry is disabled."""
    current = state.current()
    return current.tracer if current.tracer is not None and current.enabled else _NOOP_TRACER


def current_trace_ids() -> tuple[str, str] | None:
    """``(trace_id, span_id)`` as 32/16 lowercase hex of the current recording span, else None."""
    span = trace.get_current_span()
    if not span.is_recording():
        return None
    ctx = span.get_span_context()
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


atexit.register(shutdown_tracing)  # spans still queued at exit are flushed, whichever state holds them
