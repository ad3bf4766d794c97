"""Single source of truth for TEMPL telemetry: metrics, spans, log events.

Every metric, span, span attribute and log event the pipeline emits is declared
here. ``telemetry.metrics`` builds the Prometheus collectors by looping over
:data:`METRICS`; ``telemetry.recorder`` renders every event through its spec below.

Label values are bounded: each labelled metric declares, per label, the tuple of
values it may take (:attr:`MetricSpec.label_values`), taken from the executor's
vocabularies (``templ_pipeline.core.events``). Values outside the tuple
are folded into a catch-all (see :func:`normalize_label`) so a typo or an
unexpected exception type can never create an unbounded number of series.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

from templ_pipeline.core import events as ev
from templ_pipeline.core.events import (
    REFUSED_STARTS,
    ExecutorKind,
    FailureReason,
    FallbackCause,
    FallbackReason,
    LimitName,
    PinFallback,
    PoseMethod,
    PreparationAction,
    QueryFailureReason,
    QueryStatus,
    ReductionReason,
    ReplacementReason,
    ResubmissionReason,
    StartKind,
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
#: Reductions that are sizing decisions, not refusals: routine, so logged at info.
SIZING_REASONS: tuple[str, ...] = (ReductionReason.SMALL_WORK.value, ReductionReason.CPU_LIMIT.value,
                                   ReductionReason.POOL_STARTING.value)
#: Why a campaign query was run again (a Dask task of several queries can also be cancelled or given up).
RESUBMISSION_REASONS: tuple[str, ...] = values(ResubmissionReason)
#: Why a batch was run again: its worker died while running it, or died holding its result.
BATCH_RESUBMISSION_REASONS: tuple[str, ...] = (ResubmissionReason.WORKER_LOST.value,
                                               ResubmissionReason.RESULT_LOST.value)

#: How a campaign query ended.
QUERY_STATUSES: tuple[str, ...] = values(QueryStatus)
#: The reason label of a query that did not fail: every finished query has one reason, so
#: ``sum by (reason)`` over the queries counter adds up to all queries.
NO_REASON = "none"
#: Why a campaign query failed, or ``none`` when it did not.
QUERY_REASONS: tuple[str, ...] = values(QueryFailureReason) + (NO_REASON,)
#: Why a campaign worker was replaced.
REPLACEMENT_REASONS: tuple[str, ...] = values(ReplacementReason)
#: What query preparation did to a query (a query may count under several).
PREPARATION_ACTIONS: tuple[str, ...] = values(PreparationAction)
#: How a query's kept pose was made from its template, and why its core was not pinned whole.
POSE_METHODS: tuple[str, ...] = values(PoseMethod)
PIN_FALLBACKS: tuple[str, ...] = values(PinFallback)

# Additional bounded sets (not part of the original contract; extend as needed).
OUTCOMES: tuple[str, ...] = ("ok", "error")
#: Task types the executor factory sizes pools for. Unknown values map to "other".
TASK_TYPES: tuple[str, ...] = values(TaskType)
#: What the kernel refused to start (``templ_start_refusals_total``).
START_KINDS: tuple[str, ...] = values(StartKind)
DEGRADED_COMPONENTS: tuple[str, ...] = ("span_processor", "metrics_server", "log_handler", "pushgateway")
DEGRADED_REASONS: tuple[str, ...] = (
    "push_failed",  # the Pushgateway refused or did not answer a push
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

#: The label that tells one job's delivered series from another's on a shared node: on the
#: textfile's samples, in the Pushgateway grouping key and on the file_sd target. Its value is
#: the batch scheduler's job id, else the run id (one value per process, like ``version``).
JOB_LABEL = "job_id"
#: Labels whose value is not bounded by a tuple (one constant value per process, on info metrics).
FREE_LABELS: tuple[str, ...] = ("version", "run_id", JOB_LABEL, "host")


def _open(values: tuple[str, ...]) -> tuple[str, ...]:
    """``values`` plus the catch-all (``other``) unless it already has ``unknown``."""
    return values if UNKNOWN in values else values + (OTHER,)


def normalize_label(value: object, allowed: tuple[str, ...]) -> str:
    """Return ``value`` if it is in ``allowed``; otherwise the set's catch-all.

    The catch-all is ``"unknown"`` when the set contains it (fallback causes),
    else ``"other"``. Callers log the raw value next to the normalized one.
    """
    if value in allowed:
        return str(value)
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
    #: pre-create label combinations at 0, so dashboards show 0 rather than no data and ``increase()``
    #: sees the first event: those in ``combinations``, else every combination of the declared values
    initialize: bool = False
    #: the label value tuples that can occur together, when not every combination can
    combinations: tuple[tuple[str, ...], ...] | None = None
    #: how ``combinations`` is chosen, when it is a rule rather than a short list (for the docs)
    combinations_rule: str = ""
    #: the process's state now (thread headroom, live thread counts, workers of the current pool): left
    #: out of the textfile and the Pushgateway push, which outlive the process, so that a finished
    #: job's last headroom cannot keep an alert firing
    live: bool = False
    #: read from the kernel at each scrape by a custom collector over the thread manager's cached
    #: snapshot (no client object); no sample while the kernel has no value to give
    scraped: bool = False
    #: an unlabelled gauge that is NaN (unknown) until it is first set, rather than 0
    nan_until_set: bool = False

    @property
    def client_name(self) -> str:
        """Name to pass to prometheus-client (which appends ``_total`` to counters itself)."""
        if self.kind == "counter" and self.name.endswith("_total"):
            return self.name[: -len("_total")]
        return self.name

    def initial_label_values(self) -> tuple[tuple[str, ...], ...]:
        """The label value tuples exported at 0 from the start (none unless ``initialize``).

        ``combinations`` when declared, else every combination of the declared values;
        the catch-all never, as it appears only when used.
        """
        if not (self.initialize and self.labels):
            return ()
        if self.combinations is not None:
            return self.combinations
        value_sets = [tuple(v for v in self.label_values[label] if v != OTHER) for label in self.labels]
        return tuple(itertools.product(*value_sets))


@dataclass(frozen=True)
class SpanSpec:
    """One span: name, attributes it may carry, span events it may contain."""

    name: str
    help: str
    attributes: tuple[str, ...]
    events: tuple[str, ...]


#: Log levels, in order.
LOG_LEVELS: tuple[str, ...] = ("debug", "info", "warning", "error", "critical")


@dataclass(frozen=True)
class LogEventSpec:
    """One structured log event (the ``event`` key) with its level and fields."""

    name: str
    level: str
    help: str
    fields: tuple[str, ...]


#: Metrics under the name the Prometheus client guidelines give every process, not templ_*.
STANDARD_NAMES: tuple[str, ...] = ("process_threads",)

# Histogram buckets (seconds). A batch is 5..50 conformers at 0.2-2 ms each (measured here: a
# 10-conformer batch of the bundled examples takes 2-8 ms in a worker): most batches end below 25 ms,
# so the buckets are close together there, or every quantile interpolates inside one bucket.
BATCH_DURATION_BUCKETS: tuple[float, ...] = (0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.05,
                                             0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CALL_DURATION_BUCKETS: tuple[float, ...] = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
#: A campaign query: an invalid SMILES fails in well under 0.1 s, a small ligand with a few
#: conformers takes about a second, a large flexible one with hundreds up to tens of minutes.
#: The last bucket is the longest query the campaign alerts expect (their stall window).
QUERY_DURATION_BUCKETS: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
                                             1200.0, 1800.0)
#: Choosing a query's templates: the 2D prefilter over a library of thousands takes milliseconds, the MCS
#: searches on its best candidates tens to hundreds (each bounded by --mcs-timeout).
TEMPLATE_SELECTION_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: The (status, reason) pairs a finished query can have: ok has no reason, a failure always has one.
QUERY_OUTCOMES: tuple[tuple[str, str], ...] = ((QueryStatus.OK.value, NO_REASON),) + tuple(
    (QueryStatus.FAILED.value, reason) for reason in values(QueryFailureReason))

#: The kernel limits and filters that can refuse a pool start (the causes of a start failure).
_START_CAUSES: tuple[str, ...] = LIMIT_NAMES + (FallbackCause.SECCOMP.value, FallbackCause.UNKNOWN.value)
_NO_CAUSE: tuple[str, ...] = (FallbackCause.NONE.value,)
_DASK, _PROCESS, _THREAD, _SEQUENTIAL = (ExecutorKind.DASK.value, ExecutorKind.PROCESS.value,
                                         ExecutorKind.THREAD.value, ExecutorKind.SEQUENTIAL.value)
#: The fallbacks the executor, the conformer generator and the campaign pool emit, as
#: (from kinds, to kinds, reasons, causes): each product is pre-created at 0. A step goes down the
#: ladder (dask -> process -> sequential; embedding threads -> one) or to fewer workers of the same kind; start
#: failures carry the limit that refused the start, the other reasons carry none. The full product
#: of the four label sets (1296 series) is mostly impossible steps; reasons no code path emits
#: (submit_failed, manager_unavailable) are left to appear when used.
FALLBACK_PATHS: tuple[tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], tuple[str, ...]], ...] = (
    ((_PROCESS,), (_PROCESS, _SEQUENTIAL), (FallbackReason.PROCESS_START_FAILED.value,), _START_CAUSES),
    ((_THREAD,), (_THREAD, _SEQUENTIAL), (FallbackReason.THREAD_START_FAILED.value,), _START_CAUSES),
    ((_DASK, _PROCESS, _THREAD), (_SEQUENTIAL,), (FallbackReason.NO_HEADROOM.value,), LIMIT_NAMES + _NO_CAUSE),
    ((_DASK,), (_PROCESS,), (FallbackReason.NO_HEADROOM.value,), LIMIT_NAMES + _NO_CAUSE),  # no LocalCluster fits
    ((_PROCESS,), (_PROCESS, _SEQUENTIAL), (FallbackReason.BROKEN_POOL.value,), _NO_CAUSE),
    ((_DASK, _PROCESS), (_SEQUENTIAL,), (FallbackReason.DAEMON_PROCESS.value,), _NO_CAUSE),
    ((_DASK,), (_PROCESS, _SEQUENTIAL), (FallbackReason.SCHEDULER_UNREACHABLE.value,
                                                FallbackReason.SCHEDULER_LOST.value, FallbackReason.NO_WORKERS.value,
                                                FallbackReason.BROKEN_POOL.value), _NO_CAUSE),
)
FALLBACK_COMBINATIONS: tuple[tuple[str, str, str, str], ...] = tuple(
    combo for path in FALLBACK_PATHS for combo in itertools.product(*path))
#: Pool kinds that can be found broken and replaced (the process pool backend).
RESTARTED_KINDS: tuple[tuple[str], ...] = ((_PROCESS,),)
#: Only Dask reschedules a batch whose worker was lost.
RESUBMISSION_COMBINATIONS: tuple[tuple[str, str], ...] = tuple((_DASK, r) for r in BATCH_RESUBMISSION_REASONS)

METRICS: tuple[MetricSpec, ...] = (
    MetricSpec(
        "templ_threads_active", "gauge",
        "OS threads of this process (/proc/self/status Threads:, else threading.active_count()), read at scrape time.",
        (), "", short="threads_active", live=True,
    ),
    MetricSpec(
        "process_threads", "gauge",
        "OS threads of this process (/proc/self/status Threads:), read at scrape time: templ_threads_active under "
        "the standard name that process dashboards query; NaN when /proc is unreadable.",
        (), "", short="process_threads", live=True,
    ),
    MetricSpec(
        "templ_thread_limit", "gauge",
        "Kernel limit on threads/tasks that applies to this process, per limit, read at scrape time; NaN when "
        "unknown, +Inf when unlimited.",
        ("limit",), "", short="thread_limit", label_values={"limit": _open(LIMIT_NAMES)}, live=True, scraped=True,
    ),
    MetricSpec(
        "templ_thread_headroom", "gauge",
        "Threads/tasks that can still be started before hitting each kernel limit, read at scrape time (it follows "
        "what other processes on the host start too); NaN when unknown, +Inf when the limit is not enforced.",
        ("limit",), "", short="thread_headroom", label_values={"limit": _open(LIMIT_NAMES)}, live=True, scraped=True,
    ),
    MetricSpec(
        "templ_pids_cgroup_refused_forks_total", "counter",
        "Forks (new threads and processes) the pids cgroup controller has refused in this process's cgroup, from "
        "any process in it: the kernel's own count (pids.events max, summed over every pids level this process has "
        "been in, so it never goes down when the process moves to another cgroup), read at scrape time. It "
        "outlives the pressure: a refused pool start frees its tasks at once. No sample where no pids "
        "level is visible (root cgroup, no pids controller).",
        (), "", short="pids_refused_forks", scraped=True,
    ),
    MetricSpec(
        "templ_pids_cgroup_peak_tasks", "gauge",
        "Most tasks the pids cgroup has held at once (pids.peak of the level whose pids.max "
        'templ_thread_limit{limit="pids_cgroup"} reports), read at scrape time: it keeps a burst that ended '
        "between two scrapes. No sample where the kernel has no pids.peak or no pids level is visible.",
        (), "", short="pids_peak_tasks", scraped=True, live=True,
    ),
    MetricSpec(
        "templ_executor_workers_requested", "gauge",
        "Workers requested for the most recent executor of this task type.",
        ("task_type",), "", short="workers_requested", label_values={"task_type": _open(TASK_TYPES)}, live=True,
    ),
    MetricSpec(
        "templ_executor_workers_granted", "gauge",
        "Workers granted (after limit-aware sizing) for the most recent executor of this task type.",
        ("task_type",), "", short="workers_granted", label_values={"task_type": _open(TASK_TYPES)}, live=True,
    ),
    MetricSpec(
        "templ_executor_worker_reductions_total", "counter",
        "Times the executor factory granted fewer workers than requested, by reason.",
        ("task_type", "reason"), "", short="worker_reductions",
        label_values={"task_type": _open(TASK_TYPES), "reason": _open(REDUCTION_REASONS)}, initialize=True,
    ),
    MetricSpec(
        "templ_executor_fallbacks_total", "counter",
        "Executor fallbacks down the ladder (dask -> process -> fewer processes -> sequential; embedding threads "
        "-> fewer -> one).",
        ("from_kind", "to_kind", "reason", "cause"), "", short="fallbacks",
        label_values={
            "from_kind": _open(EXECUTOR_KINDS),
            "to_kind": _open(EXECUTOR_KINDS),
            "reason": _open(FALLBACK_REASONS),
            "cause": _open(FALLBACK_CAUSES),
        },
        initialize=True, combinations=FALLBACK_COMBINATIONS,
        combinations_rule="The steps the executor can take start at 0: a process start refused by a limit "
                          "(process -> process or sequential) or an embedding thread start (thread -> thread or "
                          "sequential), each with every limit, seccomp and unknown as the cause; no headroom "
                          "(dask, process or thread -> sequential; dask -> process for a campaign) with each "
                          "limit or none; a broken pool (process -> process or sequential), a "
                          "daemon process, and a Dask scheduler that is unreachable, lost or without workers "
                          "(dask -> process or sequential), with cause none.",
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
        "templ_conformer_generations_total", "counter",
        "Conformer generations of select-best queries (ETKDG, in this process) by outcome (ok|error); campaign "
        "queries, which embed in their workers, count in templ_campaign_queries_total instead.",
        ("outcome",), "", short="conformer_generations",
        label_values={"outcome": _open(OUTCOMES)}, initialize=True,
    ),
    MetricSpec(
        "templ_conformer_generations_in_progress", "gauge",
        "Conformer generations running in this process now: ETKDG reports no progress of its own, so a job "
        "that embeds for many minutes is busy, not stalled, while this is above 0. Pushed while the run lasts "
        "(0 in its final push).",
        (), "", short="conformer_generations_in_progress",
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
        label_values={"executor_kind": _open(EXECUTOR_KINDS)}, initialize=True, combinations=RESTARTED_KINDS,
    ),
    MetricSpec(
        "templ_executor_batch_resubmissions_total", "counter",
        "Batches run again because the worker running them (or holding their result) was lost; "
        "each batch is still counted once, when its result arrives.",
        ("executor_kind", "reason"), "", short="batch_resubmissions",
        label_values={"executor_kind": _open(EXECUTOR_KINDS), "reason": _open(BATCH_RESUBMISSION_REASONS)},
        initialize=True, combinations=RESUBMISSION_COMBINATIONS,
    ),
    MetricSpec(
        "templ_campaign_queries_total", "counter",
        "Queries of a screening campaign finished in this run, by status (ok|failed) and reason (why it failed; "
        "none for ok). Queries skipped by --resume are in templ_campaign_queries_skipped instead.",
        ("status", "reason"), "", short="campaign_queries",
        label_values={"status": _open(QUERY_STATUSES), "reason": _open(QUERY_REASONS)},
        initialize=True, combinations=QUERY_OUTCOMES,
    ),
    MetricSpec(
        "templ_campaign_queries_in_flight", "gauge",
        "Queries of the campaign handed to a worker whose result has not arrived yet: each worker runs one and "
        "holds up to three waiting, one at the most in the campaign's last queries; 0 once the campaign is done.",
        (), "", short="campaign_in_flight", live=True,
    ),
    MetricSpec(
        "templ_campaign_queries_expected", "gauge",
        "Queries in the campaign's input, those skipped by --resume included; NaN until a campaign starts, and "
        "for a campaign whose input size is not known up front.",
        (), "", short="campaign_expected", nan_until_set=True,
    ),
    MetricSpec(
        "templ_campaign_queries_skipped", "gauge",
        "Queries of the input that an earlier run already finished (--resume), so this run does not run them.",
        (), "", short="campaign_skipped",
    ),
    MetricSpec(
        "templ_campaign_query_duration_seconds", "histogram",
        "Wall time of one campaign query in its worker (conformer generation and scoring), by status.",
        ("status",), "seconds", buckets=QUERY_DURATION_BUCKETS, short="campaign_query_duration",
        label_values={"status": _open(QUERY_STATUSES)}, initialize=True,
    ),
    MetricSpec(
        "templ_campaign_worker_replacements_total", "counter",
        "Campaign workers ended (their query ran over the time limit), found dead, or recycled between queries "
        "(their memory grew, or they ran their quota of queries), and replaced, by reason.",
        ("reason",), "", short="campaign_worker_replacements",
        label_values={"reason": _open(REPLACEMENT_REASONS)}, initialize=True,
    ),
    MetricSpec(
        "templ_campaign_query_resubmissions_total", "counter",
        "Campaign queries run again because the Dask worker running them (worker_lost) or holding their result "
        "(result_lost) left the cluster, or the Dask task they shared with other queries was cancelled or given up "
        "(task_cancelled); each query still has one row, counted once in templ_campaign_queries_total.",
        ("reason",), "", short="campaign_query_resubmissions",
        label_values={"reason": _open(RESUBMISSION_REASONS)}, initialize=True,
    ),
    MetricSpec(
        "templ_campaign_queries_short_of_conformers_total", "counter",
        "Campaign queries that got some conformers but fewer than requested (ETKDG embedded fewer); their poses "
        "come from fewer candidates. A query with none is a failure (embedding_failed), not counted here.",
        (), "", short="campaign_shortfalls",
    ),
    MetricSpec(
        "templ_query_preparations_total", "counter",
        "Queries prepared (select-best --query and every campaign query), by what preparation did: "
        "fragments_removed (counterions, solvents), stereo_enumerated / stereo_capped, isotopes_cleared, "
        "unsupported_element / too_small (refused before embedding), unchanged, ... A query counts once under "
        "each thing done to it.",
        ("action",), "", short="query_preparations",
        label_values={"action": _open(PREPARATION_ACTIONS)}, initialize=True,
    ),
    MetricSpec(
        "templ_poses_total", "counter",
        "Poses kept (one per select-best run or campaign query), by how their conformers were made from the "
        "template: method pinned (the shared core on the template's coordinates), pinned_partial, free or input; "
        "fallback says why the core was not pinned whole (none when it was).",
        ("method", "fallback"), "", short="poses",
        label_values={"method": _open(POSE_METHODS), "fallback": _open(PIN_FALLBACKS)}, initialize=True,
    ),
    MetricSpec(
        "templ_template_selection_duration_seconds", "histogram",
        "Time choosing one query's templates from the library (2D prefilter, then MCS on the best candidates).",
        (), "seconds", buckets=TEMPLATE_SELECTION_BUCKETS, short="template_selection_duration",
    ),
    MetricSpec(
        "templ_telemetry_degraded_total", "counter",
        "Telemetry components that could not start normally and run degraded (e.g. synchronous span export).",
        ("component", "reason"), "", short="telemetry_degraded",
        label_values={"component": _open(DEGRADED_COMPONENTS), "reason": _open(DEGRADED_REASONS)}, initialize=True,
    ),
    MetricSpec(
        "templ_last_success_timestamp_seconds", "gauge",
        "When this run ended successfully (Unix time), set at its end; 0 while it runs and when it failed. In the "
        "textfile and the Pushgateway it outlives the run: alert on time() minus it for batch jobs that stopped "
        "succeeding.",
        (), "seconds", short="last_success",
    ),
    MetricSpec(
        "templ_last_failure_timestamp_seconds", "gauge",
        "When this run ended in failure (Unix time): an error, exit status 1, or a signal; 0 while it runs and "
        "when it succeeded.",
        (), "seconds", short="last_failure",
    ),
    MetricSpec(
        "templ_start_refusals_total", "counter",
        "Thread and process starts the kernel refused, by what was refused and the limit (or seccomp) that "
        "refused it: one per executor.fallback of reason thread_start_failed or process_start_failed, on any "
        "rung, conformer generation's threads included. Every kind and cause starts at 0, so the first refusal "
        "of a run is an increase like any other.",
        ("kind", "cause"), "", short="start_refusals",
        label_values={"kind": _open(START_KINDS), "cause": _open(_START_CAUSES)}, initialize=True,
    ),
    MetricSpec(
        "templ_run_info", "gauge",
        "This run's identity; always 1. run_id is the id in its log lines and traces, job_id the batch "
        "scheduler's job id (else the run id), host the node's name: join on instance (or job_id for pushed "
        "series) to tell successive runs on one port apart and to group jobs by host. On a file_sd target that "
        "carries job_id, Prometheus keeps the target's and names this one exported_job_id (the same value).",
        ("run_id", "job_id", "host"), "", short="run_info",
    ),
    MetricSpec(
        "templ_run_start_time_seconds", "gauge",
        "When this run started (Unix time), set as its telemetry starts. Unlike process_start_time_seconds it is "
        "in the textfile and the Pushgateway push too, with the same labels as the run's other series, so a rule "
        "can tell a counter of a run that started within its window (count it from 0) from one that was there "
        "before (a Prometheus restart, a scrape gap, the first scrape of a Pushgateway).",
        (), "seconds", short="run_start",
    ),
    MetricSpec(
        "templ_push_interval_seconds", "gauge",
        "Seconds between this run's pushes to the Pushgateway while it runs (--push-interval); 0 when it "
        "pushes only at its end. A group whose push_time_seconds is older than a few intervals, and that has "
        "no end timestamp, belongs to a job that died without its last push.",
        (), "seconds", short="push_interval",
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
SPAN_CAMPAIGN = "screen.campaign"
SPAN_QUERY = "screen.query"
SPAN_SCREEN_SCORE = "screen.score"

EVENT_WORKERS_REDUCED = "executor.workers_reduced"
EVENT_FALLBACK = "executor.fallback"
EVENT_EXECUTOR_CREATED = "executor.created"
EVENT_POOL_RESTARTED = "executor.pool_restarted"
EVENT_BATCH_RESUBMITTED = "executor.batch_resubmitted"
EVENT_CAMPAIGN_STARTED = "campaign.started"
EVENT_QUERY_STARTED = "campaign.query_started"
EVENT_QUERY_FINISHED = "campaign.query_finished"
EVENT_WORKER_REPLACED = "campaign.worker_replaced"
EVENT_QUERY_RESUBMITTED = "campaign.query_resubmitted"
EVENT_CAMPAIGN_DONE = "campaign.done"
EVENT_QUERY_PREPARED = "query.prepared"
EVENT_TEMPLATES_CHOSEN = "templates.chosen"
SPAN_TEMPLATES_CHOOSE = "templates.choose"
#: The ``templ`` commands that run with telemetry: each run is one trace, under the root span ``templ.<command>``.
TRACED_COMMANDS: tuple[str, ...] = ("select-best", "screen", "demo", "stress")


def command_span_name(command: str) -> str:
    """The root span of a ``templ`` command's run: ``templ.select_best`` for ``select-best``."""
    return "templ." + command.replace("-", "_")


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
ATTR_CAMPAIGN_TOTAL = "templ.campaign.total"
ATTR_CAMPAIGN_SKIPPED = "templ.campaign.skipped"
ATTR_CAMPAIGN_TEMPLATES = "templ.campaign.templates"
ATTR_CAMPAIGN_DONE = "templ.campaign.done"
ATTR_CAMPAIGN_OK = "templ.campaign.ok"
ATTR_CAMPAIGN_FAILED = "templ.campaign.failed"
ATTR_CAMPAIGN_SECONDS = "templ.campaign.duration_seconds"
ATTR_CAMPAIGN_INTERRUPTED = "templ.campaign.interrupted"
ATTR_QUERY_INDEX = "templ.query.index"
ATTR_QUERY_ID = "templ.query.id"
ATTR_QUERY_STATUS = "templ.query.status"
ATTR_QUERY_REASON = "templ.query.reason"
ATTR_QUERY_SECONDS = "templ.query.duration_seconds"
ATTR_QUERY_CONFORMERS_REQUESTED = "templ.query.conformers_requested"
ATTR_QUERY_CONFORMERS = "templ.query.conformers"
ATTR_QUERY_SCORED = "templ.query.scored"
ATTR_QUERY_FAILED = "templ.query.failed"
ATTR_QUERY_SHORTFALL = "templ.query.shortfall"
ATTR_QUERY_IN_FLIGHT = "templ.query.in_flight"
ATTR_QUERY_INPUT_SMILES = "templ.query.input_smiles"
ATTR_QUERY_SMILES = "templ.query.smiles"
ATTR_QUERY_ISOMERS = "templ.query.isomers"
ATTR_QUERY_STEREOISOMERS_POSSIBLE = "templ.query.stereoisomers_possible"
ATTR_QUERY_REMOVED = "templ.query.removed"
ATTR_QUERY_ACTIONS = "templ.query.preparation"
ATTR_QUERY_WARNING = "templ.query.warning"
ATTR_TEMPLATES_LIBRARY = "templ.templates.library"
ATTR_TEMPLATES_CHOSEN = "templ.templates.chosen"
ATTR_TEMPLATES_MCS_SEARCHED = "templ.templates.mcs_searched"
ATTR_TEMPLATES_MCS_TIMEOUTS = "templ.templates.mcs_timeouts"
ATTR_TEMPLATE_NAME = "templ.template.name"
ATTR_TEMPLATE_SIMILARITY = "templ.template.similarity"
ATTR_TEMPLATE_CORE_ATOMS = "templ.template.core_atoms"
ATTR_TEMPLATE_CORE_SMARTS = "templ.template.core_smarts"
ATTR_POSE_METHOD = "templ.pose.method"
ATTR_POSE_FALLBACK = "templ.pose.fallback"
ATTR_POSE_PINNED_ATOMS = "templ.pose.pinned_atoms"
ATTR_TEMPLATES_SECONDS = "templ.templates.duration_seconds"
ATTR_DURATION = "templ.duration_seconds"
ATTR_QUERY_ISOMER = "templ.query.isomer"
ATTR_QUERY_TEMPLATES = "templ.query.templates"
#: ``templ.query.status`` of a query span the runner never ended: the campaign ended first (a signal).
QUERY_ABANDONED = "abandoned"

