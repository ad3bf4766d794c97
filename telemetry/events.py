"""One call = metric + span event + structured log, so callers never forget one.

The executor's events are declared once each in the catalog (``EventSpec``): the
``record_*`` functions here pass their values to ``catalog.render``, which gives
the counter's labels, the span attributes and the log fields from that one spec.

Label values are normalized against the bounded sets in :mod:`telemetry.catalog`:
an unknown value becomes ``"other"`` (``"unknown"`` for fallback causes) in
metrics and span attributes, and the log line keeps the raw value in
``<field>_raw``. Log events carry ``trace_id``/``span_id`` explicitly (bound by
these helpers, not only by the logging processor) so they are visible under
``structlog.testing.capture_logs()``.

When telemetry is disabled (:mod:`telemetry.state`), the per-call/per-batch
helpers (:func:`batch_span`, :func:`select_best_span`, :func:`record_workers`,
:func:`record_executor_created`) return immediately; the rare safety events
(:func:`record_worker_reduction`, :func:`record_fallback`,
:func:`record_pool_restart`, :func:`record_batch_resubmission`) are still counted and logged.
"""

from __future__ import annotations

import logging
import math
import time
from types import TracebackType
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode, TraceFlags

from templ_pipeline.telemetry import catalog as c
from templ_pipeline.telemetry import state
from templ_pipeline.telemetry.logs import get_logger
from templ_pipeline.telemetry.metrics import get_metrics
from templ_pipeline.telemetry.tracing import export_worker_span, get_tracer, is_exporting
from templ_pipeline.telemetry.worker_spans import WorkerSpan

__all__ = [
    "BatchStats",
    "CommandSpan",
    "ConformerStats",
    "conformers_span",
    "SelectBestStats",
    "batch_span",
    "record_batch",
    "record_batch_resubmission",
    "record_executor_created",
    "record_fallback",
    "record_pool_restart",
    "record_worker_reduction",
    "record_workers",
    "select_best_span",
]

_select_log = get_logger("templ.select_best")
_conformers_log = get_logger("templ.conformers")

_TASK_TYPES = c.METRICS_BY_SHORT["worker_reductions"].label_values["task_type"]
_KINDS = c.METRICS_BY_SHORT["fallbacks"].label_values["from_kind"]
_FAILURE_REASONS = c.METRICS_BY_SHORT["conformers_failed"].label_values["reason"]


def _norm(value: str, allowed: tuple[str, ...], field: str, fields: dict[str, Any]) -> str:
    """Normalized label value; records the raw value in ``fields[field + '_raw']`` if it changed."""
    value = str(value)  # a StrEnum member is logged as its plain value
    if value in allowed:
        return value
    fields[field + "_raw"] = value
    return c.normalize_label(value, allowed)


def _ids(span: Span) -> tuple[str, str] | None:
    if not span.is_recording():
        return None
    ctx = span.get_span_context()
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


def _add_ids(fields: dict[str, Any], ids: tuple[str, str] | None) -> dict[str, Any]:
    if ids is not None:
        fields["trace_id"], fields["span_id"] = ids
    return fields


def _exemplar(ids: tuple[str, str] | None, sampled: bool) -> dict[str, str] | None:
    """``trace_id``/``span_id`` as an exemplar, only for a span some exporter sends.

    Spans are recorded without an exporter too (their ids correlate log lines),
    but an exemplar naming a trace no backend received is a dead link in Grafana;
    so a span that is not sampled, or a run with no span exporter, gets none.
    """
    if ids is None or not sampled or not is_exporting():
        return None
    return {"trace_id": ids[0], "span_id": ids[1]}


def _span_exemplar(span: Span) -> dict[str, str] | None:
    return _exemplar(_ids(span), span.get_span_context().trace_flags.sampled)


