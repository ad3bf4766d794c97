"""The "TEMPL executor: thread exhaustion" dashboard.

Read top to bottom when paged: how close each instance is to its thread limit and
which limit binds (Headroom), what the executor gave up (Decisions, Fallbacks), what
it cost (Work), how a screening campaign advances (Campaign), and the process itself
(Process). Links open the job's logs (Loki)
and traces (Tempo) for the same time range; exemplars on the batch latency open the
trace of one batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from grafana_foundation_sdk.builders import stat, timeseries
from grafana_foundation_sdk.builders.dashboard import (
    Dashboard,
    DashboardLink,
    DatasourceVariable,
    QueryVariable,
    Row,
    TextBoxVariable,
)
from grafana_foundation_sdk.models import dashboard

from templ_pipeline.core.limits.model import PIDS_CGROUP, STACK_MEMORY
from templ_pipeline.dashboards import dashboard_exporters, dask_metrics, links, panels_fleet
from templ_pipeline.dashboards.annotations import PrometheusAnnotation
from templ_pipeline.dashboards.names import (
    FAILED,
    JOB,
    MANAGER_REASONS,
    NO_CAUSE,
    OK,
    OTHER_REDUCTIONS,
    SCREENING,
    SEQUENTIAL,
    listing,
    metric,
    value,
)
from templ_pipeline.dashboards.panels import GAUGE_CALCS, PROMETHEUS, Query, event_bars, stat_panel, time_series
from templ_pipeline.dashboards.promql import (
    events,
    events_total,
    finite,
    headroom_share,
    per_series_events,
    quantile,
    series,
    sum_rate,
    with_run,
)
from templ_pipeline.dashboards.thresholds import (
    CAMPAIGN_FAILURE_MINUTES,
    CAMPAIGN_FAILURE_RATIO,
    CAMPAIGN_STALL_MINUTES,
    FAILURE_MINUTES,
    FAILURE_RATIO,
    MANAGER_CAPS,
    Thresholds,
    as_percent,
    percent,
    thresholds,
)
from templ_pipeline.telemetry.catalog import (
    ATTR_EXECUTOR_KIND,
    BATCH_RESUBMISSION_REASONS,
    DEGRADED_COMPONENTS,
    EVENT_FALLBACK,
    EVENT_QUERY_FINISHED,
    EVENT_WORKER_REPLACED,
    EVENT_WORKERS_REDUCED,
    EXECUTOR_KINDS,
    FAILURE_REASONS,
    FALLBACK_CAUSES,
    FALLBACK_REASONS,
    LIMIT_NAMES,
    METRICS_BY_SHORT,
    OUTCOMES,
    QUERY_REASONS,
    REPLACEMENT_REASONS,
    RESUBMISSION_REASONS,
    SPAN_QUERY,
    SPAN_SELECT_BEST,
    START_KINDS,
)

#: What can refuse a start (the cause label of templ_start_refusals_total) and a failed call's outcome.
START_CAUSES: tuple[str, ...] = METRICS_BY_SHORT["start_refusals"].label_values["cause"]
ERROR = value("error", OUTCOMES)

UID = "templ-executor"
TITLE = "TEMPL executor: thread exhaustion"

HEADROOM = finite(series(metric("thread_headroom")))
LIMIT = series(metric("thread_limit"))
#: Headroom as a share of each limit that is known and enforced.
SHARE = headroom_share(series(metric("thread_headroom")), LIMIT)
BINDING_LIMIT_TITLE = "Binding limit"
FALLBACKS = series(metric("fallbacks"))
BROKEN_POOL = value("broken_pool", FALLBACK_REASONS)


def headroom_steps(t: Thresholds) -> tuple[tuple[str, float | None], ...]:
    """Red below the critical alert's headroom, orange below the warning's, green above."""
    return (("red", None), ("orange", t.critical_tasks), ("green", t.warning_tasks))


def percent_steps(t: Thresholds) -> tuple[tuple[str, float | None], ...]:
    """The same colours for headroom as a percentage of the limit."""
    return (("red", None), ("orange", as_percent(t.critical_share)), ("green", as_percent(t.warning_share)))


def share_steps(t: Thresholds) -> tuple[tuple[str, float | None], ...]:
    """The same colours for headroom as a share (0..1) of the limit."""
    return (("red", None), ("orange", t.critical_share), ("green", t.warning_share))


def binding_limit(t: Thresholds) -> str:
    """Per instance, the limit with the least headroom share, where some limit is within the warning alert's
    thresholds: below its share of the limit, or below its tasks (a pids cgroup of 40 with 8 left is 20%)."""
    near = (f"{SHARE}\n  < {t.warning_share}\nor\n  {SHARE}\n"
            f"  and on (job, instance, limit) ({HEADROOM} < {t.warning_tasks})")
    return f"bottomk by (job, instance) (1,\n  {near}\n)"


def _variables() -> list:
    """Datasources, then job -> host -> job_id -> instance, each narrowing the next; the exporters' jobs.

    The instance list comes from the runs' info metric, so picking a host or a scheduler job id
    narrows every panel's ``instance=~"$instance"``; "All" of instance is the list itself (no
    ``.*``), so it stays narrowed.
    """
    job = dashboard.VariableOption(text=JOB, value=JOB)
    every = dashboard.VariableOption(text="All", value="$__all")
    refresh = dashboard.VariableRefresh.ON_TIME_RANGE_CHANGED

    def pick(name: str, label: str, query: str, all_value: str | None) -> QueryVariable:
        variable = (QueryVariable(name).label(label).datasource(PROMETHEUS).query(query).refresh(refresh)
                    .multi(True).include_all(True).current(every))
        return variable.all_value(all_value) if all_value else variable

    def text(name: str, label: str, default: str, description: str) -> TextBoxVariable:
        option = dashboard.VariableOption(text=default, value=default)
        return TextBoxVariable(name).label(label).description(description).default_value(default).current(option)

    run_info = metric("run_info")
    return [
        DatasourceVariable("datasource").label("Prometheus").type("prometheus"),
        DatasourceVariable("loki").label("Loki").type("loki"),
        DatasourceVariable("tempo").label("Tempo").type("tempo"),
        QueryVariable("job").label("Job").datasource(PROMETHEUS).query(f"label_values({metric('build_info')}, job)")
        .refresh(refresh).current(job),
        pick("host", "Host", f'label_values({run_info}{{job="$job"}}, host)', ".*"),
        pick("job_id", "Scheduler job", f'label_values({run_info}{{job="$job", host=~"$host"}}, job_id)', ".*"),
        pick("instance", "Instance",
             f'label_values({run_info}{{job="$job", host=~"$host", job_id=~"$job_id"}}, instance)', None),
        text("node_job", "node_exporter job", dashboard_exporters.NODE_JOB,
             "The scrape job of node_exporter (run with --collector.processes) for the Exporters row."),
        text("cadvisor_job", "cAdvisor job", dashboard_exporters.CADVISOR_JOB,
             "The scrape job of cAdvisor (or the kubelet's /metrics/cadvisor) for the Exporters row."),
    ]


def _headroom_panels(t: Thresholds) -> list:
    return [
        stat_panel(
            BINDING_LIMIT_TITLE,
            "Per instance, the kernel limit with the least headroom as a share of the limit (headroom / limit, "
            "so tasks and thread stacks compare), shown only while some limit is within the warning alert's "
            f"thresholds: less than {percent(t.warning_share)} of it left (the warning pressure "
            f"{t.warning_pressure:.2f} of the thread manager) or fewer than {t.warning_tasks} tasks. Red: below "
            f"{percent(t.critical_share)} (critical); orange: below "
            f"{percent(t.warning_share)}. Unknown (NaN) and unlimited (+Inf) limits are left out; `templ doctor` "
            "on the host lists them all. The headroom graphs beside give the tasks left.",
            "percentunit",
            [Query(binding_limit(t), "{{instance}}: {{limit}}")],
            threshold_steps=share_steps(t),
            no_value=f"no limit within {percent(t.warning_share)} or {t.warning_tasks} tasks",
        ),
        time_series(
            "Headroom (tasks)",
            "Threads or processes that can still start before each limit refuses one, per instance and "
            f"limit. Pools are sized from this: {t.cost_text()}. Dashed lines: {t.warning_tasks} (warning "
            f"alert) and {t.critical_tasks} (critical alert). Symlog axis, so a pids cgroup with 10 left and "
            "pid_max with millions left share it.",
            "short",
            [Query(HEADROOM, "{{instance}} {{limit}}")],
            width=9, calcs=GAUGE_CALCS, threshold_steps=headroom_steps(t), symlog=True,
        ),
        time_series(
            "Headroom (% of limit)",
            f"Headroom as a share of each limit, per instance. The alerts also fire below "
            f"{percent(t.warning_share)} (warning) and {percent(t.critical_share)} (critical), the pressures "
            f"({t.warning_pressure:.2f}, {t.critical_pressure:.2f}) at which the thread manager reports warning "
            "and critical. A steady decline means the job, or its neighbours in the same cgroup or user, "
            "keeps more threads alive than before.",
            "percent",
            [Query(f"100 * {SHARE}", "{{instance}} {{limit}}")],
            width=9, calcs=GAUGE_CALCS, threshold_steps=percent_steps(t), min_value=0, max_value=100,
        ),
        time_series(
            "Tasks in use against each limit",
            "For each limit, what counts against it (limit minus headroom) next to the limit itself, and "
            "the OS threads of the TEMPL process. Scopes differ: the pids cgroup counts every task in the "
            "cgroup, RLIMIT_NPROC (`ulimit -u`) every task of the user, threads-max and pid_max every task "
            f"on the host, {STACK_MEMORY} thread stacks. A 'used' line meeting its 'limit' line is that "
            "limit binding.",
            "short",
            [
                Query(finite(f"{LIMIT} - {series(metric('thread_headroom'))}"), "{{instance}} used ({{limit}})"),
                Query(f"{LIMIT} < +Inf", "{{instance}} limit ({{limit}})"),
                Query(series(metric("threads_active")), "{{instance}} threads of this process"),
            ],
            width=24, calcs=GAUGE_CALCS, symlog=True,
        ),
        *_pids_evidence_panels(),
    ]


def _pids_evidence_panels() -> list:
    """What the pids controller itself recorded: it keeps what scrapes of the headroom miss."""
    pids_limit = series(metric("thread_limit"), f'limit="{value(PIDS_CGROUP, LIMIT_NAMES)}"')
    return [
        REFUSED_FORKS.build(),
        time_series(
            "pids cgroup: peak vs limit",
            "The most tasks the job's pids cgroup has held at once (pids.peak of the level whose pids.max binds), "
            "next to that pids.max. The peak keeps bursts shorter than the scrape interval: a peak at the limit "
            "means the cgroup was full at some moment, whatever the headroom graphs show. No peak line: the "
            "kernel has no pids.peak, or no pids cgroup is visible.",
            "short",
            [
                Query(series(metric("pids_peak_tasks")), "{{instance}} peak"),
                Query(f"{pids_limit} < +Inf", "{{instance}} pids.max"),
            ],
            calcs=GAUGE_CALCS, step_lines=True,
        ),
    ]


@dataclass(frozen=True)
class EventPanel:
    """A bar panel of one event counter: events per interval on the exact shape (``promql.events``)."""

    title: str
    short: str  # catalog short name of the counter
    by: str  # labels the bars are split by, besides job and instance
    legend: str  # after "{{instance}} {{run_id}}"
    what: str  # the description's first sentences: what one event is
    no_value: str  # shown when the range has no event
    hide_zero: bool = True
    width: int = 12

    def query(self) -> str:
        # job_id: pushed series of several jobs on one host share their instance (the host name)
        by = ", ".join(("job, instance, job_id", self.by)) if self.by else "job, instance, job_id"
        return with_run(events(metric(self.short), by, hide_zero=self.hide_zero))

    def build(self, data_links: Sequence[DashboardLink] = ()) -> timeseries.Panel:
        hidden = (" Label sets without an event in the range are left out (the query keeps only bars above 0), so "
                  "the zero-initialised combinations do not crowd the legend.") if self.hide_zero else ""
        return event_bars(
            self.title, f"{self.what} {EVENT_BAR}{hidden}",
            [Query(self.query(), " ".join(("{{instance}} {{run_id}}", self.legend)).strip())],
            no_value=self.no_value, width=self.width, data_links=data_links,
        )


EVENT_BAR = ("One bar is the events of one interval ($__interval, never shorter than the scrape interval): "
             "exact, the first event of a series born at 1 and the events after a restart of the process included, "
             "unlike rate() or increase(); the bars of a range add up to its events (legend: sum). Legends carry "
             "the run_id of the run behind each instance.")

_CAUSES = listing(cause for cause in FALLBACK_CAUSES if cause != NO_CAUSE)
_CAPS = listing((f"{reason} (capped at {MANAGER_CAPS[reason]} workers)" for reason in MANAGER_REASONS), " / ")
_OTHERS = "".join(f"; {reason}: {meaning}" for reason, meaning in OTHER_REDUCTIONS.items())

REDUCTIONS = EventPanel(
    "Worker reductions per interval by task type and reason", "worker_reductions", "task_type, reason",
    "{{task_type}}: {{reason}}",
    "Times the executor granted fewer workers than requested, per task type and reason: the limit that bound "
    f"({listing(LIMIT_NAMES)}), or {_CAPS} when the thread manager could not answer{_OTHERS}. Bars in every "
    "interval cost throughput. Click a series for its log lines.",
    "no worker reduction in this range")
FALLBACKS_BARS = EventPanel(
    "Fallbacks per interval by from, to, reason and cause", "fallbacks", "from_kind, to_kind, reason, cause",
    "{{from_kind}} -> {{to_kind}}: {{reason}} (cause {{cause}})",
    f"Steps down the executor ladder (process pool, fewer processes, {SEQUENTIAL}). reason: what failed "
    f"({listing(FALLBACK_REASONS)}); cause: what refused the start ({_CAUSES}; {NO_CAUSE} when the step is not "
    "about a start). Each fallback is also an annotation on every graph. Click a series for its log lines; their "
    "trace_id opens the trace.",
    "no fallback in this range", width=16)
START_REFUSALS = EventPanel(
    "Refused thread and process starts per interval by kind and cause", "start_refusals", "kind, cause",
    "{{kind}} refused by {{cause}}",
    f"Thread and process starts the kernel refused ({listing(START_KINDS)}), by the limit or filter that refused "
    f"them ({listing(START_CAUSES)}): one per fallback of reason thread_start_failed or process_start_failed, on "
    "any rung, conformer generation's threads included.",
    "no start refused in this range", width=8)
POOL_RESTARTS = EventPanel(
    "Broken pools replaced per interval", "pool_restarts", "executor_kind", "{{executor_kind}}",
    "Worker pools found broken (a worker died: OOM killer, SIGKILL) and replaced, per executor kind. Each also "
    f"shows as a {BROKEN_POOL} fallback; the unfinished batches were re-run on the next rung, not lost.",
    "no pool replaced in this range", width=8)
REFUSED_FORKS = EventPanel(
    "Forks refused by the pids cgroup", "pids_refused_forks", "", "",
    "The kernel's own count of forks (new threads and processes) the pids controller refused in the job's "
    "cgroup, from any process in it (pids.events max, summed over the cgroup's pids levels). A bar is a thread "
    "or process that failed to start, even when the headroom never looked low: a refused pool start frees its "
    "tasks at once. The first scrape counts what the cgroup had refused before the process started.",
    "no fork refused (or no pids cgroup visible to the job)", width=8)
def ratio_alert(what: str, ratio: float, minutes: int) -> str:
    """When a failure-ratio alert fires, in words: its rule has no ``for``, so no "for N minutes"."""
    return (f"fires above {percent(ratio)} of the {what} counted over the last {minutes} minutes, at the first "
            "rule evaluation that sees it (no hold: a 10 s job has no minutes to hold)")


CONFORMER_FAILURES = EventPanel(
    "Conformer failures per interval by reason", "conformers_failed", "reason", "{{reason}}",
    f"Conformers that could not be scored, per reason ({listing(FAILURE_REASONS)}). These are input problems: a "
    f"fallback never loses a conformer. The failure-ratio alert "
    f"{ratio_alert('conformers', FAILURE_RATIO, FAILURE_MINUTES)}.",
    "no conformer failed in this range", width=8)
CALLS = EventPanel(
    "select_best calls per interval by outcome", "select_best_calls", "outcome", "{{outcome}}",
    "Calls of select_best that ended, ok or error (an exception left the call). A run of `templ select-best` is "
    "one call; a campaign makes one per query.",
    "no select_best call ended in this range", width=8)
GENERATIONS_IN_PROGRESS_TITLE = "Conformer generations in progress"
"""The panel of the generations running now: empty (its no-value text) whenever none runs."""
GENERATIONS = EventPanel(
    "Conformer generations per interval by outcome", "conformer_generations", "outcome", "{{outcome}}",
    "Conformer generations (ETKDG) of select-best queries that ended, ok or error; campaign queries embed in "
    "their workers and count as queries. ETKDG reports no progress while it embeds: the panel below shows the "
    "generations still running, during which a job is busy though it scores nothing.",
    "no conformer generation ended in this range", width=8)
QUERIES = EventPanel(
    "Queries finished per interval by status and reason", "campaign_queries", "status, reason",
    "{{status}} {{reason}}",
    f"Campaign queries finished, {OK} (reason none) or {FAILED} by reason "
    f"({listing(reason for reason in QUERY_REASONS if reason != 'none')}). No bars while queries remain is a "
    f"stall: the stall alert fires after {CAMPAIGN_STALL_MINUTES} minutes without a finished query; the failure "
    f"alert {ratio_alert('queries', CAMPAIGN_FAILURE_RATIO, CAMPAIGN_FAILURE_MINUTES)}. "
    f"Click a series for its {EVENT_QUERY_FINISHED} lines: query id, reason and detail.",
    "no campaign query finished in this range", hide_zero=False, width=9)
SHORTFALLS = EventPanel(
    "Queries short of conformers per interval", "campaign_shortfalls", "", "",
    "Campaign queries that got some conformers but fewer than asked (ETKDG embedded fewer): their pose comes from "
    "fewer candidates. A query with none is a failure (embedding_failed), counted in the panel beside.",
    "no query short of conformers in this range", hide_zero=False, width=6)
REPLACEMENTS = EventPanel(
    "Worker replacements per interval by reason", "campaign_worker_replacements", "reason", "{{reason}}",
    "Campaign workers ended because their query ran over --query-timeout "
    f"({value('timeout', REPLACEMENT_REASONS)}) or found dead ({value('worker_lost', REPLACEMENT_REASONS)}: the "
    "OOM killer, a crash in native code), and replaced. Their query is a failed row; the rest of the campaign "
    f"goes on. Workers recycled between queries ({value('recycled', REPLACEMENT_REASONS)}: memory grown past "
    "TEMPL_RECYCLE_GROWTH, or TEMPL_RECYCLE_QUERIES run) lose no query. Click a series for the log lines.",
    "no campaign worker replaced in this range", hide_zero=False, width=9)
PREPARATIONS = EventPanel(
    "Query preparations per interval by action", "query_preparations", "action", "{{action}}",
    "What query preparation did: counterions and solvents removed, stereoisomers enumerated (capped: more than "
    "--max-isomers), isotopes cleared, and queries refused before embedding (unsupported_element, too_small). A "
    "query counts once under each thing done to it; the query.prepared log lines say which query.",
    "no query prepared in this range", hide_zero=False, width=6)
POSES = EventPanel(
    "Poses per interval by method and fallback", "poses", "method, fallback", "{{method}} {{fallback}}",
    "How each kept pose (one per select-best run or campaign query) was made from its template: pinned (the "
    "core shared with the template embedded at its coordinates), pinned_partial, free or input, and why the core "
    "was not pinned whole (stereo_mismatch, constraints_unmet, small_core, mcs_timeout; not_selected with "
    "--top-templates all, pin_off with --no-pin). Many free poses mean the library holds no close analogue of "
    "the queries; the templates.chosen log lines (debug) name each query's template.",
    "no pose kept in this range", hide_zero=False, width=12)
DEGRADED = EventPanel(
    "Telemetry degraded per interval by component and reason", "telemetry_degraded", "component, reason",
    "{{component}}: {{reason}}",
    f"Telemetry components ({listing(DEGRADED_COMPONENTS)}) that could not start normally or lost data and run "
    "degraded, by reason (e.g. push_failed: the Pushgateway refused or did not answer a push, counted on the next "
    "push that succeeds). Scoring goes on; what the component would have delivered may be missing.",
    "telemetry healthy: nothing degraded in this range", width=8)
RESUBMISSIONS = EventPanel(
    "Batch resubmissions per interval", "batch_resubmissions", "executor_kind, reason", "{{reason}}",
    f"Batches sent again because the Dask worker running them ({value('worker_lost', BATCH_RESUBMISSION_REASONS)}) or "
    f"holding their result ({value('result_lost', BATCH_RESUBMISSION_REASONS)}) left the cluster. Results are still "
    "counted once.",
    "no batch resubmitted in this range", width=6)
QUERY_RESUBMISSIONS = EventPanel(
    "Query resubmissions per interval", "campaign_query_resubmissions", "reason", "{{reason}}",
    f"Campaign queries (templ screen --executor dask) run again because the Dask worker running them "
    f"({value('worker_lost', RESUBMISSION_REASONS)}) or holding their result "
    f"({value('result_lost', RESUBMISSION_REASONS)}) left the cluster, or because the task they shared with "
    f"other queries was cancelled or given up ({value('task_cancelled', RESUBMISSION_REASONS)}: a query in it "
    "timed out or was lost). Dask runs a query again once; a second loss makes it a worker_lost row. Each query "
    "still has one row.",
    "no query resubmitted in this range", width=6)

_EVENT_SPECS: tuple[EventPanel, ...] = (REDUCTIONS, FALLBACKS_BARS, START_REFUSALS, POOL_RESTARTS, REFUSED_FORKS,
                                        CONFORMER_FAILURES, CALLS, GENERATIONS, QUERIES, SHORTFALLS, REPLACEMENTS,
                                        PREPARATIONS, POSES, DEGRADED, RESUBMISSIONS, QUERY_RESUBMISSIONS)
EVENT_PANELS: tuple[tuple[str, str], ...] = tuple((spec.title, spec.short) for spec in _EVENT_SPECS)
"""(panel title, catalog short name of its counter) of every event panel: the sum of a panel's bars over a range
is the number of those events in it."""
THROUGHPUT_COUNTERS: tuple[str, ...] = ("conformers_scored", "batches")
"""The counters charted as rates, where a rate is the point (the work done per second), not as event bars."""


def _event_totals() -> stat.Panel:
    """Totals over the dashboard range: a short run reads as what it did, not as a 0/s rate."""
    return stat_panel(
        "Events over the range",
        "Events of the selected instances over the whole dashboard range, exact (the bars of the event panels "
        "summed): runs that ended inside the range included. A green 0 is a range without any.",
        "short",
        [Query(events_total(metric(spec.short), ""), label) for spec, label in (
            (FALLBACKS_BARS, "fallbacks"), (START_REFUSALS, "refused starts"), (REDUCTIONS, "worker reductions"),
            (POOL_RESTARTS, "pools replaced"), (REFUSED_FORKS, "forks refused by the pids cgroup"))],
        threshold_steps=(("green", None), ("orange", 1)), width=8,
    )


def _decision_panels() -> list:
    reduction_logs = links.logs_url(links.event_logs(
        EVENT_WORKERS_REDUCED, 'task_type="${__field.labels.task_type}"', 'reason="${__field.labels.reason}"'))
    return [
        time_series(
            "Workers requested vs granted",
            "Workers asked for and workers granted by the limit-aware sizing, for the most recent executor "
            "of each task type. A gap is a grant cut to fit the headroom; the next panel says why.",
            "short",
            [
                Query(series(metric("workers_requested")), "{{instance}} {{task_type}} requested"),
                Query(series(metric("workers_granted")), "{{instance}} {{task_type}} granted"),
            ],
            calcs=GAUGE_CALCS, step_lines=True,
        ),
        REDUCTIONS.build([links.link("Logs of these reductions", reduction_logs,
                                     f"{EVENT_WORKERS_REDUCED} lines for this task type and reason")]),
    ]


def _fallback_panels() -> list:
    fallback_logs = links.logs_url(links.event_logs(
        EVENT_FALLBACK, 'reason="${__field.labels.reason}"', 'cause="${__field.labels.cause}"'))
    return [
        FALLBACKS_BARS.build([links.link("Logs of these fallbacks", fallback_logs,
                                         f"{EVENT_FALLBACK} lines for this reason and cause")]),
        _event_totals(),
        START_REFUSALS.build(),
        POOL_RESTARTS.build(),
    ]


def _work_panels() -> list:
    process, thread, dask = (value(kind, EXECUTOR_KINDS) for kind in ("process", "thread", "dask"))
    return [
        time_series(
            "Conformers scored/s",
            f"Throughput: conformers scored per second, per instance and run. A drop together with {SEQUENTIAL} "
            "batches (next panel) is the cost of the fallbacks above. A run shorter than a few scrapes draws "
            "little here: the stat beside counts what it scored.",
            "cps",
            [Query(with_run(sum_rate(metric("conformers_scored"), "job, instance")), "{{instance}} {{run_id}}")],
            width=8,
        ),
        stat_panel(
            "Conformers scored over the range",
            "Conformers the selected instances scored over the whole dashboard range, exact (counted like the "
            "event bars: a run that ended inside the range, or that lived for one scrape, included), and the "
            "select_best calls that ended with an error.",
            "short",
            [Query(events_total(metric("conformers_scored"), ""), "conformers scored"),
             Query(events_total(metric("select_best_calls"), "", f'outcome="{ERROR}"'), "select_best errors")],
            threshold_steps=(("blue", None),), width=4,
        ),
        time_series(
            "Batches/s by executor kind",
            f"Conformer batches finished per second by the executor kind that ran them: {process} (pool "
            f"workers), {thread}, {dask} (a Dask cluster's workers) or {SEQUENTIAL} (in the calling thread, "
            "after a fallback: one CPU).",
            "ops",
            [Query(sum_rate(metric("batches"), "instance, executor_kind") + " > 0",
                   "{{instance}} {{executor_kind}}")],
            width=12, no_value="no batch finished in this range",
        ),
        CONFORMER_FAILURES.build(),
        CALLS.build(),
        GENERATIONS.build(),
        time_series(
            "Batch duration p50 / p95 / p99 by executor kind",
            "Wall time of one conformer batch, quantiles per instance and executor kind (kinds are never mixed: a "
            f"{SEQUENTIAL} batch runs on one CPU) from the histogram buckets. Dots are exemplars, single batches "
            "with their trace_id: click one to open its trace in Tempo. A quantile inside the first bucket is "
            "interpolated, not measured.",
            "s",
            [
                Query(quantile(q, metric("batch_duration"), by="instance, executor_kind") + " > 0",
                      f"{{{{instance}}}} {{{{executor_kind}}}} p{round(q * 100)}", exemplar=q == 0.5)
                for q in (0.5, 0.95, 0.99)
            ],
            width=12, no_value="no batch finished in this range",
        ),
        time_series(
            "select_best call duration p50 / p95 / p99",
            "Wall time of whole select_best calls (one per `templ select-best` run, one per campaign query), "
            "quantiles per instance from the histogram buckets. The real cost of a fallback shows here: a call "
            f"that fell back to {SEQUENTIAL} runs its batches on one CPU and takes as long as all of them. Dots are "
            "exemplars: click one to open the call's trace.",
            "s",
            [
                Query(quantile(q, metric("select_best_duration")) + " > 0", f"{{{{instance}}}} p{round(q * 100)}",
                      exemplar=q == 0.5)
                for q in (0.5, 0.95, 0.99)
            ],
            width=12, no_value="no select_best call ended in this range",
        ),
        time_series(
            GENERATIONS_IN_PROGRESS_TITLE,
            "Conformer generations (ETKDG) running now, per instance and run: embedding many conformers of a "
            "flexible ligand takes minutes with no other sign of life, and the stall alert leaves a job alone "
            "while this is above 0.",
            "short",
            [Query(with_run(f"sum by (job, instance) ({series(metric('conformer_generations_in_progress'))}) > 0"),
                   "{{instance}} {{run_id}}")],
            width=24, no_value="no conformer generation running",
        ),
    ]


def _by_instance(short: str, *matchers: str) -> str:
    return f"sum by (instance) ({series(metric(short), *matchers)})"


#: Queries finished in this run, queries an earlier run finished (--resume), queries in the input.
DONE = _by_instance("campaign_queries")
SKIPPED = _by_instance("campaign_skipped")
EXPECTED = _by_instance("campaign_expected")
#: Seconds since the process started: a ``templ screen`` process runs one campaign.
ELAPSED = f"sum by (instance) (time() - {series('process_start_time_seconds')})"


def campaign_eta() -> str:
    """Seconds left at the average rate of this run (none until a query has finished)."""
    return f"clamp_min({EXPECTED} - {SKIPPED} - {DONE}, 0)\n/\n({DONE} / {ELAPSED} > 0)"


def _campaign_panels() -> list:
    failed, ok = FAILED, OK
    failure_logs = links.logs_url(links.event_logs(EVENT_QUERY_FINISHED, f'status="{failed}"',
                                                   'reason="${__field.labels.reason}"'))
    replacement_logs = links.logs_url(links.event_logs(EVENT_WORKER_REPLACED, 'reason="${__field.labels.reason}"'))
    return [
        stat_panel(
            "Campaign progress",
            "Share of the campaign's input done, per instance: queries finished in this run plus those an earlier "
            "run finished (--resume), over the queries in the input. No value (NaN) while the input's size is not "
            "known up front, or when the instance runs no campaign.",
            "percentunit",
            [Query(f"({DONE} + {SKIPPED})\n/\n{EXPECTED}", "{{instance}}")],
            threshold_steps=(("blue", None), ("green", 1)),
        ),
        time_series(
            "Queries done vs expected",
            "Queries finished (this run and earlier ones, --resume) next to the queries in the input, and those "
            "an earlier run had finished. The gap between the first two lines is what is left.",
            "short",
            [
                Query(f"{DONE} + {SKIPPED}", "{{instance}} done"),
                Query(EXPECTED, "{{instance}} expected"),
                Query(SKIPPED, "{{instance}} done by an earlier run"),
            ],
            width=9, calcs=GAUGE_CALCS,
        ),
        QUERIES.build([links.link("Logs of these failures", failure_logs,
                                  f"{EVENT_QUERY_FINISHED} lines of failed queries for this reason")]),
        stat_panel(
            "ETA",
            "Time left, per instance, at the average rate of this run: the queries left over the queries finished "
            "per second since the process started. None until the first query finishes, or while the input's "
            "size is not known.",
            "s",
            [Query(campaign_eta(), "{{instance}}")],
            threshold_steps=(("blue", None),),
        ),
        SHORTFALLS.build(),
        time_series(
            "Queries in flight vs workers",
            "Queries handed to a worker whose result has not arrived, next to the campaign's workers: each worker "
            "runs one and holds up to three waiting, one at the most in the campaign's last queries. In flight "
            "below the workers while queries remain means workers wait for input or output; 0 in flight with "
            "queries left is a stall.",
            "short",
            [
                Query(series(metric("campaign_in_flight")), "{{instance}} in flight"),
                Query(series(metric("workers_granted"), f'task_type="{SCREENING}"'), "{{instance}} workers"),
            ],
            width=9, calcs=GAUGE_CALCS, step_lines=True,
        ),
        REPLACEMENTS.build([links.link("Logs of these replacements", replacement_logs,
                                       f"{EVENT_WORKER_REPLACED} lines for this reason")]),
        PREPARATIONS.build(),
        time_series(
            "Query duration p50 / p95 / p99",
            f"Wall time of one {ok} query in its worker (conformer generation and scoring), quantiles per "
            "instance from the histogram buckets. A rising tail towards --query-timeout turns into timeouts.",
            "s",
            [
                Query(quantile(q, metric("campaign_query_duration"), matchers=(f'status="{ok}"',)),
                      f"{{{{instance}}}} p{round(q * 100)}")
                for q in (0.5, 0.95, 0.99)
            ],
            width=16,
        ),
        POSES.build(),
        time_series(
            "Template choice p50 / p95",
            "Time choosing one query's templates from the library (the 2D prefilter, then MCS on the best "
            "candidates, bounded by --mcs-timeout), quantiles per instance from the histogram buckets.",
            "s",
            [
                Query(quantile(q, metric("template_selection_duration")), f"{{{{instance}}}} p{round(q * 100)}")
                for q in (0.5, 0.95)
            ],
            width=12,
        ),
    ]


def _process_panels() -> list:
    return [
        time_series(
            "CPU",
            "CPU time of the TEMPL parent process, 100% = one core. Pool workers are separate processes "
            "and not included: with a healthy pool the parent stays low; after a fallback to sequential "
            "it scores in its own thread and climbs toward one core.",
            "percentunit",
            [Query(f"rate({series('process_cpu_seconds_total')}[$__rate_interval])", "{{instance}}")],
            width=8,
        ),
        time_series(
            "Resident memory",
            f"Resident set size of the TEMPL parent process. Thread stacks count against {STACK_MEMORY} "
            "headroom, not here, until they are touched.",
            "bytes",
            [Query(series("process_resident_memory_bytes"), "{{instance}}")],
            width=8, calcs=GAUGE_CALCS,
        ),
        time_series(
            "Open file descriptors (% of the limit)",
            "Open file descriptors of the TEMPL parent process as a share of its limit (RLIMIT_NOFILE, "
            "process_open_fds / process_max_fds). Every process worker holds pipes in the parent, so a large pool "
            "can run out of descriptors too: at 100% the next pool start fails with EMFILE.",
            "percentunit",
            [Query(f"{series('process_open_fds')}\n/\n({series('process_max_fds')} > 0)", "{{instance}}")],
            width=8, calcs=GAUGE_CALCS, min_value=0, max_value=1,
        ),
        DEGRADED.build(),
    ]


def _dask_panels() -> list:
    scheduler = f'job="{dask_metrics.SCHEDULER_JOB}"'
    workers = f'job="{dask_metrics.WORKERS_JOB}"'
    return [
        time_series(
            "Dask tasks by state",
            "Tasks on the Dask scheduler (--executor dask), from the scheduler's own /metrics: processing "
            "(assigned to a worker: running, or next in line there; a campaign keeps two per worker thread), "
            "queued (held on the scheduler until a worker has room) and no-worker (no worker can take them: "
            "a cluster that lost every worker). TEMPL submits one task per batch (select-best) "
            "or per query (screen).",
            "short",
            [Query(f'sum by (state) (dask_scheduler_tasks{{{scheduler}, state=~"processing|queued|no-worker"}})',
                   "{{state}}")],
            width=6, calcs=GAUGE_CALCS,
        ),
        time_series(
            "Dask workers",
            "Workers known to the scheduler by state (idle, partially_saturated, saturated, paused, retiring), "
            "and workers removed per second: a removed worker means its batches or queries were resubmitted.",
            "short",
            [
                Query(f"sum by (state) (dask_scheduler_workers{{{scheduler}}})", "{{state}}"),
                Query(f"rate(dask_scheduler_workers_removed_total{{{scheduler}}}[$__rate_interval])",
                      "removed/s"),
            ],
            width=6, calcs=GAUGE_CALCS,
        ),
        time_series(
            "Dask worker threads",
            "Threads all Dask workers run tasks on, from the workers' /metrics. AlignMol holds the GIL, so "
            "one thread per worker process is right; a campaign query's ETKDG uses the CPUs its machine has "
            "per task thread.",
            "short",
            [Query(f"sum(dask_worker_threads{{{workers}}})", "threads")],
            width=6, calcs=GAUGE_CALCS,
        ),
        RESUBMISSIONS.build(),
        QUERY_RESUBMISSIONS.build(),
    ]


FALLBACK_STEP = "15s"
"""Step of the fallback annotation: each step marks the fallbacks of the step that ends there, exactly."""


def _fallback_annotation() -> PrometheusAnnotation:
    # events of the step, exact (a series born at 1 included), and only steps with one: a zero-initialised
    # combination draws no annotation
    fallbacks = per_series_events(FALLBACKS, FALLBACK_STEP)
    return PrometheusAnnotation(
        "Executor fallbacks",
        f"sum by (instance, from_kind, to_kind, reason, cause) ({fallbacks}) > 0",
        step=FALLBACK_STEP,
        title="Fallback {{from_kind}} -> {{to_kind}}",
        text="{{instance}}: {{reason}} (cause {{cause}})",
        tags="reason,cause",
        color="orange",
    )


def _dashboard_links() -> list:
    return [
        links.link("Executor logs", links.logs_url(f'{links.JOB_LOGS} | event=~"executor[.].+"'),
                   "Loki: every executor event of the job (reductions, fallbacks, pool restarts), this time range"),
        links.link("Fallback logs", links.logs_url(links.event_logs(EVENT_FALLBACK)),
                   f"Loki: {EVENT_FALLBACK} lines with reason, cause and trace_id, this time range"),
        links.link("Failed campaign queries", links.logs_url(links.event_logs(EVENT_QUERY_FINISHED,
                                                                              f'status="{FAILED}"')),
                   f"Loki: {EVENT_QUERY_FINISHED} lines of failed queries (query id, reason, detail), this time range"),
        links.link(f"Failed {SPAN_QUERY} traces",
                   links.traces_url(f'{{{links.JOB_SPANS} && name="{SPAN_QUERY}" && status=error}}'),
                   f"Tempo: {SPAN_QUERY} spans of failed queries, with their worker's spans"),
        links.link(f"{SPAN_SELECT_BEST} traces",
                   links.traces_url(f'{{{links.JOB_SPANS} && name="{SPAN_SELECT_BEST}"}}'),
                   f"Tempo: {SPAN_SELECT_BEST} calls of the job, this time range"),
        links.link("Sequential traces",
                   links.traces_url(f'{{{links.JOB_SPANS} && name="{SPAN_SELECT_BEST}" '
                                    f'&& span.{ATTR_EXECUTOR_KIND}="{SEQUENTIAL}"}}'),
                   f"Tempo: {SPAN_SELECT_BEST} calls that ended on the {SEQUENTIAL} rung"),
    ]


def build() -> dashboard.Dashboard:
    """The dashboard model, panels numbered top to bottom."""
    t = thresholds()
    builder = (
        Dashboard(TITLE).uid(UID).tags(["templ", "executor", "threads"])
        .description("Thread headroom per kernel limit, what the TEMPL executor gave up (worker reductions, "
                     "fallbacks), what it cost (throughput, batch latency) and how a screening campaign "
                     "advances (progress, ETA, failures). Metrics from "
                     "telemetry/catalog.py; alerts in dashboards/prometheus/alerts.yml.")
        .time("now-30m", "now").refresh("30s").tooltip(dashboard.DashboardCursorSync.CROSSHAIR).readonly()
        .variables(_variables()).annotation(_fallback_annotation()).links(_dashboard_links())
    )
    for title, panels in (
        ("Headroom", _headroom_panels(t)),
        ("Decisions", _decision_panels()),
        ("Fallbacks", _fallback_panels()),
        ("Work", _work_panels()),
        ("Campaign", _campaign_panels()),
        ("Process", _process_panels()),
        ("Fleet", panels_fleet.fleet_panels(t)),
        ("Exporters", panels_fleet.exporter_panels()),
        ("Dask", _dask_panels()),
    ):
        builder = builder.with_row(Row(title))
        for panel in panels:
            builder = builder.with_panel(panel)
    model = builder.build()
    for number, panel in enumerate(model.panels or [], start=1):
        panel.id_val = number
    return model