_EXECUTOR_EVENTS = (EVENT_WORKERS_REDUCED, EVENT_FALLBACK, EVENT_EXECUTOR_CREATED, EVENT_POOL_RESTARTED,
                    EVENT_BATCH_RESUBMITTED, "exception")
#: The campaign events that are span events of the campaign span. A query's start and end are
#: the start and end of its own span instead: as span events they would be two per query on one
#: span (the SDK keeps only the last 128 events of a span, and drops the rest after paying for them).
_CAMPAIGN_EVENTS = (EVENT_WORKER_REPLACED, EVENT_QUERY_RESUBMITTED)

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
        "One conformer batch scored on the worker pool (child of select_best), timed where it ran; its "
        "executor events are the call's.",
        (ATTR_BATCH_INDEX, ATTR_BATCH_SIZE, ATTR_EXECUTOR_KIND, ATTR_BATCH_SCORED, ATTR_BATCH_FAILED,
         ATTR_PROCESS_PID),
        (),
    ),
    SpanSpec(
        SPAN_CONFORMERS,
        "Conformer generation for one query (ETKDG on RDKit's native threads, sized by the thread grant). In a "
        "campaign it is timed in the worker under the query's span and exported by the parent, with the worker's pid.",
        (ATTR_CONFORMERS_REQUESTED, ATTR_CONFORMERS_GENERATED, ATTR_WORKERS_REQUESTED, ATTR_WORKERS_GRANTED,
         ATTR_OUTCOME, ATTR_PROCESS_PID),
        _EXECUTOR_EVENTS,
    ),
    SpanSpec(
        SPAN_CAMPAIGN,
        "One screening campaign (templ screen), with its summary as attributes; the executor's and the "
        "campaign's events are its span events. Its trace stays a few spans long: each query is a trace of its "
        "own, linked to this span.",
        (ATTR_CAMPAIGN_TOTAL, ATTR_CAMPAIGN_TEMPLATES, ATTR_WORKERS_REQUESTED, ATTR_WORKERS_GRANTED, ATTR_CAMPAIGN_DONE,
         ATTR_CAMPAIGN_OK, ATTR_CAMPAIGN_FAILED, ATTR_CAMPAIGN_INTERRUPTED),
        _CAMPAIGN_EVENTS + _EXECUTOR_EVENTS,
    ),
    SpanSpec(
        SPAN_QUERY,
        "One query of a campaign, from its hand-off to a worker to its result: the root of a trace of its own "
        "(with the stages its worker timed), linked to the screen.campaign span, so no trace grows with the "
        f"campaign; queries overlap. Status ERROR when the query failed; status attribute {QUERY_ABANDONED} when "
        "the campaign ended before its result arrived. Only made when spans are exported; the standard "
        "OTEL_TRACES_SAMPLER decides which queries are traced.",
        (ATTR_QUERY_INDEX, ATTR_QUERY_ID, ATTR_QUERY_STATUS, ATTR_QUERY_REASON, ATTR_QUERY_CONFORMERS,
         ATTR_QUERY_SCORED,
         ATTR_QUERY_FAILED),
        (),
    ),
    SpanSpec(
        SPAN_TEMPLATES_CHOOSE,
        "Choosing one query's templates from the library (2D prefilter, MCS on the best candidates); in a campaign "
        "timed in the worker under the query's span, in select-best under its span.",
        (ATTR_TEMPLATES_LIBRARY, ATTR_TEMPLATES_CHOSEN, ATTR_TEMPLATES_MCS_SEARCHED, ATTR_TEMPLATES_MCS_TIMEOUTS,
         ATTR_PROCESS_PID),
        (),
    ),
    SpanSpec(
        SPAN_SCREEN_SCORE,
        "Scoring one query's conformers against the templates, timed in the worker under the query's span and "
        "exported by the parent.",
        (ATTR_QUERY_SCORED, ATTR_QUERY_FAILED, ATTR_PROCESS_PID),
        (),
    ),
)

