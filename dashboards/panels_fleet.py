"""The Fleet row (runs, the instances closest to a limit, the most events, batch jobs' pushes) and the
Exporters row (node_exporter and cAdvisor thread and process counts beside TEMPL's).

Fleet tables are instant queries over the whole dashboard range, cut to the top ten by
``topk``/``bottomk``, so they stay a screenful at 100 jobs and keep jobs that ended inside
the range.
"""

from __future__ import annotations

from templ_pipeline.dashboards import dashboard_exporters
from templ_pipeline.dashboards.names import metric
from templ_pipeline.dashboards.panels import GAUGE_CALCS, Query, table_panel, time_series
from templ_pipeline.dashboards.promql import SELECTOR, events_total, headroom_share, series, with_run
from templ_pipeline.dashboards.thresholds import Thresholds, percent

#: Rows of each fleet table.
FLEET_TOP = 10

_RANGE = "[$__range:$__interval]"
_BY_JOB = "job, instance, job_id"


def _share() -> str:
    return headroom_share(series(metric("thread_headroom")), series(metric("thread_limit")))


def _runs_table() -> object:
    info = series(metric("run_info"), 'host=~"$host"', 'job_id=~"$job_id"')
    by = "job, instance, run_id, job_id, host"
    return table_panel(
        "Runs in the range",
        "Every run of the selected instances seen in the dashboard range, from the templ_run_info series each run "
        "publishes when it starts: run_id (the id in its log lines and traces), the scheduler's job id and the "
        "host, with its start (templ_run_start_time_seconds, which the alert rules use to tell a run's new "
        "counters from old ones seen anew) and the first and last time Prometheus saw it. Successive runs on one "
        "instance are separate rows; the TEMPL version of each instance (templ_build_info) is a row of its own.",
        "dateTimeAsIso",
        # times * 1000: Grafana's dateTime units read milliseconds, Prometheus gives seconds
        [Query(f"min by ({by}) (min_over_time(timestamp({info}){_RANGE})) * 1000", "{{run_id}} first seen"),
         Query(f"max by ({by}) (max_over_time(timestamp({info}){_RANGE})) * 1000", "{{run_id}} last seen"),
         Query(f"max by (job, instance, version) (max_over_time({series(metric('build_info'))}[$__range]))",
               "{{instance}} version {{version}}"),
         Query(f"max by ({by}) (max_over_time(({with_run(series(metric('run_start')))}){_RANGE})) * 1000",
               "{{run_id}} started")],
        no_value="no run published templ_run_info in this range", width=12,
    )


def _headroom_table(t: Thresholds) -> object:
    lowest = f"min by (job, instance, limit) (min_over_time(({_share()}){_RANGE}))"  # live gauges: never pushed
    return table_panel(
        "Fleet: least headroom share over the range",
        f"The {FLEET_TOP} instance and limit pairs with the least headroom as a share of the limit at any moment "
        f"of the range (headroom / limit; known, enforced limits only). Below {percent(t.warning_share)} is the "
        f"warning level, below {percent(t.critical_share)} critical.",
        "percentunit",
        [Query(f"bottomk({FLEET_TOP}, {lowest})", "{{instance}} {{limit}}")],
        no_value="no headroom reported in this range", width=12,
    )


def _events_table() -> object:
    def top(short: str, *matchers: str) -> str:
        return f"topk({FLEET_TOP}, {events_total(metric(short), _BY_JOB, *matchers)} > 0)"

    return table_panel(
        "Fleet: most fallbacks and refused starts over the range",
        f"The {FLEET_TOP} instances with the most fallbacks, and those with the most refused thread or process "
        "starts and worker reductions, over the whole range (exact counts, as in the event panels), one row per "
        "instance. Instances without any are left out.",
        "short",
        [Query(top("fallbacks"), "{{instance}} fallbacks"),
         Query(top("start_refusals"), "{{instance}} refused starts"),
         Query(top("worker_reductions"), "{{instance}} worker reductions")],
        no_value="no fallback, refused start or reduction in this range", width=12,
    )