# ---------------------------------------------------------------------------
# Executor and campaign events: one spec each in the catalog (c.EVENT_SPECS), rendered by c.render
# ---------------------------------------------------------------------------
def _announce(spec: c.EventSpec, values: dict[str, Any], error: BaseException | None = None) -> c.RenderedEvent:
    """The span event (and ``error``) on the current span, the log line and the metrics of ``spec``."""
    rendered = c.render(spec, values)
    span = trace.get_current_span()
    ids = _ids(span)
    if ids is not None and spec.span_event:
        span.add_event(spec.name, rendered.attributes)
        if error is not None:
            span.record_exception(error, attributes={
                key: rendered.attributes[key] for key in (c.ATTR_REASON, c.ATTR_CAUSE) if key in rendered.attributes})
    fields = rendered.log_fields
    level = spec.level_for(fields)
    if _std_loggers[spec.logger].isEnabledFor(_LEVELS[level]):  # a debug line per query costs nothing
        if error is not None:
            fields["error_type"] = type(error).__name__
            fields["error"] = str(error)
        getattr(_loggers[spec.logger], level)(spec.name, **_add_ids(fields, ids))
    _update_metrics(spec, rendered, _span_exemplar(span) if spec.span_event else None)
    return rendered


_loggers = {spec.logger: get_logger(spec.logger) for spec in c.EVENT_SPECS}
_std_loggers = {name: logging.getLogger(name) for name in _loggers}
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR,
           "critical": logging.CRITICAL}


def _update_metrics(spec: c.EventSpec, rendered: c.RenderedEvent, exemplar: dict[str, str] | None) -> None:
    """The metrics ``spec`` names, from the rendered values; each gets the event's labels it has."""
    m = get_metrics()
    labels, fields = rendered.labels, rendered.log_fields
    if spec.counter is not None:
        getattr(m, spec.counter).labels(**labels).inc(exemplar=exemplar)
    for name, short in spec.gauges:
        value = fields[name]
        getattr(m, short).set(math.nan if value is None else value)
    if spec.histogram is not None:
        name, short = spec.histogram
        histogram = getattr(m, short)
        own = c.METRICS_BY_SHORT[short].labels
        (histogram.labels(**{label: labels[label] for label in own}) if own else histogram).observe(fields[name])
    for name, short in spec.flags:
        if fields[name]:
            getattr(m, short).inc()
    for name, short, label in spec.tallies:
        counter = getattr(m, short)
        for value in fields[name]:
            counter.labels(**{label: value}).inc()
    for short in spec.resets:
        getattr(m, short).set(0)
    for mapped in spec.mapped:
        if (kind := mapped.mapping.get(labels[mapped.field])) is not None:
            own = c.METRICS_BY_SHORT[mapped.counter].labels
            getattr(m, mapped.counter).labels(**{label: kind if label == mapped.label else labels[label]
                                                 for label in own}).inc()


_SPEC = c.EVENT_SPECS_BY_NAME


def record_workers(task_type: str, requested: int, granted: int) -> None:
    """Set ``templ_executor_workers_requested/granted{task_type}`` (no reduction event)."""
    if not state.enabled:
        return
    _set_worker_gauges(c.normalize_label(str(task_type), _TASK_TYPES), requested, granted)


def _set_worker_gauges(task_type: str, requested: int, granted: int) -> None:
    m = get_metrics()
    m.workers_requested.labels(task_type=task_type).set(requested)
    m.workers_granted.labels(task_type=task_type).set(granted)


def record_worker_reduction(
    task_type: str,
    requested: int,
    granted: int,
    reason: str,
    detail: str = "",
    headroom: int | None = None,
) -> None:
    """Workers granted < requested: gauges, counter, span event and log ``executor.workers_reduced`` (a warning
    for a refusal, info for a sizing decision: ``catalog.SIZING_REASONS``)."""
    rendered = _announce(_SPEC[c.EVENT_WORKERS_REDUCED], {
        "task_type": task_type, "workers_requested": requested, "workers_granted": granted, "reason": reason,
        "detail": detail, "headroom": headroom})
    _set_worker_gauges(rendered.labels["task_type"], requested, granted)


def record_fallback(
    from_kind: str,
    to_kind: str,
    reason: str,
    cause: str = "none",
    detail: str = "",
    error: BaseException | None = None,
) -> None:
    """One step down the executor ladder: counter, span event (+ exception), warning log ``executor.fallback``."""
    _announce(_SPEC[c.EVENT_FALLBACK], {"from_kind": from_kind, "to_kind": to_kind, "reason": reason,
                                        "cause": cause, "detail": detail}, error)