SPANS += tuple(SpanSpec(
    command_span_name(command),
    f"One templ {command} run, the root of its trace: every other span of the run (template choice, conformer "
    "generation, scoring, the campaign) nests under it. Status ERROR when the run failed or was stopped.",
    (ATTR_OUTCOME,), ()) for command in TRACED_COMMANDS)
SPANS_BY_NAME: Mapping[str, SpanSpec] = {s.name: s for s in SPANS}


@dataclass(frozen=True)
class EventField:
    """One field of an event: its log key, its span attribute, and its bounded values if any.

    The value is the event's attribute ``source`` (``name`` when empty). A field with ``values`` is
    normalised against them (see :func:`normalize_label`); with ``label`` it is also a label of the event's
    metrics. ``none_as`` stands in for a ``None`` value; ``digits`` rounds a float.
    """

    name: str
    attribute: str
    values: tuple[str, ...] | None = None
    label: bool = False
    source: str = ""
    none_as: str | None = None
    digits: int | None = None

    def read(self, event: object) -> object:
        """The field's raw value on ``event``."""
        value = getattr(event, self.source or self.name)
        if value is None:
            return self.none_as
        return round(value, self.digits) if self.digits is not None and type(value) is float else value


@dataclass(frozen=True)
class MappedCounter:
    """A second counter of an event, incremented only when ``field`` has one of ``mapping``'s values.

    Its ``label`` takes the mapped value; its other labels are the event's labels of the same
    name. A fallback of reason ``thread_start_failed`` is also a refused start of kind ``thread``.
    """

    counter: str
    field: str
    mapping: Mapping[str, str]
    label: str


