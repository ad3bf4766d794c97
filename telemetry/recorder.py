"""The one recorder: every event of the chemistry, the executor and the campaign becomes its metrics, its span
work and its log line, as the event's spec in the catalog says.

``core`` and ``campaign`` emit typed events (``templ_pipeline.core.events``) and import nothing of telemetry.
A :class:`Recorder` is an observer of them: it looks the event's class up in
``catalog.EVENT_SPECS_BY_TYPE`` and renders the event's own fields through that spec
(:func:`catalog.render`), so adding an event is its dataclass and its spec. Spans are events too:
a spec may open or close a span (a call's start and end, made current), or a span of its own per
query (queries overlap, so those are never current); the stages a worker timed come back as data
in the query's result and become spans of its trace here. The batch a pool worker scored is the one
event with code of its own: its span was timed in the worker and is exported from here.

Query spans are made only while spans are exported: a span nobody exports would cost the parent
its time on every query, and its carrier would make every worker time three more. Measured on 2
shared cores with ``--traces-file``: a query span with its worker stages takes the parent's main
thread 50-90 us, the export thread 100-130 us per span; a query takes 0.1 s at the least.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Mapping
from contextvars import Token
from typing import Any

from opentelemetry import context as otel_context, trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, Status, StatusCode, TraceFlags

from templ_pipeline.core import events as ev
from templ_pipeline.core.trace_context import context_carrier
from templ_pipeline.telemetry import catalog as c, state
from templ_pipeline.telemetry.logs import get_logger
from templ_pipeline.telemetry.metrics import TemplMetrics, get_metrics
from templ_pipeline.telemetry.tracing import (
    DetachedSpan,
    export_worker_span,
    get_tracer,
    is_exporting,
    start_detached_span,
)

__all__ = ["Recorder", "observe", "process_recorder"]

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR,
           "critical": logging.CRITICAL}
_KINDS = c.METRICS_BY_SHORT["fallbacks"].label_values["from_kind"]
_FAILED = ev.QueryStatus.FAILED.value


def span_ids(span: Span) -> tuple[str, str] | None:
    """The span's trace and span id in hex, for log lines; None when it does not record."""
    if not span.is_recording():
        return None
    ctx = span.get_span_context()
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


def _exemplar(ids: tuple[str, str] | None, sampled: bool) -> dict[str, str] | None:
    """``trace_id``/``span_id`` as an exemplar, only for a span some exporter sends.

    Spans are recorded without an exporter too (their ids correlate log lines), but an exemplar
    naming a trace no backend received is a dead link in Grafana.
    """
    if ids is None or not sampled or not is_exporting():
        return None
    return {"trace_id": ids[0], "span_id": ids[1]}


def _span_exemplar(span: Span) -> dict[str, str] | None:
    return _exemplar(span_ids(span), span.get_span_context().trace_flags.sampled)


def _with_ids(fields: dict[str, Any], ids: tuple[str, str] | None) -> dict[str, Any]:
    if ids is not None:
        fields["trace_id"], fields["span_id"] = ids
    return fields


