"""Single source of truth for TEMPL telemetry: metrics, spans, log events.

Every metric, span, span attribute and log event the pipeline emits is declared
here. ``telemetry.metrics`` builds the Prometheus collectors by looping over
:data:`METRICS`; ``telemetry.events`` uses the attribute/event constants below.

Label values are bounded: each labelled metric declares, per label, the tuple of
values it may take (:attr:`MetricSpec.label_values`), taken from the executor's
vocabularies (``templ_pipeline.core.events``). Values outside the tuple
are folded into a catch-all (see :func:`normalize_label`) so a typo or an
unexpected exception type can never create an unbounded number of series.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Mapping

from templ_pipeline.core.events import (
    ExecutorKind,
    FailureReason,
    FallbackCause,
    FallbackReason,
    LimitName,
    ReductionReason,
    ResubmissionReason,
    TaskType,
    values,
)

MetricKind = Literal["counter", "gauge", "histogram"]

# ---------------------------------------------------------------------------
# Bounded label value sets (contract)
# ---------------------------------------------------------------------------
FALLBACK_REASONS: tuple[str, ...] = values(FallbackReason)
#: Which kernel limit caused a failed start; "none" when the fallback is not about a start.
FALLBACK_CAUSES: tuple[str, ...] = values(FallbackCause)
EXECUTOR_KINDS: tuple[str, ...] = values(ExecutorKind)
FAILURE_REASONS: tuple[str, ...] = values(FailureReason)
LIMIT_NAMES: tuple[str, ...] = values(LimitName)
REDUCTION_REASONS: tuple[str, ...] = values(ReductionReason)
#: Why a batch was run again: its worker died while running it, or died holding its result.
RESUBMISSION_REASONS: tuple[str, ...] = values(ResubmissionReason)

# Additional bounded sets (not part of the original contract; extend as needed).
OUTCOMES: tuple[str, ...] = ("ok", "error")
#: Task types the executor factory sizes pools for. Unknown values map to "other".
TASK_TYPES: tuple[str, ...] = values(TaskType)
DEGRADED_COMPONENTS: tuple[str, ...] = ("span_processor", "metrics_server", "log_handler")
DEGRADED_REASONS: tuple[str, ...] = (
    "thread_start_failed",
    "no_headroom",
    "resource_unavailable",  # OSError EAGAIN
    "out_of_memory",  # OSError ENOMEM
    "permission_denied",  # OSError EPERM
)

#: Catch-all value for a label whose bounded set has no "unknown" member.
OTHER = "other"
#: Catch-all value used when the bounded set already contains "unknown".
UNKNOWN = "unknown"

#: Labels whose value is not bounded by a tuple (one constant value per process).
FREE_LABELS: tuple[str, ...] = ("version",)


def _open(values: tuple[str, ...]) -> tuple[str, ...]:
    """``values`` plus the catch-all (``other``) unless it already has ``unknown``."""
    return values if UNKNOWN in values else values + (OTHER,)


def normalize_label(value: object, allowed: tuple[str, ...]) -> str:
    """Return ``value`` if it is in ``allowed``; otherwise the set's catch-all.

    The catch-all is ``"unknown"`` when the set contains it (fallback causes),
    else ``"other"``. Callers log the raw value next to the normalized one.
    """
    if value in allowed:
        return value  # type: ignore[return-value]
    return UNKNOWN if UNKNOWN in allowed else OTHER


# ---------------------------------------------------------------------------
# Specs
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class MetricSpec:
    """One Prometheus metric. ``name`` is the exposition name (counters end ``_total``)."""

    name: str
    kind: MetricKind
    help: str
    labels: tuple[str, ...]
    unit: str
    buckets: tuple[float, ...] | None = None
    #: attribute name on :class:`telemetry.metrics.TemplMetrics`
    short: str = ""
    #: label -> allowed values (labels in FREE_LABELS are absent)
    label_values: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: pre-create every label combination at 0 (only for small sets)
    initialize: bool = False
    #: read from the kernel at each scrape by a custom collector (no client object, no labels);
    #: no sample while the kernel has no value to give
    scraped: bool = False

    @property
    def client_name(self) -> str:
        """Name to pass to prometheus-client (which appends ``_total`` to counters itself)."""
        if self.kind == "counter" and self.name.endswith("_total"):
            return self.name[: -len("_total")]
        return self.name


@dataclass(frozen=True)
class SpanSpec:
    """One span: name, attributes it may carry, span events it may contain."""

    name: str
    help: str
    attributes: tuple[str, ...]
    events: tuple[str, ...]


@dataclass(frozen=True)
class LogEventSpec:
    """One structured log event (the ``event`` key) with its level and fields."""

    name: str
    level: str
    help: str
    fields: tuple[str, ...]


#: Metrics under the name the Prometheus client guidelines give every process, not templ_*.
STANDARD_NAMES: tuple[str, ...] = ("process_threads",)

# Histogram buckets (seconds). A batch is 5..50 conformers at 2-10 ms each.
BATCH_DURATION_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CALL_DURATION_BUCKETS: tuple[float, ...] = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

METRICS: tuple[MetricSpec, ...] = (
    MetricSpec(
        "templ_threads_active", "gauge",
        "OS threads of this process (/proc/self/status Threads:, else threading.active_count()), read at scrape time.",
        (), "", short="threads_active",
    ),
    MetricSpec(
        "process_threads", "gauge",
        "OS threads of this process (/proc/self/status Threads:), read at scrape time: templ_threads_active under "
        "the standard name that process dashboards query; NaN when /proc is unreadable.",
        (), "", short="process_threads",
    ),
    MetricSpec(
        "templ_thread_limit", "gauge",
        "Kernel limit on threads/tasks that applies to this process, per limit; NaN when unknown, +Inf when unlimited.",
        ("limit",), "", short="thread_limit", label_values={"limit": _open(LIMIT_NAMES)},
    ),
    MetricSpec(
        "templ_thread_headroom", "gauge",
        "Threads/tasks that can still be started before hitting each kernel limit; NaN when unknown.",
        ("limit",), "", short="thread_headroom", label_values={"limit": _open(LIMIT_NAMES)},
    ),
    MetricSpec(
        "templ_pids_cgroup_refused_forks_total", "counter",
        "Forks (new threads and processes) the pids cgroup controller has refused in this process's cgroup, from "
        "any process in it: the kernel's own count (pids.events max, summed over the pids levels), read at scrape "
        "time. It outlives the pressure: a refused pool start frees its tasks at once. No sample where no pids "
        "level is visible (root cgroup, no pids controller).",
        (), "", short="pids_refused_forks", scraped=True,
    ),
    MetricSpec(
        "templ_pids_cgroup_peak_tasks", "gauge",
        "Most tasks the pids cgroup has held at once (pids.peak of the level whose pids.max "
        'templ_thread_limit{limit="pids_cgroup"} reports), read at scrape time: it keeps a burst that ended '
        "between two scrapes. No sample where the kernel has no pids.peak or no pids level is visible.",
        (), "", short="pids_peak_tasks", scraped=True,
    ),
    MetricSpec(
        "templ_executor_workers_requested", "gauge",
        "Workers requested for the most recent executor of this task type.",
        ("task_type",), "", short="workers_requested", label_values={"task_type": _open(TASK_TYPES)},
    ),
    MetricSpec(
        "templ_executor_workers_granted", "gauge",
        "Workers granted (after limit-aware sizing) for the most recent executor of this task type.",
        ("task_type",), "", short="workers_granted", label_values={"task_type": _open(TASK_TYPES)},
    ),
    MetricSpec(
        "templ_executor_worker_reductions_total", "counter",
        "Times the executor factory granted fewer workers than requested, by reason.",
        ("task_type", "reason"), "", short="worker_reductions",
        label_values={"task_type": _open(TASK_TYPES), "reason": _open(REDUCTION_REASONS)},
    ),
    MetricSpec(
        "templ_executor_fallbacks_total", "counter",
        "Executor fallbacks down the ladder (dask -> process -> thread -> fewer workers -> sequential).",
        ("from_kind", "to_kind", "reason", "cause"), "", short="fallbacks",
        label_values={
            "from_kind": _open(EXECUTOR_KINDS),
            "to_kind": _open(EXECUTOR_KINDS),
            "reason": _open(FALLBACK_REASONS),
            "cause": _open(FALLBACK_CAUSES),
        },
    ),
    MetricSpec(
        "templ_select_best_batches_total", "counter",
        "Conformer batches scored by select_best, by the executor kind that finished the batch.",
        ("executor_kind",), "", short="batches",
        label_values={"executor_kind": _open(EXECUTOR_KINDS)}, initialize=True,
    ),
    MetricSpec(
        "templ_select_best_batch_duration_seconds", "histogram",
        "Wall time to score one conformer batch (exemplar: trace_id/span_id of the batch span).",
        ("executor_kind",), "seconds", buckets=BATCH_DURATION_BUCKETS, short="batch_duration",
        label_values={"executor_kind": _open(EXECUTOR_KINDS)},
    ),
    MetricSpec(
        "templ_conformers_scored_total", "counter",
        "Conformers scored successfully.",
        (), "", short="conformers_scored",
    ),
    MetricSpec(
        "templ_conformers_failed_total", "counter",
        "Conformers that could not be scored, by reason.",
        ("reason",), "", short="conformers_failed",
        label_values={"reason": _open(FAILURE_REASONS)}, initialize=True,
    ),
    MetricSpec(
        "templ_select_best_calls_total", "counter",
        "select_best calls by outcome (ok|error).",
        ("outcome",), "", short="select_best_calls",
        label_values={"outcome": _open(OUTCOMES)}, initialize=True,
    ),
    MetricSpec(
        "templ_select_best_duration_seconds", "histogram",
        "Wall time of one select_best call (exemplar: trace_id/span_id of the select_best span).",
        (), "seconds", buckets=CALL_DURATION_BUCKETS, short="select_best_duration",
    ),
    MetricSpec(
        "templ_executor_pool_restarts_total", "counter",
        "Worker pools found broken and replaced, by executor kind.",
        ("executor_kind",), "", short="pool_restarts",
        label_values={"executor_kind": _open(EXECUTOR_KINDS)},
    ),
    MetricSpec(
        "templ_executor_batch_resubmissions_total", "counter",
        "Batches run again because the worker running them (or holding their result) was lost; "
        "each batch is still counted once, when its result arrives.",
        ("executor_kind", "reason"), "", short="batch_resubmissions",
        label_values={"executor_kind": _open(EXECUTOR_KINDS), "reason": _open(RESUBMISSION_REASONS)},
    ),
    MetricSpec(
        "templ_telemetry_degraded_total", "counter",
        "Telemetry components that could not start normally and run degraded (e.g. synchronous span export).",
        ("component", "reason"), "", short="telemetry_degraded",
        label_values={"component": _open(DEGRADED_COMPONENTS), "reason": _open(DEGRADED_REASONS)},
    ),
    MetricSpec(
        "templ_build_info", "gauge",
        "Build information; always 1, the version is in the label.",
        ("version",), "", short="build_info",
    ),
)

METRICS_BY_SHORT: Mapping[str, MetricSpec] = {m.short: m for m in METRICS}
METRICS_BY_NAME: Mapping[str, MetricSpec] = {m.name: m for m in METRICS}

# ---------------------------------------------------------------------------
# Span names, span event names, attribute keys (OpenTelemetry style, templ.* namespace)
# ---------------------------------------------------------------------------
SPAN_SELECT_BEST = "select_best"
SPAN_BATCH = "select_best.batch"
SPAN_CONFORMERS = "conformers.generate"

EVENT_WORKERS_REDUCED = "executor.workers_reduced"
EVENT_FALLBACK = "executor.fallback"
EVENT_EXECUTOR_CREATED = "executor.created"
EVENT_POOL_RESTARTED = "executor.pool_restarted"
EVENT_BATCH_RESUBMITTED = "executor.batch_resubmitted"

ATTR_TASK_TYPE = "templ.executor.task_type"
ATTR_EXECUTOR_KIND = "templ.executor.kind"
ATTR_WORKERS = "templ.executor.workers"
ATTR_WORKERS_REQUESTED = "templ.executor.workers_requested"
ATTR_WORKERS_GRANTED = "templ.executor.workers_granted"
ATTR_REUSED = "templ.executor.reused"
ATTR_REASON = "templ.executor.reason"
ATTR_CAUSE = "templ.executor.cause"
ATTR_DETAIL = "templ.executor.detail"
ATTR_FROM_KIND = "templ.executor.from_kind"
ATTR_TO_KIND = "templ.executor.to_kind"
ATTR_WORKER = "templ.executor.worker"  # address of a lost Dask worker
ATTR_HEADROOM = "templ.thread.headroom"
ATTR_BATCH_INDEX = "templ.batch.index"
ATTR_BATCH_SIZE = "templ.batch.size"
ATTR_BATCH_SCORED = "templ.batch.scored"
ATTR_BATCH_FAILED = "templ.batch.failed"
ATTR_PROCESS_PID = "process.pid"  # OpenTelemetry semantic convention: the worker that ran the batch
#: Span attributes taken from the OpenTelemetry semantic conventions rather than the templ.* namespace.
SEMCONV_ATTRIBUTES: tuple[str, ...] = (ATTR_PROCESS_PID,)
ATTR_N_CONFORMERS = "templ.select_best.n_conformers"
ATTR_SCORED = "templ.select_best.scored"
ATTR_FAILED = "templ.select_best.failed"
ATTR_OUTCOME = "templ.select_best.outcome"
ATTR_CONFORMERS_REQUESTED = "templ.conformers.requested"
ATTR_CONFORMERS_GENERATED = "templ.conformers.generated"

_EXECUTOR_EVENTS = (EVENT_WORKERS_REDUCED, EVENT_FALLBACK, EVENT_EXECUTOR_CREATED, EVENT_POOL_RESTARTED,
                    EVENT_BATCH_RESUBMITTED, "exception")

SPANS: tuple[SpanSpec, ...] = (
    SpanSpec(
        SPAN_SELECT_BEST,
        "One select_best call: scores all conformers against the template, parent of the batch spans.",
        (ATTR_N_CONFORMERS, ATTR_WORKERS_REQUESTED, ATTR_WORKERS_GRANTED, ATTR_EXECUTOR_KIND, ATTR_SCORED, ATTR_FAILED,
         ATTR_OUTCOME),
        _EXECUTOR_EVENTS,
    ),
    SpanSpec(
        SPAN_BATCH,
        "One conformer batch scored on the worker pool (child of select_best).",
        (ATTR_BATCH_INDEX, ATTR_BATCH_SIZE, ATTR_EXECUTOR_KIND, ATTR_BATCH_SCORED, ATTR_BATCH_FAILED,
         ATTR_PROCESS_PID),
        _EXECUTOR_EVENTS,
    ),
    SpanSpec(
        SPAN_CONFORMERS,
        "Conformer generation for one query (ETKDG on RDKit's native threads, sized by the thread grant).",
        (ATTR_CONFORMERS_REQUESTED, ATTR_CONFORMERS_GENERATED, ATTR_WORKERS_REQUESTED, ATTR_WORKERS_GRANTED,
         ATTR_OUTCOME),
        _EXECUTOR_EVENTS,
    ),
)

@dataclass(frozen=True)
class EventField:
    """One field of an executor event: its log key, its span attribute, and its bounded values if any.

    A field with ``values`` is normalised against them (see :func:`normalize_label`);
    with ``label`` it is also a label of the event's counter.
    """

    name: str
    attribute: str
    values: tuple[str, ...] | None = None
    label: bool = False


@dataclass(frozen=True)
class EventSpec:
    """One executor event, declared once: its span event and log event (one name), fields and counter."""

    name: str
    level: str
    help: str
    fields: tuple[EventField, ...]
    #: short name (:attr:`MetricSpec.short`) of the counter incremented once per event, if any
    counter: str | None = None
    #: whether the event carries the exception that caused it (recorded on the span, logged by type)
    has_error: bool = False


def _field(name: str, attribute: str, vocabulary: tuple[str, ...] | None = None, label: bool = False) -> EventField:
    return EventField(name, attribute, None if vocabulary is None else _open(vocabulary), label)


_TASK_TYPE = _field("task_type", ATTR_TASK_TYPE, TASK_TYPES, label=True)
_DETAIL = _field("detail", ATTR_DETAIL)
_KIND = _field("executor_kind", ATTR_EXECUTOR_KIND, EXECUTOR_KINDS, label=True)

EVENT_SPECS: tuple[EventSpec, ...] = (
    EventSpec(
        EVENT_WORKERS_REDUCED, "warning", "The executor factory granted fewer workers than requested.",
        (_TASK_TYPE, _field("workers_requested", ATTR_WORKERS_REQUESTED),
         _field("workers_granted", ATTR_WORKERS_GRANTED),
         _field("reason", ATTR_REASON, REDUCTION_REASONS, label=True), _DETAIL, _field("headroom", ATTR_HEADROOM)),
        counter="worker_reductions",
    ),
    EventSpec(
        EVENT_FALLBACK, "warning", "The executor fell back one step down the ladder.",
        (_field("from_kind", ATTR_FROM_KIND, EXECUTOR_KINDS, label=True),
         _field("to_kind", ATTR_TO_KIND, EXECUTOR_KINDS, label=True),
         _field("reason", ATTR_REASON, FALLBACK_REASONS, label=True),
         _field("cause", ATTR_CAUSE, FALLBACK_CAUSES, label=True), _DETAIL),
        counter="fallbacks", has_error=True,
    ),
    EventSpec(
        EVENT_EXECUTOR_CREATED, "info", "An executor was created or reused.",
        (_KIND, _field("workers", ATTR_WORKERS), _TASK_TYPE, _field("reused", ATTR_REUSED)),
    ),
    EventSpec(
        EVENT_POOL_RESTARTED, "warning", "A broken worker pool was replaced.",
        (_KIND, _field("reason", ATTR_REASON, FALLBACK_REASONS), _DETAIL),
        counter="pool_restarts", has_error=True,
    ),
    EventSpec(
        EVENT_BATCH_RESUBMITTED, "warning",
        "A batch is run again because its worker was lost (Dask reschedules it; the driver counts it once).",
        (_KIND, _field("index", ATTR_BATCH_INDEX), _field("reason", ATTR_REASON, RESUBMISSION_REASONS, label=True),
         _field("worker", ATTR_WORKER)),
        counter="batch_resubmissions",
    ),
)
EVENT_SPECS_BY_NAME: Mapping[str, EventSpec] = {e.name: e for e in EVENT_SPECS}

#: Attributes carried by each span event (derived from EVENT_SPECS).
SPAN_EVENT_ATTRIBUTES: Mapping[str, tuple[str, ...]] = {
    e.name: tuple(f.attribute for f in e.fields) for e in EVENT_SPECS
}


@dataclass(frozen=True)
class RenderedEvent:
    """An event's values as its counter's labels, its span attributes and its log fields."""

    labels: dict[str, str]
    attributes: dict[str, object]
    log_fields: dict[str, object]


def render(spec: EventSpec, values: Mapping[str, object]) -> RenderedEvent:
    """Labels, span attributes and log fields of one event, from its spec.

    Bounded values are normalised (an unknown one becomes the catch-all, and the log
    line keeps the raw value as ``<field>_raw``); ``None`` values are left out of the
    span attributes (OpenTelemetry attributes cannot be null) but kept in the log.
    """
    labels: dict[str, str] = {}
    attributes: dict[str, object] = {}
    log_fields: dict[str, object] = {}
    for f in spec.fields:
        value = values.get(f.name)
        if f.values is not None:
            raw = str(value)
            value = normalize_label(raw, f.values)
            if value != raw:
                log_fields[f.name + "_raw"] = raw
            if f.label:
                labels[f.name] = value
        if value is not None:
            attributes[f.attribute] = value
        log_fields[f.name] = value
    return RenderedEvent(labels, attributes, log_fields)


# ---------------------------------------------------------------------------
# Log events
# ---------------------------------------------------------------------------
_TRACE_FIELDS = ("trace_id", "span_id")

def _log_spec(event: EventSpec) -> LogEventSpec:
    errors = ("error_type", "error") if event.has_error else ()
    return LogEventSpec(event.name, event.level, event.help, tuple(f.name for f in event.fields) + errors
                        + _TRACE_FIELDS)


LOG_EVENTS: tuple[LogEventSpec, ...] = tuple(_log_spec(event) for event in EVENT_SPECS) + (
    LogEventSpec(
        "select_best.batch_done", "info",
        "One conformer batch finished.",
        ("index", "size", "scored", "failed", "duration_seconds", "executor_kind") + _TRACE_FIELDS,
    ),
    LogEventSpec(
        "select_best.batch_failed", "error",
        "An exception escaped a conformer batch.",
        ("index", "size", "duration_seconds", "executor_kind", "error_type", "error") + _TRACE_FIELDS,
    ),
    LogEventSpec(
        "select_best.done", "info",
        "A select_best call finished.",
        ("n_conformers", "workers_requested", "workers_granted", "executor_kind", "scored", "failed",
         "failed_by_reason", "duration_seconds", "outcome") + _TRACE_FIELDS,
    ),
    LogEventSpec(
        "select_best.failed", "error",
        "An exception escaped select_best.",
        ("n_conformers", "workers_requested", "workers_granted", "executor_kind", "scored", "duration_seconds",
         "outcome", "error_type", "error") + _TRACE_FIELDS,
    ),
    LogEventSpec(
        "conformers.done", "info",
        "Conformer generation for one query finished (threads: the RDKit threads of the attempt that worked).",
        ("requested", "generated", "threads_requested", "threads", "duration_seconds", "outcome") + _TRACE_FIELDS,
    ),
    LogEventSpec(
        "conformers.embedding_inline", "warning",
        "No thread could start to run the embedding off the main thread; it runs there, and a signal "
        "takes effect when it returns (logged once per process).",
        ("error", "note"),
    ),
    LogEventSpec(
        "conformers.failed", "error",
        "An exception escaped conformer generation.",
        ("requested", "threads_requested", "duration_seconds", "outcome", "error_type", "error") + _TRACE_FIELDS,
    ),
    LogEventSpec(
        "telemetry.degraded", "warning",
        "A telemetry component could not start normally and runs degraded (logged once per component).",
        ("component", "reason", "error_type", "error"),
    ),
    LogEventSpec(
        "telemetry.metrics_serving", "info",
        "The /metrics and /healthz endpoint is up.",
        ("url",),
    ),
    LogEventSpec(
        "telemetry.metrics_server_unavailable", "warning",
        "The default metrics address could not be bound; the run goes on without /metrics.",
        ("error", "note"),
    ),
    LogEventSpec(
        "telemetry.metrics_exposed", "warning",
        "/metrics listens on a non-loopback address, as the user asked.",
        ("address", "note"),
    ),
    LogEventSpec(
        "telemetry.holding_metrics", "info",
        "The run is done; /metrics stays up for --hold-metrics seconds.",
        ("url", "seconds"),
    ),
    LogEventSpec(
        "telemetry.export_failed", "warning",
        "A span exporter failed (for example an unreachable OTLP endpoint); logged once, spans are dropped.",
        ("exporter", "target", "error", "note"),
    ),
    LogEventSpec(
        "telemetry.push_failed", "warning",
        "Pushing the final metrics to the Pushgateway failed; the run's result stands.",
        ("url", "error"),
    ),
)

LOG_EVENTS_BY_NAME: Mapping[str, LogEventSpec] = {e.name: e for e in LOG_EVENTS}