SpanRole = Literal["", "event", "opens", "closes", "opens_detached", "closes_detached"]


@dataclass(frozen=True)
class EventSpec:
    """One event, declared once: the class it renders, its span role and log event (one name), its fields and
    the metrics it updates. The recorder (``telemetry.recorder``) renders every event from its spec alone.

    Metrics are named by short name (:attr:`MetricSpec.short`); a metric's labels are the
    event's ``label`` fields it has.
    """

    name: str
    level: str
    help: str
    fields: tuple[EventField, ...]
    #: the event class (``templ_pipeline.core.events``) this spec renders
    event: type | None = None
    #: the counter incremented once per event, if any
    counter: str | None = None
    #: whether the event carries the exception that caused it (recorded on the span, logged by type)
    has_error: bool = False
    #: (field, gauge): the gauge is set to the field's value (NaN for None)
    gauges: tuple[tuple[str, str], ...] = ()
    #: (field, histogram): the field's value is observed
    histogram: tuple[str, str] | None = None
    #: (field, counter): the counter is incremented when the field is true
    flags: tuple[tuple[str, str], ...] = ()
    #: (field, counter): the counter is incremented by the field's value
    amounts: tuple[tuple[str, str], ...] = ()
    #: (field, counter, label): the counter is incremented once for each of the field's values (a sequence
    #: of bounded values), with that value as ``label``; for a mapping, by each value's count
    tallies: tuple[tuple[str, str, str], ...] = ()
    #: gauges set to 0 by the event
    resets: tuple[str, ...] = ()
    #: gauges raised by one, and lowered by one, by the event
    raises: tuple[str, ...] = ()
    lowers: tuple[str, ...] = ()
    #: counters incremented for some values of a field only
    mapped: tuple[MappedCounter, ...] = ()
    #: (field, value, level): the log level when the field has that value, instead of ``level``
    levels_by_value: tuple[tuple[str, str, str], ...] = ()
    #: what the event does to spans: ``event``, a span event of the current span (with its trace as the
    #: counter's exemplar); ``opens``/``closes`` the span ``span`` (made current, its attributes from the
    #: fields); ``opens_detached``/``closes_detached`` a span of its own per ``index`` (queries overlap)
    span_role: SpanRole = "event"
    span: str = ""
    #: the log event written instead of ``name``, at error level, when the event's error is an ``Exception``
    #: (an interrupt logs nothing: it is the CLI's one line)
    failure: str = ""
    #: whether the event has a log line at all
    logged: bool = True
    #: whether it is recorded while telemetry is switched off (``telemetry.disabled()``): the safety and
    #: progress events are; the per-call detail is not
    always: bool = True
    #: the structlog logger of its log line
    logger: str = "templ.executor"
    #: the only fields its line shows on a console (a person at a terminal); empty: every field
    console_fields: tuple[str, ...] = ()

    @property
    def span_event(self) -> bool:
        """Whether the event is a span event of the current span."""
        return self.span_role == "event"

    @property
    def metrics(self) -> tuple[str, ...]:
        """Short names of every metric the event updates, in declaration order."""
        named = ([self.counter] if self.counter else []) + [short for _f, short in self.gauges]
        named += [self.histogram[1]] if self.histogram else []
        named += [short for _f, short in self.flags] + [short for _f, short in self.amounts]
        named += [short for _f, short, _l in self.tallies] + list(self.resets) + list(self.raises)
        named += list(self.lowers) + [mapped.counter for mapped in self.mapped]
        return tuple(dict.fromkeys(named))

    def level_for(self, log_fields: Mapping[str, object]) -> str:
        """The log level for these (normalised) field values."""
        for name, value, level in self.levels_by_value:
            if log_fields.get(name) == value:
                return level
        return self.level