def record_pool_restart(
    executor_kind: str,
    reason: str = "broken_pool",
    detail: str = "",
    error: BaseException | None = None,
) -> None:
    """A broken pool was replaced: ``templ_executor_pool_restarts_total``, span event, warning log."""
    _announce(_SPEC[c.EVENT_POOL_RESTARTED], {"executor_kind": executor_kind, "reason": reason, "detail": detail},
              error)


def record_batch_resubmission(executor_kind: str, index: int, reason: str, worker: str = "") -> None:
    """A batch runs again after its worker was lost: counter, span event, warning log ``executor.batch_resubmitted``.

    Only the resubmission is counted here; the batch itself is counted once, when its result arrives.
    """
    _announce(_SPEC[c.EVENT_BATCH_RESUBMITTED],
              {"executor_kind": executor_kind, "index": index, "reason": reason, "worker": worker})


def record_executor_created(kind: str, workers: int, task_type: str, reused: bool) -> None:
    """An executor was created or reused: span event and info log ``executor.created``."""
    if not state.enabled:
        return
    _announce(_SPEC[c.EVENT_EXECUTOR_CREATED],
              {"executor_kind": kind, "workers": workers, "task_type": task_type, "reused": reused})


# ---------------------------------------------------------------------------
# Span context managers
# ---------------------------------------------------------------------------
def _start_span(name: str, attributes: dict[str, Any]) -> tuple[Span, object, float]:
    """Start span ``name`` as the current span: (span, context token, perf_counter start)."""
    span = get_tracer().start_span(name, attributes=attributes)
    return span, otel_context.attach(trace.set_span_in_context(span)), time.perf_counter()


def _end_span(span: Span, token: object) -> None:
    otel_context.detach(token)
    span.end()


def _record_error(span: Span, exc: BaseException) -> None:
    if span.is_recording():
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))


class BatchStats:
    """Yielded by :func:`batch_span`; set ``scored``, ``failed`` and (after a fallback) ``executor_kind``."""

    __slots__ = ("index", "size", "executor_kind", "scored", "failed", "duration_seconds", "_span", "_token", "_t0")

    def __init__(self, index: int, size: int, executor_kind: str) -> None:
        self.index = index
        self.size = size
        self.executor_kind = executor_kind
        self.scored = 0
        self.failed = 0
        self.duration_seconds = 0.0

    def __enter__(self) -> BatchStats:
        self._span, self._token, self._t0 = _start_span(c.SPAN_BATCH, {
            c.ATTR_BATCH_INDEX: self.index, c.ATTR_BATCH_SIZE: self.size, c.ATTR_EXECUTOR_KIND: self.executor_kind})
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.duration_seconds = time.perf_counter() - self._t0
        try:
            _finish_batch(self._span, self.index, self.size, self.executor_kind, self.scored, self.failed,
                          self.duration_seconds, exc)
        finally:
            _end_span(self._span, self._token)


def _finish_batch(
    span: Span, index: int, size: int, executor_kind: str, scored: int, failed: int, duration: float,
    exc: BaseException | None = None,
) -> None:
    """Span attributes, metrics and the log line of one finished (or failed) batch on a live span."""
    fields: dict[str, Any] = {}
    kind = _norm(executor_kind, _KINDS, "executor_kind", fields)
    ids = _ids(span)
    if ids is not None:
        span.set_attributes({c.ATTR_EXECUTOR_KIND: kind, c.ATTR_BATCH_SCORED: scored, c.ATTR_BATCH_FAILED: failed})
    if exc is not None:
        _record_error(span, exc)
    _batch_metrics_and_log(index, size, kind, scored, failed, duration, ids, _span_exemplar(span), fields, exc)


