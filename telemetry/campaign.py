"""A screening campaign's telemetry: its events (metrics, span events, log lines) and its spans.

The campaign runner emits typed events (``templ_pipeline.core.events``), which
:func:`telemetry.observer.observe` hands to the ``record_*`` functions here; each
is declared once in the catalog (``EventSpec``). The spans are the runner's to open:

- :func:`campaign_span` around the whole campaign (the parent of every query span);
- :func:`start_query_span` when a query is handed to a worker. Queries overlap, so a
  query span is never made current; its ``carrier`` travels with the query, the worker
  times its ``conformers.generate`` and ``screen.score`` spans under it
  (:func:`telemetry.worker_spans.start_worker_span`) and :meth:`QuerySpan.end` exports
  them with the query's result.

Query spans are made only while spans are exported (an exporter is configured and
telemetry is on): a span nobody exports and nothing refers to would cost the parent
its time on every query, and its carrier would make every worker time two more. Then
the query span is a stand-in whose carrier is empty and whose ``end`` does nothing
(1 us). Measured on 2 shared cores with ``--traces-file``: ``start_query_span`` and
``end`` with two worker spans take the parent's main thread 50-90 us, and the export
thread spends 100-130 us per span encoding OTLP/JSON (66 us for OTLP/HTTP's protobuf):
about 0.4 ms of parent CPU per query, against queries of 0.1 s and more.

Under ``telemetry.disabled()`` the spans are skipped but the events are still counted
and logged, like the executor's safety events: a campaign's progress must stay visible,
and they cost the parent about 20 us per query (a query takes 0.1 s at the least).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode

from templ_pipeline.telemetry import catalog as c
from templ_pipeline.telemetry import state
from templ_pipeline.telemetry.events import _add_ids, _announce, _end_span, _ids, _record_error, _start_span
from templ_pipeline.telemetry.logs import get_logger
from templ_pipeline.telemetry.tracing import export_worker_span, get_tracer, is_exporting
from templ_pipeline.telemetry.worker_spans import WorkerSpan, span_carrier

__all__ = [
    "CampaignStats",
    "QuerySpan",
    "campaign_span",
    "record_campaign_done",
    "record_campaign_started",
    "record_query_finished",
    "record_query_resubmitted",
    "record_query_started",
    "record_worker_replaced",
    "start_query_span",
]

_log = get_logger("templ.campaign")
_SPEC = c.EVENT_SPECS_BY_NAME
_FAILED = c.QueryStatus.FAILED.value


# ---------------------------------------------------------------------------
# Events: one spec each in the catalog
# ---------------------------------------------------------------------------
def record_campaign_started(total: int | None, skipped: int, templates: int) -> None:
    """The expected total (NaN when unknown) and skipped gauges, span event and info log ``campaign.started``."""
    _announce(_SPEC[c.EVENT_CAMPAIGN_STARTED], {"total": total, "skipped": skipped, "templates": templates})


def record_query_started(index: int, in_flight: int) -> None:
    """The in-flight gauge and debug log ``campaign.query_started``."""
    _announce(_SPEC[c.EVENT_QUERY_STARTED], {"index": index, "in_flight": in_flight})


def record_query_finished(
    query_id: str, executor_kind: str, status: str, reason: str | None, seconds: float, conformers_requested: int,
    conformers: int, scored: int, failed: int, in_flight: int, detail: str = "",
) -> None:
    """``templ_campaign_queries_total{status,reason}`` (reason ``none`` when ok), the duration histogram, the
    shortfall counter when some but not all conformers were embedded, the in-flight gauge, and the log line
    ``campaign.query_finished`` (debug when ok, warning when failed)."""
    _announce(_SPEC[c.EVENT_QUERY_FINISHED], {
        "query_id": query_id, "executor_kind": executor_kind, "status": status,
        "reason": c.NO_REASON if reason is None else reason, "detail": detail, "duration_seconds": seconds,
        "conformers_requested": conformers_requested, "conformers": conformers, "scored": scored, "failed": failed,
        "shortfall": 0 < conformers < conformers_requested, "in_flight": in_flight})


def record_worker_replaced(executor_kind: str, reason: str, detail: str = "") -> None:
    """``templ_campaign_worker_replacements_total{reason}``, span event, warning log ``campaign.worker_replaced``."""
    _announce(_SPEC[c.EVENT_WORKER_REPLACED], {"executor_kind": executor_kind, "reason": reason, "detail": detail})


def record_query_resubmitted(executor_kind: str, index: int, reason: str, worker: str = "") -> None:
    """``templ_campaign_query_resubmissions_total{reason}``, span event, warning log ``campaign.query_resubmitted``."""
    _announce(_SPEC[c.EVENT_QUERY_RESUBMITTED], {"executor_kind": executor_kind, "index": index, "reason": reason,
                                                 "worker": worker})


def record_campaign_done(done: int, ok: int, failed: int, seconds: float, interrupted: bool) -> None:
    """The in-flight gauge back to 0, span event and info log ``campaign.done``."""
    _announce(_SPEC[c.EVENT_CAMPAIGN_DONE], {"done": done, "ok": ok, "failed": failed, "duration_seconds": seconds,
                                             "interrupted": interrupted})


# ---------------------------------------------------------------------------
# Spans
# ---------------------------------------------------------------------------
class QuerySpan:
    """One query's span, started by :func:`start_query_span` and ended by :meth:`end` (once).

    ``carrier`` is the W3C ``traceparent`` of the span for the worker; empty when no span was made.
    """

    __slots__ = ("index", "carrier", "_span", "_campaign")

    def __init__(self, index: int, span: Span | None, campaign: CampaignStats | None) -> None:
        self.index = index
        self._span = span
        self._campaign = campaign
        self.carrier: dict[str, str] = {} if span is None else span_carrier(span)

    @property
    def ended(self) -> bool:
        """Whether :meth:`end` ran (always true of a stand-in that has no span)."""
        return self._span is None

    def end(
        self,
        *,
        status: str,
        reason: str | None,
        conformers: int,
        scored: int,
        failed: int,
        worker_spans: Sequence[tuple[str, WorkerSpan, Mapping[str, Any]]] = (),
        query_id: str | None = None,
    ) -> None:
        """End the span with the query's outcome and export the spans its worker timed under ``carrier``.

        ``worker_spans`` are ``(name, record, attributes)``: ``conformers.generate`` and
        ``screen.score`` with attributes from the catalog (``process.pid`` is added from the
        record). A failed query's span has status ERROR. Later calls do nothing.
        """
        span = self._span
        if span is None:
            return
        self._span = None
        if self._campaign is not None:
            self._campaign._open.discard(self)
        attributes: dict[str, Any] = {c.ATTR_QUERY_STATUS: str(status), c.ATTR_QUERY_CONFORMERS: conformers,
                                      c.ATTR_QUERY_SCORED: scored, c.ATTR_QUERY_FAILED: failed}
        if reason is not None:
            attributes[c.ATTR_QUERY_REASON] = str(reason)
        if query_id is not None:
            attributes[c.ATTR_QUERY_ID] = query_id
        span.set_attributes(attributes)
        if status == _FAILED:
            span.set_status(Status(StatusCode.ERROR, str(reason)))
        span.end()
        for name, record, worker_attributes in worker_spans:
            export_worker_span(name, record, {**worker_attributes, c.ATTR_PROCESS_PID: record.pid})


def start_query_span(index: int) -> QuerySpan:
    """A ``screen.query`` span started now, a child of the open campaign's span (else of the current
    span), and not made current; a stand-in with an empty carrier when spans are not exported."""
    if not is_exporting():
        return QuerySpan(index, None, None)
    campaign = _current
    context = None if campaign is None else campaign._context  # None: the current context
    query = QuerySpan(index, get_tracer().start_span(c.SPAN_QUERY, context=context,
                                                     attributes={c.ATTR_QUERY_INDEX: index}), campaign)
    if campaign is not None:
        campaign._open.add(query)
    return query


_current: CampaignStats | None = None
"""The open campaign: the parent of query spans started from any thread, and their owner."""


def forget_open_campaign() -> None:
    """Drop the open campaign without ending it (for tests that leave one open)."""
    global _current
    _current = None


class CampaignStats:
    """Yielded by :func:`campaign_span`; set ``workers_granted``, ``done``, ``ok``, ``failed`` and
    ``interrupted`` before the block exits."""

    __slots__ = ("total", "templates", "workers_requested", "workers_granted", "done", "ok", "failed",
                 "interrupted", "_span", "_token", "_context", "_open", "_previous")

    def __init__(self, total: int | None, templates: int, workers_requested: int) -> None:
        self.total = total
        self.templates = templates
        self.workers_requested = workers_requested
        self.workers_granted: int | None = None
        self.done = 0
        self.ok = 0
        self.failed = 0
        self.interrupted = False
        self._open: set[QuerySpan] = set()

    def __enter__(self) -> CampaignStats:
        global _current
        attributes: dict[str, Any] = {c.ATTR_CAMPAIGN_TEMPLATES: self.templates,
                                      c.ATTR_WORKERS_REQUESTED: self.workers_requested}
        if self.total is not None:
            attributes[c.ATTR_CAMPAIGN_TOTAL] = self.total
        self._span, self._token, _t0 = _start_span(c.SPAN_CAMPAIGN, attributes)
        self._context = trace.set_span_in_context(self._span)
        self._previous, _current = _current, self
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        global _current
        span = self._span
        try:
            for query in list(self._open):  # the runner never ended them: a signal ended the campaign first
                query.end(status=c.QUERY_ABANDONED, reason=None, conformers=0, scored=0, failed=0)
            # a signal (templ_pipeline.interrupts.Interrupted) or Ctrl-C is a BaseException, not an error
            interrupted = self.interrupted or (exc is not None and not isinstance(exc, Exception))
            ids = _ids(span)
            if ids is not None:
                attributes: dict[str, Any] = {c.ATTR_CAMPAIGN_DONE: self.done, c.ATTR_CAMPAIGN_OK: self.ok,
                                              c.ATTR_CAMPAIGN_FAILED: self.failed,
                                              c.ATTR_CAMPAIGN_INTERRUPTED: interrupted}
                if self.workers_granted is not None:
                    attributes[c.ATTR_WORKERS_GRANTED] = self.workers_granted
                span.set_attributes(attributes)
            if isinstance(exc, Exception):
                _record_error(span, exc)
                _log.error("campaign.failed", **_add_ids({
                    "total": self.total, "templates": self.templates, "workers_requested": self.workers_requested,
                    "workers_granted": self.workers_granted, "done": self.done, "ok": self.ok,
                    "failed": self.failed, "error_type": type(exc).__name__, "error": str(exc)}, ids))
        finally:
            _current = self._previous
            _end_span(span, self._token)


class _NoopCampaign:
    """Disabled-telemetry stand-in: accepts the same attribute writes, does nothing."""

    __slots__ = ("total", "templates", "workers_requested", "workers_granted", "done", "ok", "failed",
                 "interrupted")

    def __init__(self, total: int | None, templates: int, workers_requested: int) -> None:
        self.total, self.templates, self.workers_requested = total, templates, workers_requested
        self.workers_granted: int | None = None
        self.done = self.ok = self.failed = 0
        self.interrupted = False

    def __enter__(self) -> _NoopCampaign:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        return None


def campaign_span(*, total: int | None, templates: int, workers_requested: int) -> CampaignStats:
    """Context manager for the span ``screen.campaign``, the parent of the query spans.

    On exit the span gets the attributes set on the yielded object; query spans still
    open are ended with status ``abandoned``; a signal (a ``BaseException`` that is not an
    ``Exception``) marks it interrupted; an escaping exception sets status ERROR, logs
    ``campaign.failed`` and re-raises. The campaign's metrics and its ``campaign.done``
    line come from its events, not from here.
    """
    if not state.enabled:
        return _NoopCampaign(total, templates, workers_requested)  # type: ignore[return-value]
    return CampaignStats(total, templates, workers_requested)