@dataclass(frozen=True)
class StageSpec:
    """A stage a worker times and returns as data (``core.events.StageTiming``): the span the parent makes of
    it, named ``name``, with its fields as attributes (and the worker's ``process.pid``)."""

    name: str
    event: type
    fields: tuple[EventField, ...]


def _field(name: str, attribute: str, vocabulary: tuple[str, ...] | None = None, label: bool = False,
           **how: Any) -> EventField:
    return EventField(name, attribute, None if vocabulary is None else _open(vocabulary), label, **how)


_TASK_TYPE = _field("task_type", ATTR_TASK_TYPE, TASK_TYPES, label=True)
_DETAIL = _field("detail", ATTR_DETAIL)
_KIND = _field("executor_kind", ATTR_EXECUTOR_KIND, EXECUTOR_KINDS, label=True, source="kind")

EVENT_SPECS: tuple[EventSpec, ...] = (
    EventSpec(
        EVENT_WORKERS_REDUCED, "warning",
        "The executor factory granted fewer workers than requested: a warning when a limit or the thread "
        "manager refused them (the user may act on it), info when sizing chose fewer (work too small to repay "
        "a pool, fewer CPUs than workers, or a pool starting in the background while the call ran in the caller).",
        (_TASK_TYPE, _field("workers_requested", ATTR_WORKERS_REQUESTED, source="requested"),
         _field("workers_granted", ATTR_WORKERS_GRANTED, source="granted"),
         _field("reason", ATTR_REASON, REDUCTION_REASONS, label=True), _DETAIL, _field("headroom", ATTR_HEADROOM)),
        event=ev.WorkersReduced, gauges=(("workers_requested", "workers_requested"),
                                         ("workers_granted", "workers_granted")),
        counter="worker_reductions", levels_by_value=tuple(("reason", reason, "info") for reason in SIZING_REASONS),
    ),
    EventSpec(
        EVENT_FALLBACK, "warning", "The executor fell back one step down the ladder.",
        (_field("from_kind", ATTR_FROM_KIND, EXECUTOR_KINDS, label=True),
         _field("to_kind", ATTR_TO_KIND, EXECUTOR_KINDS, label=True),
         _field("reason", ATTR_REASON, FALLBACK_REASONS, label=True),
         _field("cause", ATTR_CAUSE, FALLBACK_CAUSES, label=True), _DETAIL),
        event=ev.Fallback, counter="fallbacks", has_error=True,
        mapped=(MappedCounter("start_refusals", "reason", {reason.value: kind.value
                                                           for reason, kind in REFUSED_STARTS.items()}, "kind"),),
    ),
    EventSpec(
        EVENT_EXECUTOR_CREATED, "info", "An executor was created or reused.",
        (_KIND, _field("workers", ATTR_WORKERS), _TASK_TYPE, _field("reused", ATTR_REUSED)),
        event=ev.ExecutorCreated, always=False,
    ),
    EventSpec(
        EVENT_POOL_RESTARTED, "warning", "A broken worker pool was replaced.",
        (_KIND, _field("reason", ATTR_REASON, FALLBACK_REASONS), _DETAIL),
        event=ev.PoolRestarted, counter="pool_restarts", has_error=True,
    ),
    EventSpec(
        EVENT_BATCH_RESUBMITTED, "warning",
        "A batch is run again because its worker was lost (Dask reschedules it; the driver counts it once).",
        (_KIND, _field("index", ATTR_BATCH_INDEX),
         _field("reason", ATTR_REASON, BATCH_RESUBMISSION_REASONS, label=True), _field("worker", ATTR_WORKER)),
        event=ev.BatchResubmitted, counter="batch_resubmissions",
    ),
    EventSpec(
        EVENT_CAMPAIGN_STARTED, "info",
        "A screening campaign started: queries in the input (null when not known up front), queries an earlier "
        "run already finished (--resume), templates.",
        (_field("total", ATTR_CAMPAIGN_TOTAL), _field("skipped", ATTR_CAMPAIGN_SKIPPED),
         _field("templates", ATTR_CAMPAIGN_TEMPLATES), _field("workers_requested", ATTR_WORKERS_REQUESTED)),
        event=ev.CampaignStarted, span_role="opens", span=SPAN_CAMPAIGN,
        gauges=(("total", "campaign_expected"), ("skipped", "campaign_skipped")), logger="templ.campaign",
    ),
    EventSpec(
        EVENT_QUERY_STARTED, "debug", "A campaign query was handed to a worker (in_flight counts it).",
        (_field("index", ATTR_QUERY_INDEX), _field("in_flight", ATTR_QUERY_IN_FLIGHT)),
        event=ev.QueryStarted, span_role="opens_detached", span=SPAN_QUERY,
        gauges=(("in_flight", "campaign_in_flight"),), logger="templ.campaign",
    ),
    EventSpec(
        EVENT_QUERY_FINISHED, "debug",
        "A campaign query's result arrived: debug when ok (a million-query campaign logs nothing per query at "
        "the default level), warning when it failed, with the query id, the reason and the detail.",
        (_field("query_id", ATTR_QUERY_ID), _field("executor_kind", ATTR_EXECUTOR_KIND, EXECUTOR_KINDS, source="kind"),
         _field("status", ATTR_QUERY_STATUS, QUERY_STATUSES, label=True),
         _field("reason", ATTR_QUERY_REASON, QUERY_REASONS, label=True, none_as=NO_REASON), _DETAIL,
         _field("duration_seconds", ATTR_QUERY_SECONDS, source="seconds"),
         _field("conformers_requested", ATTR_QUERY_CONFORMERS_REQUESTED), _field("conformers", ATTR_QUERY_CONFORMERS),
         _field("scored", ATTR_QUERY_SCORED), _field("failed", ATTR_QUERY_FAILED),
         _field("shortfall", ATTR_QUERY_SHORTFALL), _field("in_flight", ATTR_QUERY_IN_FLIGHT),
         _field("index", ATTR_QUERY_INDEX)),
        counter="campaign_queries", gauges=(("in_flight", "campaign_in_flight"),),
        histogram=("duration_seconds", "campaign_query_duration"), flags=(("shortfall", "campaign_shortfalls"),),
        levels_by_value=(("status", QueryStatus.FAILED.value, "warning"),),
        event=ev.QueryFinished, span_role="closes_detached", span=SPAN_QUERY,
        logger="templ.campaign", console_fields=("query_id", "reason", "detail"),
    ),
    EventSpec(
        EVENT_WORKER_REPLACED, "warning",
        "A campaign worker was ended (its query ran over the time limit), found dead, or recycled between queries "
        "(its memory grew, or it ran its quota of queries: routine, so info), and another started in its place.",
        (_field("executor_kind", ATTR_EXECUTOR_KIND, EXECUTOR_KINDS, source="kind"),
         _field("reason", ATTR_REASON, REPLACEMENT_REASONS, label=True), _DETAIL),
        event=ev.WorkerReplaced, counter="campaign_worker_replacements", logger="templ.campaign",
        levels_by_value=(("reason", ReplacementReason.RECYCLED.value, "info"),),
    ),
    EventSpec(
        EVENT_QUERY_RESUBMITTED, "warning",
        "A campaign query runs again because its Dask worker was lost (Dask reschedules it once; a second loss "
        "makes it a worker_lost row).",
        (_field("executor_kind", ATTR_EXECUTOR_KIND, EXECUTOR_KINDS, source="kind"),
         _field("index", ATTR_QUERY_INDEX),
         _field("reason", ATTR_REASON, RESUBMISSION_REASONS, label=True), _field("worker", ATTR_WORKER)),
        event=ev.QueryResubmitted, counter="campaign_query_resubmissions", logger="templ.campaign",
    ),
    EventSpec(
        EVENT_QUERY_PREPARED, "debug",
        "A query was prepared for embedding (select-best --query, or a campaign query in its worker): the input "
        "and prepared SMILES, the fragments removed, the stereoisomers scored and what was done; warning when "
        "preparation warns (a second large organic fragment dropped).",
        (_field("query_id", ATTR_QUERY_ID), _field("input_smiles", ATTR_QUERY_INPUT_SMILES),
         _field("smiles", ATTR_QUERY_SMILES), _field("isomers", ATTR_QUERY_ISOMERS),
         _field("stereoisomers_possible", ATTR_QUERY_STEREOISOMERS_POSSIBLE), _field("removed", ATTR_QUERY_REMOVED),
         _field("actions", ATTR_QUERY_ACTIONS, PREPARATION_ACTIONS),
         _field("conformers_requested", ATTR_QUERY_CONFORMERS_REQUESTED), _field("conformers", ATTR_QUERY_CONFORMERS),
         _field("warning", ATTR_QUERY_WARNING), _field("warned", "templ.query.warned", ("true", "false"))),
        tallies=(("actions", "query_preparations", "action"),), levels_by_value=(("warned", "true", "warning"),),
        event=ev.QueryPrepared, span_role="", logger="templ.preparation", console_fields=("query_id", "warning"),
    ),
    EventSpec(
        EVENT_TEMPLATES_CHOSEN, "debug",
        "A query's templates were chosen and its pose made (select-best, or a campaign query in its worker): the "
        "library's size, the templates chosen, the kept pose's template with its 2D similarity and shared core, "
        "and how its conformers were made (pinned, or the fallback and why).",
        (_field("query_id", ATTR_QUERY_ID), _field("library", ATTR_TEMPLATES_LIBRARY),
         _field("chosen", ATTR_TEMPLATES_CHOSEN), _field("template", ATTR_TEMPLATE_NAME),
         _field("similarity", ATTR_TEMPLATE_SIMILARITY, digits=4), _field("core_atoms", ATTR_TEMPLATE_CORE_ATOMS),
         _field("core_smarts", ATTR_TEMPLATE_CORE_SMARTS), _field("method", ATTR_POSE_METHOD, POSE_METHODS, label=True),
         _field("fallback", ATTR_POSE_FALLBACK, PIN_FALLBACKS, label=True),
         _field("pinned_atoms", ATTR_POSE_PINNED_ATOMS), _field("mcs_timeouts", ATTR_TEMPLATES_MCS_TIMEOUTS),
         _field("seconds", ATTR_TEMPLATES_SECONDS)),
        counter="poses", histogram=("seconds", "template_selection_duration"), event=ev.TemplatesChosen,
        span_role="", logger="templ.templates",
    ),
    EventSpec(
        EVENT_CAMPAIGN_DONE, "info",
        "A campaign ended: queries finished in this run, by outcome, and whether a signal interrupted it.",
        (_field("done", ATTR_CAMPAIGN_DONE), _field("ok", ATTR_CAMPAIGN_OK), _field("failed", ATTR_CAMPAIGN_FAILED),
         _field("duration_seconds", ATTR_CAMPAIGN_SECONDS, source="seconds"),
         _field("interrupted", ATTR_CAMPAIGN_INTERRUPTED), _field("workers_granted", ATTR_WORKERS_GRANTED)),
        event=ev.CampaignDone, span_role="closes", span=SPAN_CAMPAIGN, has_error=True, failure="campaign.failed",
        resets=("campaign_in_flight",), logger="templ.campaign",
    ),
    EventSpec(
        "executor.workers_granted", "debug",
        "The grant met the request (no reduction); the detail says why when recent calls made small work "
        "worth a pool.",
        (_TASK_TYPE, _field("workers_requested", ATTR_WORKERS_REQUESTED, source="requested"),
         _field("workers_granted", ATTR_WORKERS_GRANTED, source="granted"), _DETAIL),
        event=ev.WorkersGranted, gauges=(("workers_requested", "workers_requested"),
                                         ("workers_granted", "workers_granted")),
        span_role="", logged=False, always=False,
    ),
    EventSpec(
        "select_best.started", "debug", "A select_best call starts (the span select_best opens).",
        (_field("n_conformers", ATTR_N_CONFORMERS), _field("workers_requested", ATTR_WORKERS_REQUESTED)),
        event=ev.SelectBestStarted, span_role="opens", span=SPAN_SELECT_BEST, logged=False, always=False,
        logger="templ.select_best",
    ),
    EventSpec(
        "select_best.done", "info", "A select_best call finished; select_best.failed when an exception escaped it.",
        (_field("n_conformers", ATTR_N_CONFORMERS), _field("workers_requested", ATTR_WORKERS_REQUESTED),
         _field("workers_granted", ATTR_WORKERS_GRANTED),
         _field("executor_kind", ATTR_EXECUTOR_KIND, EXECUTOR_KINDS, none_as=None),
         _field("scored", ATTR_SCORED), _field("failed", ATTR_FAILED),
         _field("failed_by_reason", "", FAILURE_REASONS),
         _field("duration_seconds", ATTR_DURATION, source="seconds"),
         _field("outcome", ATTR_OUTCOME, OUTCOMES, label=True)),
        event=ev.SelectBestFinished, span_role="closes", span=SPAN_SELECT_BEST, has_error=True,
        failure="select_best.failed", amounts=(("scored", "conformers_scored"),),
        tallies=(("failed_by_reason", "conformers_failed", "reason"),), counter="select_best_calls",
        histogram=("duration_seconds", "select_best_duration"), always=False, logger="templ.select_best",
    ),
    EventSpec(
        "conformers.started", "debug", "Conformer generation for one query starts (the span conformers.generate).",
        (_field("requested", ATTR_CONFORMERS_REQUESTED), _field("threads_requested", ATTR_WORKERS_REQUESTED)),
        event=ev.ConformersStarted, span_role="opens", span=SPAN_CONFORMERS, logged=False,
        raises=("conformer_generations_in_progress",), logger="templ.conformers",
    ),
    EventSpec(
        "conformers.done", "info",
        "Conformer generation for one query finished (threads: the RDKit threads of the attempt that worked); "
        "conformers.failed when an exception escaped it.",
        (_field("requested", ATTR_CONFORMERS_REQUESTED), _field("threads_requested", ATTR_WORKERS_REQUESTED),
         _field("generated", ATTR_CONFORMERS_GENERATED), _field("threads", ATTR_WORKERS_GRANTED),
         _field("duration_seconds", ATTR_DURATION, source="seconds"),
         _field("outcome", ATTR_OUTCOME, OUTCOMES, label=True)),
        event=ev.ConformersFinished, span_role="closes", span=SPAN_CONFORMERS, has_error=True,
        failure="conformers.failed", counter="conformer_generations", lowers=("conformer_generations_in_progress",),
        logger="templ.conformers",
    ),
    EventSpec(
        "conformers.embedding_inline", "warning",
        "No thread could start to run the embedding off the main thread; it runs there, and a signal "
        "takes effect when it returns (logged once per process).",
        (_field("error", ""), _field("note", "")),
        event=ev.EmbeddingInline, span_role="", logger="templ.conformers",
    ),
    EventSpec(
        "templates.choosing", "debug", "Choosing one query's templates starts (the span templates.choose).",
        (_field("library", ATTR_TEMPLATES_LIBRARY),),
        event=ev.TemplatesChoosing, span_role="opens", span=SPAN_TEMPLATES_CHOOSE, logged=False, always=False,
        logger="templ.templates",
    ),
    EventSpec(
        "templates.choice_done", "debug", "Choosing one query's templates ended.",
        (_field("chosen", ATTR_TEMPLATES_CHOSEN), _field("mcs_searched", ATTR_TEMPLATES_MCS_SEARCHED),
         _field("mcs_timeouts", ATTR_TEMPLATES_MCS_TIMEOUTS)),
        event=ev.TemplatesChoiceDone, span_role="closes", span=SPAN_TEMPLATES_CHOOSE, has_error=True,
        logged=False, always=False, logger="templ.templates",
    ),
)
EVENT_SPECS_BY_TYPE: Mapping[type, EventSpec] = {e.event: e for e in EVENT_SPECS if e.event is not None}