def _batch_metrics_and_log(
    index: int, size: int, kind: str, scored: int, failed: int, duration: float,
    ids: tuple[str, str] | None, exemplar: dict[str, str] | None, fields: dict[str, Any],
    exc: BaseException | None = None,
) -> None:
    m = get_metrics()
    m.batches.labels(executor_kind=kind).inc()
    m.batch_duration.labels(executor_kind=kind).observe(duration, exemplar=exemplar)
    if exc is None:
        _select_log.debug(  # one per batch: a line at the default level would be thousands per campaign
            "select_best.batch_done",
            **_add_ids({"index": index, "size": size, "scored": scored, "failed": failed,
                        "duration_seconds": duration, "executor_kind": kind, **fields}, ids),
        )
    else:
        _select_log.error(
            "select_best.batch_failed",
            **_add_ids({"index": index, "size": size, "duration_seconds": duration, "executor_kind": kind,
                        "error_type": type(exc).__name__, "error": str(exc), **fields}, ids),
        )


def record_batch(
    index: int, size: int, executor_kind: str, scored: int, failed: int, duration_seconds: float,
    *, pid: int | None = None, span: WorkerSpan | None = None,
) -> None:
    """A batch that ran in a pool worker and just came back.

    With ``span`` (the worker timed the batch under the parent's trace) that is
    the ``select_best.batch`` span, exported from here. Without it (the task
    carried no trace context) the span is made here, ending now and starting
    ``duration_seconds`` earlier.
    """
    if not state.enabled:
        return
    attributes: dict[str, Any] = {c.ATTR_BATCH_INDEX: index, c.ATTR_BATCH_SIZE: size}
    if pid is not None:
        attributes[c.ATTR_PROCESS_PID] = pid
    if span is None:
        end_ns = time.time_ns()
        live = get_tracer().start_span(c.SPAN_BATCH, attributes=attributes,
                                       start_time=end_ns - int(duration_seconds * 1e9))
        try:
            with trace.use_span(live, end_on_exit=False):
                _finish_batch(live, index, size, executor_kind, scored, failed, duration_seconds)
        finally:
            live.end(end_time=end_ns)
        return
    fields: dict[str, Any] = {}
    kind = _norm(executor_kind, _KINDS, "executor_kind", fields)
    attributes.update({c.ATTR_EXECUTOR_KIND: kind, c.ATTR_BATCH_SCORED: scored, c.ATTR_BATCH_FAILED: failed})
    export_worker_span(c.SPAN_BATCH, span, attributes)
    ids = (format(span.trace_id, "032x"), format(span.span_id, "016x"))
    sampled = bool(span.trace_flags & TraceFlags.SAMPLED)
    _batch_metrics_and_log(index, size, kind, scored, failed, duration_seconds, ids, _exemplar(ids, sampled), fields)


class _NoopStats:
    """Disabled-telemetry stand-in: accepts the same attribute writes, does nothing."""

    __slots__ = ("index", "size", "executor_kind", "scored", "failed", "duration_seconds",
                 "n_conformers", "workers_requested", "workers_granted", "failed_by_reason")

    def __enter__(self) -> _NoopStats:
        return self

    def fail(self, reason: str, n: int = 1) -> None:
        """Ignored when telemetry is disabled."""

    def __exit__(self, *exc_info: Any) -> None:
        return None


def batch_span(index: int, size: int, executor_kind: str) -> BatchStats:
    """Context manager for one conformer batch (child span ``select_best.batch``).

    On exit: ``templ_select_best_batches_total{executor_kind}`` +1, batch duration
    observed (with a trace exemplar when the span is exported), debug log ``select_best.batch_done``; an escaping
    exception sets span status ERROR, logs ``select_best.batch_failed`` and re-raises.
    The final ``executor_kind`` on the yielded object labels the metrics.
    """
    if not state.enabled:
        stats = _NoopStats()
        stats.index, stats.size, stats.executor_kind, stats.scored, stats.failed = index, size, executor_kind, 0, 0
        return stats  # type: ignore[return-value]
    return BatchStats(index, size, executor_kind)