def _batch_jobs_table() -> object:
    def latest(name: str) -> str:
        return f"max by ({_BY_JOB}) ({name}{{{SELECTOR}}})"

    return table_panel(
        "Batch jobs: last push and last outcome",
        "Per job (pushed series carry job_id), seconds since its last push to the Pushgateway and since its last "
        "failed push, its push interval (--push-interval; 0: pushes only at its end), and seconds since it last "
        "ended successfully or in failure. A last push older than a few intervals from a job that has not ended "
        "is a job that died without its last push.",
        "s",
        [Query(f"time() - {latest('push_time_seconds')}", "{{job_id}} since push"),
         Query(f"time() - ({latest('push_failure_time_seconds')} > 0)", "{{job_id}} since failed push"),
         Query(latest(metric("push_interval")), "{{job_id}} push interval"),
         Query(f"time() - ({latest(metric('last_success'))} > 0)", "{{job_id}} since success"),
         Query(f"time() - ({latest(metric('last_failure'))} > 0)", "{{job_id}} since failure")],
        no_value="no pushed or ended job in this range", width=12,
    )


def fleet_panels(t: Thresholds) -> list:
    """Runs, the fleet's top instances, headroom by host and batch jobs' pushes."""
    return [
        _runs_table(),
        _headroom_table(t),
        _events_table(),
        time_series(
            "Least headroom share per host and limit",
            "Per host (the host label of each run's templ_run_info) and limit, the least headroom share of the "
            "jobs on it: host-wide limits (threads-max, pid_max) read the same in every job of a host, so a host "
            "that runs out shows here once. Instances whose run identity is not known yet group under an empty "
            "host.",
            "percentunit",
            [Query(f"min by (host, limit) (\n{with_run(_share())}\n)", "{{host}} {{limit}}")],
            width=12, calcs=GAUGE_CALCS, min_value=0, max_value=1,
        ),
        _batch_jobs_table(),
    ]


def exporter_panels() -> list:
    """node_exporter's and cAdvisor's counts: host- and container-wide, whatever TEMPL reports."""
    node = 'job="$node_job"'
    cadvisor = 'job="$cadvisor_job"'
    no_node = (f"no data: run node_exporter with {dashboard_exporters.NODE_FLAG} and set its scrape job "
               "(variable node_exporter job)")
    no_cadvisor = ("no data: scrape cAdvisor (or the kubelet's /metrics/cadvisor) and set its job "
                   "(variable cAdvisor job)")
    templ_threads = f"sum by (host) (\n{with_run(series(metric('process_threads')))}\n)"
    return [
        time_series(
            "Node threads vs threads-max",
            "Threads of every process on each node (node_exporter's node_processes_threads) next to the kernel's "
            "threads-max (node_processes_max_threads), and the OS threads of the TEMPL processes per host. A node "
            f"line meeting its max is every thread start on that node failing. Needs {dashboard_exporters.NODE_FLAG}.",
            "short",
            [Query(f"node_processes_threads{{{node}}}", "{{instance}} threads"),
             Query(f"node_processes_max_threads{{{node}}}", "{{instance}} threads-max"),
             Query(templ_threads, "{{host}} TEMPL threads")],
            width=8, calcs=GAUGE_CALCS, symlog=True, no_value=no_node,
        ),
        time_series(
            "Node processes vs pid_max",
            "Processes on each node (node_processes_pids) next to kernel.pid_max (node_processes_max_processes): "
            "pid_max bounds threads and processes together, so a node full of short-lived threads can meet it "
            f"before threads-max. Needs {dashboard_exporters.NODE_FLAG}.",
            "short",
            [Query(f"node_processes_pids{{{node}}}", "{{instance}} processes"),
             Query(f"node_processes_max_processes{{{node}}}", "{{instance}} pid_max")],
            width=8, calcs=GAUGE_CALCS, symlog=True, no_value=no_node,
        ),
        time_series(
            "Containers closest to their pids limit (cAdvisor)",
            f"The {FLEET_TOP} containers whose threads (cAdvisor's container_threads) are the largest share of "
            "their limit (container_threads_max, the cgroup's pids.max; containers without a limit report 0 and "
            "are left out).",
            "percentunit",
            [Query(f"topk({FLEET_TOP}, container_threads{{{cadvisor}}}\n/\n(container_threads_max{{{cadvisor}}} > 0))",
                   "{{name}} {{id}}")],
            width=8, calcs=GAUGE_CALCS, min_value=0, no_value=no_cadvisor,
        ),
    ]