_ISOMER = _field("isomer", ATTR_QUERY_ISOMER)
#: The stages a campaign worker times under its query's span, rendered as spans of the query's trace.
STAGE_SPECS: tuple[StageSpec, ...] = (
    StageSpec(SPAN_TEMPLATES_CHOOSE, ev.TemplatesChoiceTimed,
              (_ISOMER, _field("library", ATTR_TEMPLATES_LIBRARY), _field("chosen", ATTR_TEMPLATES_CHOSEN),
               _field("mcs_searched", ATTR_TEMPLATES_MCS_SEARCHED),
               _field("mcs_timeouts", ATTR_TEMPLATES_MCS_TIMEOUTS))),
    StageSpec(SPAN_CONFORMERS, ev.ConformersTimed,
              (_ISOMER, _field("requested", ATTR_CONFORMERS_REQUESTED), _field("generated", ATTR_CONFORMERS_GENERATED),
               _field("threads", ATTR_WORKERS_GRANTED))),
    StageSpec(SPAN_SCREEN_SCORE, ev.ScoringTimed,
              (_ISOMER, _field("templates", ATTR_QUERY_TEMPLATES), _field("scored", ATTR_QUERY_SCORED),
               _field("failed", ATTR_QUERY_FAILED))),
)
STAGE_SPECS_BY_TYPE: Mapping[type, StageSpec] = {stage.event: stage for stage in STAGE_SPECS}