class SelectBestStats:
    """Yielded by :func:`select_best_span`; set ``workers_granted``, ``executor_kind``, ``scored``,
    ``failed_by_reason`` (``reason -> count``; or call :meth:`fail`)."""

    __slots__ = ("n_conformers", "workers_requested", "workers_granted", "executor_kind", "scored",
                 "failed_by_reason", "duration_seconds", "_span", "_token", "_t0")

    def __init__(self, n_conformers: int, workers_requested: int) -> None:
        self.n_conformers = n_conformers
        self.workers_requested = workers_requested
        self.workers_granted: int | None = None
        self.executor_kind: str | None = None
        self.scored = 0
        self.failed_by_reason: dict[str, int] = {}
        self.duration_seconds = 0.0

    def fail(self, reason: str, n: int = 1) -> None:
        """Add ``n`` failed conformers for ``reason``."""
        self.failed_by_reason[reason] = self.failed_by_reason.get(reason, 0) + n

    @property
    def failed(self) -> int:
        """Total failed conformers."""
        return sum(self.failed_by_reason.values())

    def __enter__(self) -> SelectBestStats:
        self._span, self._token, self._t0 = _start_span(c.SPAN_SELECT_BEST, {
            c.ATTR_N_CONFORMERS: self.n_conformers, c.ATTR_WORKERS_REQUESTED: self.workers_requested})
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.duration_seconds = duration = time.perf_counter() - self._t0
        span = self._span
        try:
            fields: dict[str, Any] = {}
            kind = None if self.executor_kind is None else _norm(self.executor_kind, _KINDS, "executor_kind", fields)
            failed: dict[str, int] = {}
            for reason, n in self.failed_by_reason.items():
                label = c.normalize_label(reason, _FAILURE_REASONS)
                failed[label] = failed.get(label, 0) + n
            n_failed = sum(failed.values())
            outcome = "ok" if exc is None else "error"
            ids = _ids(span)
            if ids is not None:
                attrs: dict[str, Any] = {c.ATTR_SCORED: self.scored, c.ATTR_FAILED: n_failed, c.ATTR_OUTCOME: outcome}
                if self.workers_granted is not None:
                    attrs[c.ATTR_WORKERS_GRANTED] = self.workers_granted
                if kind is not None:
                    attrs[c.ATTR_EXECUTOR_KIND] = kind
                span.set_attributes(attrs)
            m = get_metrics()
            if self.scored:
                m.conformers_scored.inc(self.scored)
            for label, n in failed.items():
                if n:
                    m.conformers_failed.labels(reason=label).inc(n)
            m.select_best_calls.labels(outcome=outcome).inc()
            m.select_best_duration.observe(duration, exemplar=_span_exemplar(span))
            common = {
                "n_conformers": self.n_conformers, "workers_requested": self.workers_requested,
                "workers_granted": self.workers_granted, "executor_kind": kind, "scored": self.scored,
                "duration_seconds": duration, "outcome": outcome, **fields,
            }
            if exc is None:
                _select_log.info(
                    "select_best.done", **_add_ids({**common, "failed": n_failed, "failed_by_reason": failed}, ids)
                )
            else:
                _record_error(span, exc)
                if isinstance(exc, Exception):  # an interrupt is the CLI's one line, not a failure
                    _select_log.error(
                        "select_best.failed",
                        **_add_ids({**common, "error_type": type(exc).__name__, "error": str(exc)}, ids),
                    )
        finally:
            _end_span(span, self._token)


def select_best_span(n_conformers: int, workers_requested: int) -> SelectBestStats:
    """Context manager for the parent span ``select_best``.

    On exit: ``templ_conformers_scored_total`` += scored, ``templ_conformers_failed_total{reason}``
    per reason, ``templ_select_best_calls_total{outcome}``, duration histogram (exemplar when exported),
    info log ``select_best.done``; an escaping exception sets status ERROR, logs
    ``select_best.failed`` and re-raises.
    """
    if not state.enabled:
        stats = _NoopStats()
        stats.n_conformers, stats.workers_requested, stats.workers_granted = n_conformers, workers_requested, None
        stats.executor_kind, stats.scored, stats.failed_by_reason = None, 0, {}
        return stats  # type: ignore[return-value]
    return SelectBestStats(n_conformers, workers_requested)


