"""The "TEMPL executor: thread exhaustion" dashboard.

Read top to bottom when paged: how close each instance is to its thread limit and
which limit binds (Headroom), what the executor gave up (Decisions, Fallbacks), what
it cost (Work), how a screening campaign advances (Campaign), and the process itself
(Process). Links open the job's logs (Loki)
and traces (Tempo) for the same time range; exemplars on the batch latency open the
trace of one batch.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders.dashboard import Dashboard, DatasourceVariable, QueryVariable, Row
from grafana_foundation_sdk.models import dashboard

from templ_pipeline.dashboards import dask_metrics, links
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
from templ_pipeline.dashboards.panels import GAUGE_CALCS, PROMETHEUS, Query, stat_panel, time_series
from templ_pipeline.dashboards.promql import finite, quantile, series, sum_rate
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
    EVENT_FALLBACK,
    EVENT_QUERY_FINISHED,
    EVENT_WORKER_REPLACED,
    EVENT_WORKERS_REDUCED,
    EXECUTOR_KINDS,
    FAILURE_REASONS,
    FALLBACK_CAUSES,
    FALLBACK_REASONS,
    LIMIT_NAMES,
    QUERY_REASONS,
    REPLACEMENT_REASONS,
    RESUBMISSION_REASONS,
    SPAN_QUERY,
    SPAN_SELECT_BEST,
)
from templ_pipeline.core.limits.model import PIDS_CGROUP, STACK_MEMORY

UID = "templ-executor"
TITLE = "TEMPL executor: thread exhaustion"

HEADROOM = finite(series(metric("thread_headroom")))
LIMIT = series(metric("thread_limit"))
FALLBACKS = series(metric("fallbacks"))
BROKEN_POOL = value("broken_pool", FALLBACK_REASONS)


def headroom_steps(t: Thresholds) -> tuple[tuple[str, float | None], ...]:
    """Red below the critical alert's headroom, orange below the warning's, green above."""
    return (("red", None), ("orange", t.critical_tasks), ("green", t.warning_tasks))


def percent_steps(t: Thresholds) -> tuple[tuple[str, float | None], ...]:
    """The same colours for headroom as a percentage of the limit."""
    return (("red", None), ("orange", as_percent(t.critical_share)), ("green", as_percent(t.warning_share)))


def _variables() -> list:
    job = dashboard.VariableOption(text=JOB, value=JOB)
    every_instance = dashboard.VariableOption(text="All", value="$__all")
    return [
        DatasourceVariable("datasource").label("Prometheus").type("prometheus"),
        DatasourceVariable("loki").label("Loki").type("loki"),
        DatasourceVariable("tempo").label("Tempo").type("tempo"),
        QueryVariable("job").label("Job").datasource(PROMETHEUS).query("label_values(templ_build_info, job)")
        .refresh(dashboard.VariableRefresh.ON_TIME_RANGE_CHANGED).current(job),
        QueryVariable("instance").label("Instance").datasource(PROMETHEUS)
        .query('label_values(templ_build_info{job="$job"}, instance)')
        .refresh(dashboard.VariableRefresh.ON_TIME_RANGE_CHANGED).multi(True).include_all(True).all_value(".*")
        .current(every_instance),
    ]


def _headroom_panels(t: Thresholds) -> list:
    return [
        stat_panel(
            "Binding limit",
            "Per instance, the kernel limit that refuses the next thread first (the least headroom among "
            "the limits that are known and enforced) and its headroom in tasks (thread stacks for "
            f"{STACK_MEMORY}). Red: below {t.critical_tasks}, a {t.smallest_pool}-worker process pool no longer "
            f"fits and the executor runs sequentially; orange: below {t.warning_tasks}. Unknown (NaN) and "
            "unlimited (+Inf) limits are left out; `templ doctor` on the host lists them all.",
            "short",
            [Query(f"bottomk by (instance) (1, {HEADROOM})", "{{instance}}: {{limit}}")],
            threshold_steps=headroom_steps(t),
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
            [Query(f"100 * ({HEADROOM}) / ({LIMIT} > 0 < +Inf)", "{{instance}} {{limit}}")],
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
        time_series(
            "Forks refused by the pids cgroup",
            "The kernel's own count of forks (new threads and processes) that the pids controller refused in the "
            "job's cgroup, from any process in it (pids.events max, summed over the cgroup's pids levels), per "
            "instance. A step up is a thread or process that failed to start, even when the headroom above never "
            "looked low: a refused pool start frees its tasks at once, so the next scrape sees room again. No "
            "line: no pids cgroup is visible to the job. The refused-forks alert fires on any rise.",
            "short",
            [Query(series(metric("pids_refused_forks")), "{{instance}} refused so far")],
            calcs=GAUGE_CALCS, step_lines=True,
        ),
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


def _decision_panels() -> list:
    reduction_logs = links.logs_url(links.event_logs(
        EVENT_WORKERS_REDUCED, 'task_type="${__field.labels.task_type}"', 'reason="${__field.labels.reason}"'))
    caps = listing((f"{reason} (capped at {MANAGER_CAPS[reason]} workers)" for reason in MANAGER_REASONS), " / ")
    others = "".join(f"; {reason}: {meaning}" for reason, meaning in OTHER_REDUCTIONS.items())
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
        time_series(
            "Worker reductions/s by task type and reason",
            "How often the executor granted fewer workers than requested, per task type and reason: the "
            f"limit that bound ({listing(LIMIT_NAMES)}), or {caps} when the thread manager could not answer"
            f"{others}. "
            "A sustained rate costs throughput. Click a series for its log lines.",
            "eps",
            [Query(sum_rate(metric("worker_reductions"), "instance, task_type, reason"),
                   "{{instance}} {{task_type}}: {{reason}}")],
            data_links=[links.link("Logs of these reductions", reduction_logs,
                                   f"{EVENT_WORKERS_REDUCED} lines for this task type and reason")],
        ),
    ]


def _fallback_panels() -> list:
    fallback_logs = links.logs_url(links.event_logs(
        EVENT_FALLBACK, 'reason="${__field.labels.reason}"', 'cause="${__field.labels.cause}"'))
    causes = listing(cause for cause in FALLBACK_CAUSES if cause != NO_CAUSE)
    return [
        time_series(
            "Fallbacks/s by from, to, reason and cause",
            f"Steps down the executor ladder (process pool, fewer processes, {SEQUENTIAL}). reason: what "
            f"failed ({listing(FALLBACK_REASONS)}); cause: what refused the start ({causes}; {NO_CAUSE} when "
            "the step is not about a start). Each fallback is also an annotation on every graph. Click a "
            "series for its log lines; their trace_id opens the trace.",
            "eps",
            [Query(sum_rate(metric("fallbacks"), "instance, from_kind, to_kind, reason, cause"),
                   "{{instance}} {{from_kind}} -> {{to_kind}}: {{reason}} (cause {{cause}})")],
            width=16,
            data_links=[links.link("Logs of these fallbacks", fallback_logs,
                                   f"{EVENT_FALLBACK} lines for this reason and cause")],
        ),
        time_series(
            "Broken pools replaced/s",
            "Worker pools found broken (a worker died: OOM killer, SIGKILL) and replaced, per executor "
            f"kind. Each also shows as a {BROKEN_POOL} fallback; the unfinished batches were re-run on the "
            "next rung, not lost.",
            "eps",
            [Query(sum_rate(metric("pool_restarts"), "instance, executor_kind"),
                   "{{instance}} {{executor_kind}}")],
            width=8,
        ),
    ]


def _work_panels() -> list:
    process, thread, dask = (value(kind, EXECUTOR_KINDS) for kind in ("process", "thread", "dask"))
    return [
        time_series(
            "Conformers scored/s",
            f"Throughput: conformers scored per second, per instance. A drop together with {SEQUENTIAL} "
            "batches (next panel) is the cost of the fallbacks above.",
            "cps",
            [Query(sum_rate(metric("conformers_scored"), "instance"), "{{instance}}")],
            width=8,
        ),
        time_series(
            "Batches/s by executor kind",
            f"Conformer batches finished per second by the executor kind that ran them: {process} (pool "
            f"workers), {thread}, {dask} (a Dask cluster's workers) or {SEQUENTIAL} (in the calling thread, "
            "after a fallback: one CPU).",
            "ops",
            [Query(sum_rate(metric("batches"), "instance, executor_kind"),
                   "{{instance}} {{executor_kind}}")],
            width=8,
        ),
        time_series(
            "Conformer failures/s by reason",
            f"Conformers that could not be scored, per reason ({listing(FAILURE_REASONS)}). These are input "
            "problems: a fallback never loses a conformer. The failure-ratio alert fires above "
            f"{percent(FAILURE_RATIO)} for {FAILURE_MINUTES} minutes.",
            "cps",
            [Query(sum_rate(metric("conformers_failed"), "instance, reason"), "{{instance}} {{reason}}")],
            width=8,
        ),
        time_series(
            "Batch duration p50 / p95 / p99",
            "Wall time of one conformer batch, quantiles per instance from the histogram buckets. Dots "
            "are exemplars, single batches with their trace_id: click one to open its trace in Tempo. A "
            f"rise together with {SEQUENTIAL} batches is the latency cost of a fallback.",
            "s",
            [
                Query(quantile(0.5, metric("batch_duration")), "{{instance}} p50", exemplar=True),
                Query(quantile(0.95, metric("batch_duration")), "{{instance}} p95"),
                Query(quantile(0.99, metric("batch_duration")), "{{instance}} p99"),
            ],
            width=24,
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
    reasons = listing(reason for reason in QUERY_REASONS if reason != "none")
    failure_logs = links.logs_url(links.event_logs(EVENT_QUERY_FINISHED, f'status="{failed}"',
                                                   'reason="${__field.labels.reason}"'))
    replacement_logs = links.logs_url(links.event_logs(EVENT_WORKER_REPLACED, 'reason="${__field.labels.reason}"'))
    timeout, worker_lost = (value(reason, REPLACEMENT_REASONS) for reason in ("timeout", "worker_lost"))
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
        time_series(
            "Queries/s by status",
            f"Queries finished per second, {ok} or {failed}. A drop to 0 while queries remain is a stall: the stall "
            f"alert fires after {CAMPAIGN_STALL_MINUTES} minutes without a finished query.",
            "ops",
            [Query(sum_rate(metric("campaign_queries"), "instance, status"), "{{instance}} {{status}}")],
            width=9,
        ),
        stat_panel(
            "ETA",
            "Time left, per instance, at the average rate of this run: the queries left over the queries finished "
            "per second since the process started. None until the first query finishes, or while the input's "
            "size is not known.",
            "s",
            [Query(campaign_eta(), "{{instance}}")],
            threshold_steps=(("blue", None),),
        ),
        time_series(
            "Query failures/s by reason",
            f"Queries without a pose per second, by reason ({reasons}), and queries that got fewer conformers "
            f"than asked (their pose comes from fewer candidates). The failure alert fires above "
            f"{percent(CAMPAIGN_FAILURE_RATIO)} of the queries for {CAMPAIGN_FAILURE_MINUTES} minutes. Click a "
            f"series for its {EVENT_QUERY_FINISHED} lines: query id, reason and detail.",
            "ops",
            [
                Query(sum_rate(metric("campaign_queries"), "instance, reason", f'status="{failed}"'),
                      "{{instance}} {{reason}}"),
                Query(sum_rate(metric("campaign_shortfalls"), "instance"), "{{instance}} fewer conformers"),
            ],
            width=9,
            data_links=[links.link("Logs of these failures", failure_logs,
                                   f"{EVENT_QUERY_FINISHED} lines of failed queries for this reason")],
        ),
        time_series(
            "Queries in flight vs workers",
            "Queries handed to a worker whose result has not arrived, next to the campaign's workers. In flight "
            "below the workers while queries remain means workers wait for input or output; 0 in flight with "
            "queries left is a stall.",
            "short",
            [
                Query(series(metric("campaign_in_flight")), "{{instance}} in flight"),
                Query(series(metric("workers_granted"), f'task_type="{SCREENING}"'), "{{instance}} workers"),
            ],
            width=9, calcs=GAUGE_CALCS, step_lines=True,
        ),
        time_series(
            "Worker replacements/s by reason",
            f"Campaign workers ended because their query ran over --query-timeout ({timeout}) or found dead "
            f"({worker_lost}: the OOM killer, a crash in native code), and replaced. Their query is a failed row; "
            "the rest of the campaign goes on. Click a series for the log lines.",
            "ops",
            [Query(sum_rate(metric("campaign_worker_replacements"), "instance, reason"), "{{instance}} {{reason}}")],
            width=8,
            data_links=[links.link("Logs of these replacements", replacement_logs,
                                   f"{EVENT_WORKER_REPLACED} lines for this reason")],
        ),
        time_series(
            "Query preparation/s by action",
            "What query preparation did, per second: counterions and solvents removed, stereoisomers enumerated "
            "(capped: more than --max-isomers), isotopes cleared, and queries refused before embedding "
            "(unsupported_element, too_small). A query counts once under each thing done to it; the "
            "query.prepared log lines say which query.",
            "ops",
            [Query(sum_rate(metric("query_preparations"), "instance, action"), "{{instance}} {{action}}")],
            width=8,
        ),
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
            "Open file descriptors",
            "Open file descriptors of the TEMPL parent process and its limit (RLIMIT_NOFILE). Every "
            "process worker holds pipes in the parent, so a large pool can run out of descriptors too.",
            "short",
            [
                Query(series("process_open_fds"), "{{instance}} open"),
                Query(series("process_max_fds"), "{{instance}} limit"),
            ],
            width=8, calcs=GAUGE_CALCS,
        ),
    ]


def _dask_panels() -> list:
    worker_lost, result_lost = (value(reason, RESUBMISSION_REASONS) for reason in ("worker_lost", "result_lost"))
    scheduler = f'job="{dask_metrics.SCHEDULER_JOB}"'
    workers = f'job="{dask_metrics.WORKERS_JOB}"'
    return [
        time_series(
            "Dask tasks by state",
            "Tasks on the Dask scheduler (--executor dask), from the scheduler's own /metrics: processing "
            "(on a worker now), queued (waiting for a free worker thread) and no-worker (no worker can "
            "take them: a cluster that lost every worker). TEMPL submits one task per batch.",
            "short",
            [Query(f'sum by (state) (dask_scheduler_tasks{{{scheduler}, state=~"processing|queued|no-worker"}})',
                   "{{state}}")],
            width=6, calcs=GAUGE_CALCS,
        ),
        time_series(
            "Dask workers",
            "Workers known to the scheduler by state (idle, partially_saturated, saturated, paused, retiring), "
            "and workers removed per second: a removed worker means its batches were resubmitted.",
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
            "one thread per worker process is right; more threads cost tasks and buy nothing.",
            "short",
            [Query(f"sum(dask_worker_threads{{{workers}}})", "threads")],
            width=6, calcs=GAUGE_CALCS,
        ),
        time_series(
            "Batch resubmissions",
            f"Batches sent again because the Dask worker running them ({worker_lost}) or holding their result "
            f"({result_lost}) left the cluster, per second. Results are still counted once.",
            "ops",
            [Query(sum_rate(metric("batch_resubmissions"), "reason"), "{{reason}}")],
            width=6,
        ),
    ]


def _fallback_annotation() -> PrometheusAnnotation:
    new_or_increased = f"increase({FALLBACKS}[1m]) > 0 or ({FALLBACKS} unless {FALLBACKS} offset 1m)"
    return PrometheusAnnotation(
        "Executor fallbacks",
        f"sum by (instance, from_kind, to_kind, reason, cause) ({new_or_increased})",
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
        ("Dask", _dask_panels()),
    ):
        builder = builder.with_row(Row(title))
        for panel in panels:
            builder = builder.with_panel(panel)
    model = builder.build()
    for number, panel in enumerate(model.panels or [], start=1):
        panel.id_val = number
    return model