def _with_rendered_attributes(span: SpanSpec) -> SpanSpec:
    """``span`` with every attribute the events that open or close it, and the stages timed as it, set."""
    from_events = [f.attribute for e in EVENT_SPECS if e.span == span.name and not e.span_event for f in e.fields]
    from_stages = [f.attribute for stage in STAGE_SPECS if stage.name == span.name for f in stage.fields]
    pid = [ATTR_PROCESS_PID] if from_stages else []
    named = [name for name in (*span.attributes, *from_events, *from_stages, *pid) if name]
    return dataclasses.replace(span, attributes=tuple(dict.fromkeys(named)))


SPANS = tuple(_with_rendered_attributes(span) for span in SPANS)
SPANS_BY_NAME = {s.name: s for s in SPANS}
EVENT_SPECS_BY_NAME: Mapping[str, EventSpec] = {e.name: e for e in EVENT_SPECS}
#: The fields a console line shows, for the events that name them (``logs.configure_logging``).
CONSOLE_FIELDS: Mapping[str, tuple[str, ...]] = {e.name: e.console_fields for e in EVENT_SPECS if e.console_fields}

#: Attributes carried by each span event (derived from EVENT_SPECS).
SPAN_EVENT_ATTRIBUTES: Mapping[str, tuple[str, ...]] = {
    e.name: tuple(f.attribute for f in e.fields) for e in EVENT_SPECS if e.span_event
}