class ConformerStats:
    """Yielded by :func:`conformers_span`; set ``generated`` and ``threads`` (the RDKit threads that worked)."""

    __slots__ = ("requested", "threads_requested", "generated", "threads", "_span", "_token", "_t0")

    def __init__(self, requested: int, threads_requested: int) -> None:
        self.requested = requested
        self.threads_requested = threads_requested
        self.generated = 0
        self.threads = threads_requested

    def __enter__(self) -> ConformerStats:
        get_metrics().conformer_generations_in_progress.inc()
        self._span, self._token, self._t0 = _start_span(c.SPAN_CONFORMERS, {
            c.ATTR_CONFORMERS_REQUESTED: self.requested, c.ATTR_WORKERS_REQUESTED: self.threads_requested})
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        duration = time.perf_counter() - self._t0
        span = self._span
        try:
            outcome = "ok" if exc is None else "error"
            ids = _ids(span)
            if ids is not None:
                span.set_attributes({c.ATTR_CONFORMERS_GENERATED: self.generated,
                                     c.ATTR_WORKERS_GRANTED: self.threads, c.ATTR_OUTCOME: outcome})
            common = {"requested": self.requested, "threads_requested": self.threads_requested,
                      "duration_seconds": duration, "outcome": outcome}
            if exc is None:
                _conformers_log.info("conformers.done", **_add_ids(
                    {**common, "generated": self.generated, "threads": self.threads}, ids))
            else:
                _record_error(span, exc)
                if isinstance(exc, Exception):  # an interrupt is the CLI's one line, not a failure
                    _conformers_log.error("conformers.failed", **_add_ids(
                        {**common, "error_type": type(exc).__name__, "error": str(exc)}, ids))
        finally:
            _end_span(span, self._token)
            metrics = get_metrics()
            metrics.conformer_generations_in_progress.dec()
            metrics.conformer_generations.labels(outcome="ok" if exc is None else "error").inc()


def conformers_span(requested: int, threads_requested: int) -> ConformerStats:
    """Context manager for the span ``conformers.generate`` of one query; logs ``conformers.done``.

    Its reductions and fallbacks (RDKit threads the grant or the kernel refused) are
    span events of this span. Kept when telemetry is disabled: one span per query costs nothing.
    """
    return ConformerStats(requested, threads_requested)


class CommandSpan:
    """The root span of one ``templ`` command's run (``catalog.command_span_name``), current from its start to
    :meth:`end`: every span the run makes nests under it, so the run is one trace."""

    __slots__ = ("_span", "_token")

    def __init__(self, command: str) -> None:
        self._span, self._token, _ = _start_span(c.command_span_name(command), {})

    def end(self, success: bool) -> None:
        """End the span, in the thread that started it: outcome ``ok``, or ``error`` with status ERROR."""
        if _ids(self._span) is not None:
            self._span.set_attribute(c.ATTR_OUTCOME, "ok" if success else "error")
            if not success:
                self._span.set_status(Status(StatusCode.ERROR, "the run failed or was stopped"))
        _end_span(self._span, self._token)


class TemplateChoiceSpan:
    """Yielded by :func:`templates_span`; set ``chosen``, ``searched`` and ``timeouts`` before it ends."""

    __slots__ = ("library", "chosen", "searched", "timeouts", "_span", "_token", "_t0")

    def __init__(self, library: int) -> None:
        self.library = library
        self.chosen = self.searched = self.timeouts = 0

    def __enter__(self) -> TemplateChoiceSpan:
        self._span, self._token, self._t0 = _start_span(c.SPAN_TEMPLATES_CHOOSE,
                                                        {c.ATTR_TEMPLATES_LIBRARY: self.library})
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if _ids(self._span) is not None:
                self._span.set_attributes({c.ATTR_TEMPLATES_CHOSEN: self.chosen,
                                           c.ATTR_TEMPLATES_MCS_SEARCHED: self.searched,
                                           c.ATTR_TEMPLATES_MCS_TIMEOUTS: self.timeouts})
            if exc is not None:
                _record_error(self._span, exc)
        finally:
            _end_span(self._span, self._token)


def templates_span(library: int) -> TemplateChoiceSpan:
    """Context manager for the span ``templates.choose`` of one query in this process (``select-best``)."""
    return TemplateChoiceSpan(library)