class Recorder:
    """An observer that records each event as its catalog spec says (pass it to ``Emitter`` or
    ``events.subscribe_process``)."""

    def __init__(self, metrics: TemplMetrics | None = None) -> None:
        self._metrics = metrics
        self._loggers = {spec.logger: get_logger(spec.logger) for spec in c.EVENT_SPECS}
        self._loggers["templ.select_best"] = get_logger("templ.select_best")
        self._std_loggers = {name: logging.getLogger(name) for name in self._loggers}
        self._lock = threading.Lock()
        self._threads = threading.local()  # each thread's spans opened by events, innermost last: calls in two
        # threads each end their own (a context attached in one thread is detached in it)
        self._queries: dict[int, DetachedSpan] = {}  # query spans by index: started, not yet ended
        self._children: dict[tuple[str, ...], Any] = {}  # labelled metrics by short name and label values
        self._children_of: TemplMetrics | None = None  # the metrics those children belong to

    @property
    def metrics(self) -> TemplMetrics:
        """The metrics it updates: its own, else the process's."""
        return self._metrics if self._metrics is not None else get_metrics()

    def __call__(self, event: Any) -> None:
        if isinstance(event, ev.BatchDone):
            if state.is_enabled():
                self._batch(event)
            return
        spec = c.EVENT_SPECS_BY_TYPE.get(type(event))
        if spec is None or not (spec.always or state.is_enabled()):
            return  # LimitsObserved, CallDone, ConformersEmbedded: read by others, not recorded
        rendered = c.render(spec, event)
        error: BaseException | None = getattr(event, "error", None) if spec.has_error else None
        role = spec.span_role
        if role == "opens":
            self._open(spec.span, rendered.attributes)
        elif role == "opens_detached":
            self._open_query(event, rendered.attributes)
        span = trace.get_current_span()
        ids = span_ids(span)
        if role == "event" and ids is not None:
            span.add_event(spec.name, rendered.attributes)
            if error is not None:
                span.record_exception(error, attributes={
                    key: rendered.attributes[key] for key in (c.ATTR_REASON, c.ATTR_CAUSE)
                    if key in rendered.attributes})
        if role == "closes_detached":
            query = self._queries.pop(event.index, None)
            ids = None if query is None else query.ids()
        self._log(spec, rendered.log_fields, error, ids)
        exemplar = (_span_exemplar(span) if role in ("event", "closes")
                    else _exemplar(ids, True) if role == "closes_detached" else None)
        self._update_metrics(spec, rendered, exemplar)
        if role == "closes":
            self._close(spec.span, rendered.attributes, error, abandon_queries=spec.span == c.SPAN_CAMPAIGN)
        elif role == "closes_detached" and query is not None:
            self._close_query(query, event, rendered.attributes)

    # --- log lines and metrics ---------------------------------------------------------------------

    def _log(self, spec: c.EventSpec, fields: dict[str, Any], error: BaseException | None,
             ids: tuple[str, str] | None) -> None:
        if not spec.logged:
            return
        name, level = spec.name, spec.level_for(fields)
        if error is not None and spec.failure:
            if not isinstance(error, Exception):
                return  # an interrupt is the CLI's one line, not a failure
            name, level = spec.failure, "error"
        if not self._std_loggers[spec.logger].isEnabledFor(_LEVELS[level]):
            return  # a debug line per query costs nothing
        if error is not None:
            fields["error_type"] = type(error).__name__
            fields["error"] = str(error)
        getattr(self._loggers[spec.logger], level)(name, **_with_ids(fields, ids))

    def _update_metrics(self, spec: c.EventSpec, rendered: c.RenderedEvent, exemplar: dict[str, str] | None) -> None:
        """The metrics ``spec`` names, from the rendered values; each gets the event's labels it has."""
        m = self.metrics
        labels, fields = rendered.labels, rendered.log_fields
        if m is not self._children_of:  # a new registry: its children are new
            self._children.clear()
            self._children_of = m
        children = self._children

        def labelled(short: str, values: Mapping[str, str] = labels) -> Any:
            """Metric ``short``'s child for its labels' ``values`` (the event's labels unless given)."""
            own = c.METRICS_BY_SHORT[short].labels
            if not own:
                return getattr(m, short)
            key = (short, *(values[label] for label in own))
            child = children.get(key)
            if child is None:  # labels() validates and locks on every call: once per label set is enough
                child = children[key] = getattr(m, short).labels(*key[1:])
            return child

        if spec.counter is not None:
            labelled(spec.counter).inc(exemplar=exemplar)
        for name, short in spec.gauges:
            value = fields[name]
            labelled(short).set(math.nan if value is None else value)
        if spec.histogram is not None:
            name, short = spec.histogram
            labelled(short).observe(fields[name], exemplar=exemplar)
        for name, short in spec.flags:
            if fields[name]:
                getattr(m, short).inc()
        for name, short in spec.amounts:
            if fields[name]:
                getattr(m, short).inc(fields[name])
        for name, short, label in spec.tallies:
            values = fields[name]
            counts = values.items() if isinstance(values, Mapping) else ((value, 1) for value in values)
            for value, count in counts:
                if count:
                    labelled(short, {label: value}).inc(count)
        for short in spec.resets:
            getattr(m, short).set(0)
        for short in spec.raises:
            getattr(m, short).inc()
        for short in spec.lowers:
            getattr(m, short).dec()
        for mapped in spec.mapped:
            if (kind := mapped.mapping.get(labels[mapped.field])) is not None:
                labelled(mapped.counter, {**labels, mapped.label: kind}).inc()

    # --- spans opened and closed by events ---------------------------------------------------------

    def _current(self) -> list[tuple[str, Span, Token[Context]]]:
        """This thread's open spans, innermost last."""
        stack: list[tuple[str, Span, Token[Context]]] | None = getattr(self._threads, "stack", None)
        if stack is None:
            stack = self._threads.stack = []
        return stack

    def _open(self, name: str, attributes: Mapping[str, Any]) -> None:
        """Start span ``name`` as the current span of this thread's context."""
        span = get_tracer().start_span(name, attributes=attributes)
        token = otel_context.attach(trace.set_span_in_context(span))
        self._current().append((name, span, token))

    def _close(self, name: str, attributes: Mapping[str, Any], error: BaseException | None, *,
               abandon_queries: bool = False) -> None:
        """End the innermost open span ``name`` with these attributes (status ERROR after ``error``)."""
        stack = self._current()
        at = next((i for i in range(len(stack) - 1, -1, -1) if stack[i][0] == name), None)
        if at is None:
            return
        _name, span, token = stack.pop(at)
        with self._lock:
            abandoned = list(self._queries.values()) if abandon_queries else []
            if abandon_queries:
                self._queries.clear()
        for query in abandoned:  # the runner never ended them: a signal ended the campaign first
            query.attributes[c.ATTR_QUERY_STATUS] = c.QUERY_ABANDONED
            query.end()
        try:
            if span.is_recording():
                span.set_attributes(dict(attributes))
                if error is not None:
                    span.record_exception(error)
                    span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        finally:
            otel_context.detach(token)
            span.end()

    def _open_query(self, event: Any, attributes: Mapping[str, Any]) -> None:
        """A query's span, the root of a trace of its own linked to the open campaign's span (a campaign's trace
        stays a few spans long however many queries it runs), not made current; its carrier goes to the worker,
        and a query the sampler drops (``OTEL_TRACES_SAMPLER``) has none, so its worker times nothing."""
        if not is_exporting():
            return
        stack = self._current()
        campaign = (stack[-1][1] if stack else trace.get_current_span()).get_span_context()
        span = start_detached_span(c.SPAN_QUERY, attributes, [Link(campaign)] if campaign.is_valid else [])
        if span is None:
            return
        event.carrier.update(context_carrier(span.context))
        with self._lock:
            self._queries[event.index] = span

    def _close_query(self, span: DetachedSpan, event: Any, attributes: Mapping[str, Any]) -> None:
        """End a query's span and export the stages its worker timed under it."""
        span.attributes.update(attributes)
        span.end(Status(StatusCode.ERROR, str(event.reason)) if event.status == _FAILED else None)
        for stage in event.stages:
            spec = c.STAGE_SPECS_BY_TYPE[type(stage)]
            stage_attributes = c.render(spec, stage).attributes
            export_worker_span(spec.name, stage.span, {**stage_attributes, c.ATTR_PROCESS_PID: stage.span.pid})

    # --- the batch a pool worker scored ------------------------------------------------------------

    def _batch(self, event: ev.BatchDone) -> None:
        """A batch's span (timed in the worker when the task carried a trace, else made here, ending now), its
        metrics and its debug line."""
        result = event.result
        fields: dict[str, Any] = {}
        kind = c.normalize_label(str(event.kind), _KINDS)
        if kind != str(event.kind):
            fields["executor_kind_raw"] = str(event.kind)
        scored, failed = len(result.scored), len(result.failed)
        attributes: dict[str, Any] = {c.ATTR_BATCH_INDEX: result.index, c.ATTR_BATCH_SIZE: event.size,
                                      c.ATTR_EXECUTOR_KIND: kind, c.ATTR_BATCH_SCORED: scored,
                                      c.ATTR_BATCH_FAILED: failed}
        if result.pid is not None:
            attributes[c.ATTR_PROCESS_PID] = result.pid
        worker = result.span
        if worker is None:
            end_ns = time.time_ns()
            live = get_tracer().start_span(c.SPAN_BATCH, attributes=attributes,
                                           start_time=end_ns - int(result.duration_seconds * 1e9))
            ids, exemplar = span_ids(live), _span_exemplar(live)
            live.end(end_time=end_ns)
        else:
            export_worker_span(c.SPAN_BATCH, worker, attributes)
            ids = (format(worker.trace_id, "032x"), format(worker.span_id, "016x"))
            exemplar = _exemplar(ids, bool(worker.trace_flags & TraceFlags.SAMPLED))
        m = self.metrics
        m.batches.labels(executor_kind=kind).inc()
        m.batch_duration.labels(executor_kind=kind).observe(result.duration_seconds, exemplar=exemplar)
        # one per batch: a line at the default level would be thousands per campaign
        self._loggers["templ.select_best"].debug("select_best.batch_done", **_with_ids({
            "index": result.index, "size": event.size, "scored": scored, "failed": failed,
            "duration_seconds": result.duration_seconds, "executor_kind": kind, **fields}, ids))


def process_recorder() -> Recorder:
    """The recorder of the process's telemetry state (made on first use, on its metrics)."""
    current = state.current()
    recorder: Recorder | None = current.recorder
    if recorder is None:  # the lock only for the first event of a state, not for every event
        with current.lock:
            if current.recorder is None:
                current.recorder = Recorder()
            recorder = current.recorder
    return recorder


def observe(event: Any) -> None:
    """Record ``event`` with the process's recorder: the observer to subscribe
    (``core.events.subscribe_process(telemetry.observe)``) or pass to a call."""
    process_recorder()(event)