_PLAIN = frozenset({int, float, str, bool, type(None)})
"""Value types :func:`render` passes through as they are (``StrEnum`` members and sequences are not)."""


@dataclass(frozen=True)
class RenderedEvent:
    """An event's values as its counter's labels, its span attributes and its log fields."""

    labels: dict[str, str]
    attributes: dict[str, Any]
    log_fields: dict[str, Any]


def render(spec: EventSpec | StageSpec, event: object) -> RenderedEvent:
    """Labels, span attributes and log fields of one event, from its spec and the event's own fields.

    Bounded values are normalised (an unknown one becomes the catch-all, and the log
    line keeps the raw value as ``<field>_raw``); a sequence of bounded values is normalised
    item by item, a mapping of them key by key (counts of one catch-all add up). ``None`` values
    are left out of the span attributes (OpenTelemetry attributes cannot be null) but kept in the
    log, as are mappings and fields without an attribute; other sequences become one space-separated string.
    """
    labels: dict[str, str] = {}
    attributes: dict[str, Any] = {}
    log_fields: dict[str, Any] = {}
    for f in spec.fields:
        value = f.read(event)
        if type(value) in _PLAIN and f.values is None:  # most fields of a per-query event: nothing to normalise
            if value is not None and f.attribute:
                attributes[f.attribute] = value
            log_fields[f.name] = value
            continue
        if isinstance(value, Mapping):
            if f.values is not None:
                merged: dict[str, int] = {}
                for key, count in value.items():
                    label = normalize_label(str(key), f.values)
                    merged[label] = merged.get(label, 0) + count
                value = merged
            log_fields[f.name] = value
            continue
        if isinstance(value, (tuple, list)):
            value = (tuple(normalize_label(str(item), f.values) for item in value) if f.values is not None
                     else " ".join(str(item) for item in value))
        elif f.values is not None and value is not None:
            raw = str(value)
            value = normalize_label(raw, f.values)
            if value != raw:
                log_fields[f.name + "_raw"] = raw
            if f.label:
                labels[f.name] = value
        elif isinstance(value, StrEnum):
            value = value.value
        if value is not None and f.attribute:
            attributes[f.attribute] = value
        log_fields[f.name] = value
    return RenderedEvent(labels, attributes, log_fields)


# ---------------------------------------------------------------------------
# Log events
# ---------------------------------------------------------------------------
_TRACE_FIELDS = ("trace_id", "span_id")

def _log_specs(event: EventSpec) -> tuple[LogEventSpec, ...]:
    """The log events of ``event``: its line, and its failure line if it has one."""
    if not event.logged:
        return ()
    fields = tuple(f.name for f in event.fields)
    errors = ("error_type", "error") if event.has_error and not event.failure else ()
    specs: tuple[LogEventSpec, ...] = (
        LogEventSpec(event.name, event.level, event.help, fields + errors + _TRACE_FIELDS),)
    if event.failure:
        specs += (LogEventSpec(event.failure, "error", f"An exception escaped: the {event.name} line of a failure.",
                               fields + ("error_type", "error") + _TRACE_FIELDS),)
    return specs


LOG_EVENTS: tuple[LogEventSpec, ...] = tuple(spec for event in EVENT_SPECS for spec in _log_specs(event)) + (
    LogEventSpec(
        "select_best.batch_done", "debug",
        "One conformer batch finished.",
        ("index", "size", "scored", "failed", "duration_seconds", "executor_kind") + _TRACE_FIELDS,
    ),
    LogEventSpec(
        "telemetry.degraded", "warning",
        "A telemetry component could not start normally and runs degraded (logged once per component).",
        ("component", "reason", "error_type", "error"),
    ),
    LogEventSpec(
        "telemetry.metrics_serving", "info",
        "The /metrics and /healthz endpoint is up; default_port_taken: another run had the default port, so "
        "this one serves on a free port of the same host.",
        ("url", "default_port_taken"),
    ),
    LogEventSpec(
        "telemetry.metrics_server_unavailable", "warning",
        "The default metrics address, and a free port of its host, could not be bound; the run goes on "
        "without /metrics.",
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
    LogEventSpec(
        "telemetry.push_delete_failed", "warning",
        "Deleting the run's Pushgateway group (--push-delete-on-exit) failed; the group stays.",
        ("url", "error"),
    ),
    LogEventSpec(
        "telemetry.textfile_failed", "warning",
        "Writing the final metrics for node_exporter (--metrics-textfile) failed; the run's result stands.",
        ("path", "error"),
    ),
    LogEventSpec(
        "telemetry.sd_file_replaced", "warning",
        "The run's file_sd target file was replaced by another run's (one --metrics-sd-file path for two "
        "runs); it is left in place at exit instead of removed.",
        ("path", "note"),
    ),
    LogEventSpec(
        "telemetry.sd_file_written", "info",
        "The file_sd target file (--metrics-sd-file) names this run's /metrics address and job id; it is "
        "removed when the run ends.",
        ("path", "target", "job_id"),
    ),
)

LOG_EVENTS_BY_NAME: Mapping[str, LogEventSpec] = {e.name: e for e in LOG_EVENTS}
