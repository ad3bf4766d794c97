"""The Prometheus alert rules (``dashboards/prometheus/alerts.yml``): plain data and one renderer.

:func:`rules` builds each rule from the shared thresholds (:mod:`dashboards.thresholds`,
which asks the worker cost model and the grant what fits), the catalog's names
(:mod:`dashboards.names`) and the query shapes a batch job needs
(:mod:`dashboards.alert_queries`); :func:`render` writes them as the committed YAML, with
the reasoning behind each rule, and when it fires and clears, as a comment.
``python -m templ_pipeline.dashboards.generate`` writes the file; the tests compare the
committed one with :func:`render`, run promtool on it and on the unit tests that
:mod:`dashboards.alert_tests` generates.
"""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import StrEnum

from templ_pipeline.campaign.runner import DEFAULT_QUERY_TIMEOUT
from templ_pipeline.core.limits.model import PID_MAX, PIDS_CGROUP, RLIMIT_NPROC, STACK_MEMORY, THREADS_MAX
from templ_pipeline.dashboards.alert_queries import (
    events,
    indent,
    push_time,
    rose,
    total_events,
    unless_stale_push,
    window,
)
from templ_pipeline.dashboards.dashboard_exporters import CADVISOR_JOB, NODE_JOB, UP
from templ_pipeline.dashboards.executor_dashboard import UID
from templ_pipeline.dashboards.names import (
    FAILED,
    JOB,
    MANAGER_REASONS,
    SEQUENTIAL,
    event,
    listing,
    metric,
    value,
)
from templ_pipeline.dashboards.thresholds import (
    CAMPAIGN_FAILURE_MINUTES,
    CAMPAIGN_FAILURE_RATIO,
    CAMPAIGN_STALL_MINUTES,
    DEAD_GROUP_HOURS,
    EVENT_WINDOW_MINUTES,
    FAILURE_MINUTES,
    FAILURE_RATIO,
    MISSED_PUSHES,
    NODE_PRESSURE,
    PUSH_FRESH_MINUTES,
    PUSH_SLACK_SECONDS,
    Thresholds,
    helper_tasks_by_start_method,
    percent,
    thresholds,
)
from templ_pipeline.telemetry.catalog import (
    DEGRADED_COMPONENTS,
    DEGRADED_REASONS,
    EVENT_QUERY_FINISHED,
    EVENT_WORKER_REPLACED,
    EXECUTOR_KINDS,
    FAILURE_REASONS,
    FALLBACK_REASONS,
    LIMIT_NAMES,
    LOG_EVENTS_BY_NAME,
    NO_REASON,
    OUTCOMES,
    QUERY_REASONS,
)

GROUP = "templ-executor"
WIDTH = 100  # columns of the rendered file
_TEMPLATE = re.compile(r"\{\{.*?\}\}")  # Go template actions in annotations: kept on one line
_GLUE = "\x00"  # stands for a space inside a template action while the text is wrapped


class Severity(StrEnum):
    """What an alert asks of the operator, by its impact on the work. Nothing "complete but slower" pages.

    CRITICAL pages: work is lost (a call failed, a job died without its results) or a job
    is stuck holding its allocation. WARNING opens a ticket: the work completes but degraded
    (sequential, starts refused, a limit about to bind, failures above the norm) or the
    monitoring is blind (telemetry degraded, pushes failing). INFO notifies no one: the
    executor adapted as designed (pools cut to fit); it is context on the dashboard.
    """

    CRITICAL = "critical"
    WARNING = "warning"
    INFO = "info"


@dataclass(frozen=True, slots=True)
class Panel:
    """A panel of the executor dashboard that a runbook sends the operator to."""

    row: str
    title: str

    def __str__(self) -> str:
        return f'the dashboard\'s {self.row} row, panel "{self.title}"'


HEADROOM_PANEL = Panel("Headroom", "Headroom (tasks)")
BINDING_PANEL = Panel("Headroom", "Binding limit")
HOST_PANEL = Panel("Fleet", "Least headroom share per host and limit")
FORKS_PANEL = Panel("Headroom", "Forks refused by the pids cgroup")
REDUCTIONS_PANEL = Panel("Decisions", "Worker reductions per interval by task type and reason")
FALLBACKS_PANEL = Panel("Fallbacks", "Fallbacks per interval by from, to, reason and cause")
DASK_WORKERS_PANEL = Panel("Dask", "Dask workers")
REFUSED_PANEL = Panel("Fallbacks", "Refused thread and process starts per interval by kind and cause")
SCORED_PANEL = Panel("Work", "Conformers scored/s")
FAILURES_PANEL = Panel("Work", "Conformer failures per interval by reason")
CALLS_PANEL = Panel("Work", "select_best calls per interval by outcome")
QUERIES_PANEL = Panel("Campaign", "Queries finished per interval by status and reason")
TELEMETRY_PANEL = Panel("Process", "Telemetry degraded per interval by component and reason")
PUSHES_PANEL = Panel("Fleet", "Batch jobs: last push and last outcome")
NODE_THREADS_PANEL = Panel("Exporters", "Node threads vs threads-max")
NODE_PIDS_PANEL = Panel("Exporters", "Node processes vs pid_max")
CONTAINERS_PANEL = Panel("Exporters", "Containers closest to their pids limit (cAdvisor)")

#: Commands that run where the job's limits are: its cgroup, namespaces and user. `ulimit` in the
#: operator's own shell shows that shell's limits, not the job's.
IN_THE_JOB = ("Run it inside the job, where its limits apply: `srun --overlap --jobid JOBID templ doctor` "
              "(Slurm), `kubectl exec POD -- templ doctor`, `docker exec CONTAINER templ doctor`; it lists every "
              "limit with its headroom and marks the binding one.")
PIDS_WALK = ("The pids limit may sit on an ancestor cgroup: take the path from `cat /proc/PID/cgroup` (v2: the "
             "`0::/PATH` line) and walk up, `d=/sys/fs/cgroup/PATH; while [ \"$d\" != /sys/fs/cgroup ]; do echo "
             "$d $(cat $d/pids.max $d/pids.current); grep max $d/pids.events; d=$(dirname $d); done` (v1: under "
             "/sys/fs/cgroup/pids/); the level with the least room binds, and `max N` in its pids.events counts "
             "the forks it refused. It is the container's --pids-limit, the pod's pids limit or the job's cgroup "
             "(Slurm TasksMax), and counts every task of every process in it.")
PROCESS_LIMITS = ("The job's own limits: `prlimit --pid PID --nproc --as --stack` or `cat /proc/PID/limits` "
                  "(PID from `templ doctor` or `pgrep -u USER -f templ`).")

#: What to look at for each limit the headroom alerts name; together they cover every limit.
LIMIT_CHECKS: tuple[tuple[tuple[str, ...], str], ...] = (
    ((PIDS_CGROUP,), "see above."),
    ((RLIMIT_NPROC,), "Max processes in /proc/PID/limits; it counts every thread of the job's user on the "
                      "host, other jobs of that user included (`ps -L -u USER | wc -l`)."),
    ((THREADS_MAX, PID_MAX), "/proc/sys/kernel/threads-max and pid_max, host-wide: every process on the node "
                             "counts (`ls /proc | wc -l`, `ps -eLf | wc -l`)."),
    ((STACK_MEMORY,), "Max address space and Max stack size in /proc/PID/limits, and free memory: each thread "
                      "reserves a stack."),
)

#: What each fallback reason that ends on the sequential rung means for the operator.
SEQUENTIAL_FALLBACKS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("no_headroom", "thread_start_failed", "process_start_failed"),
     "a kernel limit (the cause) refused the pool; check it as for {low}."),
    (("broken_pool",), "a worker died (OOM killer: `dmesg`, the job's memory limit)."),
    (("daemon_process",), "the caller runs inside a daemon process, which cannot have children; run "
                          "select_best from a non-daemon process."),
)

#: What each reason a Dask run gave up its cluster for means for the operator.
DASK_FALLBACKS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("scheduler_unreachable",), "nothing answered at the scheduler address within 3 s: is `dask scheduler` "
                                 "running, and is the address (--scheduler, DASK_SCHEDULER_ADDRESS) the job's?"),
    (("no_workers",), "the scheduler had no worker for --worker-timeout seconds (none came, or all left): worker "
                      "jobs still queued, ended (walltime) or killed; `dask worker` logs, `squeue -u USER`."),
    (("scheduler_lost",), "the scheduler went away mid-run: its process or node ended (its log, walltime)."),
    (("broken_pool",), "Dask gave up on a batch after losing workers under it: the OOM killer on the worker "
                       "nodes (`dmesg` there, the workers' memory limit)."),
)

#: What to do about each reason a campaign query fails; together they cover every reason.
QUERY_FAILURE_CHECKS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("invalid_smiles", "invalid_record"), "the input: the detail names the record; fix or drop those lines."),
    (("unsupported_element", "too_small"),
     "queries refused before embedding: an element the shape score has no radius for, or too few heavy atoms "
     "to align; the detail says which. Drop them from the library (they cannot be scored)."),
    (("embedding_failed", "no_conformer_scored"),
     "molecules ETKDG cannot embed or that no conformer of which scores (large macrocycles, metals, charged "
     "fragments); the detail says which step."),
    (("timeout",), "queries ran over --query-timeout: raise it, or ask for fewer conformers (--num-conformers)."),
    (("worker_lost",), "workers died mid-query: the OOM killer (`dmesg`, the memory limit of the job) or a crash "
                       "in native code."),
    (("error",), "an unexpected exception: the detail has it; report it with the query id."),
)

LOW = "TemplThreadHeadroomLow"
CRITICAL = "TemplThreadHeadroomCritical"
HOST_LOW = "TemplHostThreadHeadroomLow"
HOST_CRITICAL = "TemplHostThreadHeadroomCritical"
REFUSED_STARTS_ALERT = "TemplStartsRefused"
"""Fires within one evaluation of the first refused thread or process start (``for: 0``)."""
REFUSED_FORKS = "TemplPidsCgroupRefusedForks"
FALLBACK_ALERT = "TemplExecutorFellBackToSequential"
"""Fires within one evaluation of the first fallback to the sequential rung (``for: 0``)."""
DASK_FALLBACK_ALERT = "TemplDaskClusterGivenUp"
"""Fires within one evaluation of a Dask run going on locally (``for: 0``)."""
REDUCTIONS = "TemplWorkerReductions"
SELECT_BEST_ERRORS = "TemplSelectBestErrors"
TELEMETRY_DEGRADED = "TemplTelemetryDegraded"
SCORING_FAILURES = "TemplScoringFailureRatioHigh"
CAMPAIGN_FAILURES = "TemplCampaignFailureRatioHigh"
STALLED = "TemplJobStalled"
PUSHED_JOB_DIED = "TemplPushedJobDied"
PUSH_FAILED = "TemplPushFailed"
NODE_THREADS = "TemplNodeThreadsNearLimit"
NODE_PIDS = "TemplNodePidsNearLimit"
CONTAINER_THREADS = "TemplContainerThreadsNearLimit"

#: The limits every job on a host shares; the others belong to one job (its cgroup, its process, its user).
HOST_LIMITS: tuple[str, ...] = (THREADS_MAX, PID_MAX)
#: Who an alert is about: the instance, and the job when the series carry its id (pushed groups, file_sd).
WHO = "{{ $labels.instance }}{{ if $labels.job_id }} (job {{ $labels.job_id }}){{ end }}"
#: The labels a TEMPL job's alerts keep apart: pushed groups of different jobs share job and instance.
BY_JOB = "job, instance, job_id"
PUSHGATEWAY = value("pushgateway", DEGRADED_COMPONENTS)
PUSH_FAILED_REASON = value("push_failed", DEGRADED_REASONS)


@dataclass(frozen=True, slots=True)
class Rule:
    """One alerting rule. ``why`` is the comment above it; ``fires_when`` its line in the README's table."""

    alert: str
    why: str
    expr: str
    for_minutes: int  # 0: fires on the first evaluation that matches
    severity: Severity
    fires_when: str
    summary: str
    description: str
    runbook: str
    panels: tuple[Panel, ...]  # named in the runbook
    selects: str = JOB  # the scrape job of the series it reads
    dashboard: str = f"/d/{UID}?var-job={{{{ $labels.job }}}}&var-instance={{{{ $labels.instance }}}}"


def duration(minutes: int) -> str:
    """Prometheus duration: ``5`` -> ``5m``."""
    return window(minutes)


def in_words(minutes: int) -> str:
    """``1`` -> ``1 minute``, ``5`` -> ``5 minutes``."""
    return f"{minutes} minute" if minutes == 1 else f"{minutes} minutes"


def _selector(short: str, *matchers: str) -> str:
    job = f'job="{JOB}"'
    return f"{metric(short)}{{{', '.join((job, *matchers))}}}"


def _glossary(entries: Sequence[tuple[tuple[str, ...], str]], allowed: Sequence[str]) -> list[str]:
    """``"a / b: text"`` per entry, once every name is checked against ``allowed``."""
    return [f"{' / '.join(value(name, allowed) for name in names)}: {text}" for names, text in entries]


def _open(*panels: Panel) -> str:
    return "Open " + " and ".join(str(panel) for panel in panels) + "."


def _event_schedule(minutes: int) -> str:
    return (f"Fires at the first evaluation after the count rises (the series of a run that started in the "
            f"window count from 0, so a counter born above 0, as a 10 s job's first scrape or a push shows it, "
            f"counts) and clears at the first one {in_words(minutes)} after its last rise (for a series born above "
            f"0 and flat since: {in_words(minutes)} after its run started), whether the job still runs, ended or "
            "went stale. A run's start time (templ_run_start_time_seconds), not the series' history, says what "
            "is new: old counters seen anew, after a Prometheus restart, a scrape gap or the first scrape of a "
            "group pushed long ago, do not fire. A pushed group holds its counters for hours: flat, it is silent "
            "again after the window.")


def _pool_helpers(t: Thresholds) -> str:
    by_method = ", ".join(f"{method} {tasks}" for method, tasks in helper_tasks_by_start_method().items())
    return (f"A process pool of N workers needs {t.pool_tasks('N')} under {t.start_method} (helper tasks by start "
            f"method, from the worker cost model: {by_method}).")


def _headroom_runbook(t: Thresholds, panels: Sequence[Panel]) -> str:
    covered = [name for names, _text in LIMIT_CHECKS for name in names]
    if sorted(covered) != sorted(LIMIT_NAMES):
        raise ValueError(f"LIMIT_CHECKS covers {covered}, the catalog's limits are {LIMIT_NAMES}")
    return " ".join([
        _open(*panels), "Find the binding limit with `templ doctor`.", IN_THE_JOB, PROCESS_LIMITS,
        f"{value(PIDS_CGROUP, LIMIT_NAMES)}: {PIDS_WALK}",
        *_glossary(LIMIT_CHECKS[1:], LIMIT_NAMES), _pool_helpers(t),
        "Fix: raise the binding limit, or run fewer workers (--workers) or fewer jobs per host or cgroup.",
    ])


def _headroom_expr(limits: str, tasks: int, share: float) -> str:
    """Headroom under ``limits`` (a regex matcher) below ``tasks`` or ``share`` of the limit in the window."""
    w = duration(EVENT_WINDOW_MINUTES)
    headroom, limit = _selector("thread_headroom", limits), _selector("thread_limit", limits)
    low = (f"min_over_time({headroom}[{w}]) < {tasks}\nor\n"
           f"min_over_time({headroom}[{w}]) < {share:.2f} * min_over_time({limit}[{w}])")
    return unless_stale_push(low, PUSH_FRESH_MINUTES)


def _per_host(expr: str) -> str:
    """``expr`` (per job) joined with the run's host and reduced to its lowest value per host.

    An instance without ``templ_run_info`` (a library user's process, which starts no
    telemetry session) has no host to join: it keeps its instance as its ``host``, so
    host-limit exhaustion still alerts for it, once per instance.
    """
    w = duration(EVENT_WINDOW_MINUTES)
    run_info = f"max_over_time({_selector('run_info')}[{w}])"
    return (f"min by (job, host, limit) (\n  (\n{indent(expr, 4)}\n  )\n  * on (job, instance) group_left (host)\n"
            f"  max by (job, instance, host) ({run_info})\n  or\n"
            f"  label_replace(\n    (\n{indent(expr, 6)}\n    )\n    unless on (job, instance) {run_info},\n"
            '    "host", "$1", "instance", "(.*)"\n  )\n)\n')


_GAUGE_SCHEDULE = (f"Read over the last {in_words(EVENT_WINDOW_MINUTES)} (min_over_time), so a 10 s job's one "
                   "scrape fires at the next evaluation; clears at the first evaluation "
                   f"{in_words(EVENT_WINDOW_MINUTES)} after the last low sample. Pushed groups whose last push "
                   f"is older than {in_words(PUSH_FRESH_MINUTES)} are left out (a Pushgateway holds a group's "
                   "last values until it is deleted; TEMPL pushes no live gauge, but an older one, or another "
                   "pusher, may).")


def _headroom_rules(t: Thresholds) -> list[Rule]:
    smallest = t.smallest_pool
    host = "|".join(value(name, LIMIT_NAMES) for name in HOST_LIMITS)
    job_local, host_wide = f'limit!~"{host}"', f'limit=~"{host}"'
    low_why = (f"Below {t.warning_tasks} tasks, pools of more than {t.largest_pool_below_warning} process "
               f"workers get cut (N workers need {t.pool_tasks('N')}); below {percent(t.warning_share)} of the "
               f"limit (pressure {t.warning_pressure:.2f}, where the thread manager reports warning) the limit "
               "is close whatever its size. Info: the executor shrinks its pools to fit, as designed.")
    critical_why = (f"Below {t.critical_tasks} tasks a {smallest}-worker process pool ({t.pool_tasks(smallest)}), "
                    "the smallest the executor starts, no longer fits: the executor runs sequentially, complete "
                    f"but slower, so a ticket, not a page. Below {percent(t.critical_share)} of the limit is "
                    f"pressure {t.critical_pressure:.2f}, where the thread manager reports critical.")
    low_text = (f"(below {t.warning_tasks} tasks or {percent(t.warning_share)} of the limit, lowest in the last "
                f"{in_words(EVENT_WINDOW_MINUTES)}). The executor shrinks its pools to fit, so throughput drops "
                "before anything fails.")
    critical_text = (f"(below {t.critical_tasks} tasks or {percent(t.critical_share)} of the limit, lowest in the "
                     f"last {in_words(EVENT_WINDOW_MINUTES)}). Not even a {smallest}-worker process pool fits "
                     f"({t.pool_tasks(smallest)}): scoring runs sequentially, complete but slower, and a library "
                     "that starts a thread may fail with \"can't start new thread\".")
    job_panels, host_panels = (BINDING_PANEL, HEADROOM_PANEL), (HOST_PANEL,)
    host_link = f"/d/{UID}?var-job={{{{ $labels.job }}}}"
    host_note = (" One alert per host: every job on it sees the same limit (joined with templ_run_info for the "
                 "host; max by (job, instance, host) first, so two runs on one port in the window are one match). "
                 "An instance without templ_run_info (a library user) alerts on its own, its instance as host: the "
                 "job-local rules leave the host-wide limits to these.")
    low_when = f"< {t.warning_tasks} tasks or < {percent(t.warning_share)} of the limit"
    critical_when = (f"< {t.critical_tasks} tasks (a {smallest}-worker pool no longer fits) or "
                     f"< {percent(t.critical_share)}")
    return [
        Rule(LOW, why=low_why + " " + _GAUGE_SCHEDULE,
             expr=_headroom_expr(job_local, t.warning_tasks, t.warning_share) + "\n",
             for_minutes=0, severity=Severity.INFO,
             fires_when=f"headroom under a job's own limit (pids cgroup, user nproc, stack) {low_when}, in the "
                        f"last {EVENT_WINDOW_MINUTES} min",
             summary=f"{WHO}: only {{{{ $value | humanize }}}} tasks of headroom left under {{{{ $labels.limit }}}}",
             description=f"The {{{{ $labels.limit }}}} limit let {WHO} start only {{{{ $value | humanize }}}} more "
                         f"threads or processes {low_text}",
             runbook=_headroom_runbook(t, job_panels), panels=job_panels),
        Rule(CRITICAL, why=critical_why + " " + _GAUGE_SCHEDULE,
             expr=_headroom_expr(job_local, t.critical_tasks, t.critical_share) + "\n",
             for_minutes=0, severity=Severity.WARNING,
             fires_when=f"headroom under a job's own limit {critical_when}, in the last {EVENT_WINDOW_MINUTES} min",
             summary=f"{WHO}: {{{{ $value | humanize }}}} tasks of headroom under {{{{ $labels.limit }}}}, "
                     "pools no longer fit",
             description=f"{WHO} could start only {{{{ $value | humanize }}}} more threads or processes under "
                         f"{{{{ $labels.limit }}}} {critical_text}",
             runbook=_headroom_runbook(t, job_panels), panels=job_panels),
        Rule(HOST_LOW, why=low_why + host_note + " " + _GAUGE_SCHEDULE,
             expr=_per_host(_headroom_expr(host_wide, t.warning_tasks, t.warning_share)),
             for_minutes=0, severity=Severity.INFO,
             fires_when=f"headroom under a host-wide limit (threads-max, pid_max) {low_when}, once per host",
             summary="{{ $labels.host }}: only {{ $value | humanize }} tasks of headroom left under "
                     "{{ $labels.limit }}",
             description="The host-wide {{ $labels.limit }} limit let the TEMPL jobs on {{ $labels.host }} start "
                         f"only {{{{ $value | humanize }}}} more threads or processes {low_text}",
             runbook=_headroom_runbook(t, host_panels), panels=host_panels, dashboard=host_link),
        Rule(HOST_CRITICAL, why=critical_why + host_note + " " + _GAUGE_SCHEDULE,
             expr=_per_host(_headroom_expr(host_wide, t.critical_tasks, t.critical_share)),
             for_minutes=0, severity=Severity.WARNING,
             fires_when=f"headroom under a host-wide limit {critical_when}, once per host",
             summary="{{ $labels.host }}: {{ $value | humanize }} tasks of headroom under {{ $labels.limit }}, "
                     "pools no longer fit",
             description="The TEMPL jobs on {{ $labels.host }} could start only {{ $value | humanize }} more "
                         f"threads or processes under the host-wide {{{{ $labels.limit }}}} {critical_text}",
             runbook=_headroom_runbook(t, host_panels), panels=host_panels, dashboard=host_link),
    ]


def _refused_starts_rule(t: Thresholds) -> Rule:
    w = EVENT_WINDOW_MINUTES
    refusals = _selector("start_refusals")
    panels = (REFUSED_PANEL, BINDING_PANEL)
    return Rule(
        REFUSED_STARTS_ALERT,
        why="One count per thread or process start the kernel refused, on any rung, conformer threads included; "
            "every kind and cause starts at 0. " + _event_schedule(w),
        expr=rose(refusals, f"{BY_JOB}, kind, cause", w),
        for_minutes=0,
        severity=Severity.WARNING,
        fires_when=f"the kernel refused a thread or process start in the last {w} min (any rung, any cause)",
        summary=f"{WHO}: the kernel refused to start a {{{{ $labels.kind }}}} ({{{{ $labels.cause }}}})",
        description=f"In the last {in_words(w)} the kernel refused at least one {{{{ $labels.kind }}}} start of "
                    f"{WHO}, by {{{{ $labels.cause }}}}. The executor fell back down its ladder, so results are "
                    "complete but slower; other code that starts a thread may fail with \"can't start new "
                    f"thread\". The {event('executor.fallback')} log lines name the rung and carry a trace_id.",
        runbook=" ".join([_open(*panels), "The cause names the limit; check it with `templ doctor`.", IN_THE_JOB,
                          PROCESS_LIMITS, f"pids_cgroup: {PIDS_WALK}",
                          "rlimit_nproc: Max processes of the job's user; threads_max / pid_max: the host's "
                          "sysctls; stack_memory: Max address space and free memory; seccomp: the container's "
                          "seccomp profile refuses clone3 or clone.", _pool_helpers(t),
                          "Raise that limit, or run fewer workers (--workers) or fewer jobs in the cgroup."]),
        panels=panels,
    )


def _refused_forks_rule() -> Rule:
    w = EVENT_WINDOW_MINUTES
    panels = (FORKS_PANEL,)
    return Rule(
        REFUSED_FORKS,
        why="The kernel's count (pids.events max) only rises while the cgroup lives, so any rise is a refused "
            "fork; a job started in a cgroup that refused forks before shows them as a series born above 0, "
            "which it cannot date, and fires once. " + _event_schedule(w),
        expr=rose(_selector("pids_refused_forks"), BY_JOB, w),
        for_minutes=0,
        severity=Severity.WARNING,
        fires_when=f"the pids cgroup refused a fork in the last {w} min (or its count is first seen above 0)",
        summary=f"{WHO}: the pids cgroup refused to start threads or processes",
        description=f"In the last {in_words(w)} the pids controller of the cgroup of {WHO} refused at least one "
                    "fork (pids.events max rose, or was first seen above 0): a thread or process of the job, or "
                    "of another process in the same cgroup, failed to start, however much headroom the scrapes "
                    "show, since a refused pool start frees its tasks at once.",
        runbook=" ".join([_open(*panels), "`templ doctor` shows the refused forks and pids.peak next to pids.max.",
                          IN_THE_JOB, PIDS_WALK, "Raise that limit, or run fewer workers (--workers) or fewer "
                          "jobs in the cgroup. Refusals by RLIMIT_NPROC or kernel.threads-max are not counted "
                          f"here: {REFUSED_STARTS_ALERT} has them by cause."]),
        panels=panels,
    )


def _fallback_rule() -> Rule:
    w = EVENT_WINDOW_MINUTES
    fallbacks = _selector("fallbacks", f'to_kind="{SEQUENTIAL}"')
    reasons = _glossary([(names, text.format(low=CRITICAL)) for names, text in SEQUENTIAL_FALLBACKS],
                        FALLBACK_REASONS)
    panels = (FALLBACKS_PANEL,)
    return Rule(
        FALLBACK_ALERT,
        why="Every path to the sequential rung starts at 0, and a run that started in the window counts from 0. "
            + _event_schedule(w),
        expr=rose(fallbacks, f"{BY_JOB}, from_kind, reason, cause", w),
        for_minutes=0,
        severity=Severity.WARNING,
        fires_when=f"any fallback to {SEQUENTIAL} in the last {w} min (including a process's first)",
        summary=f"{WHO}: executor fell back from {{{{ $labels.from_kind }}}} to {SEQUENTIAL} "
                "({{ $labels.reason }}, cause {{ $labels.cause }})",
        description=f"In the last {in_words(w)} select_best on {WHO} gave up its worker pool and scored in the "
                    "calling thread (reason {{ $labels.reason }}, cause {{ $labels.cause }}). Results are "
                    f"complete but slower. The {event('executor.fallback')} log lines carry the detail and a "
                    "trace_id.",
        runbook=" ".join([_open(*panels), "reason", *reasons, IN_THE_JOB]),
        panels=panels,
    )


def _dask_fallback_rule() -> Rule:
    w = EVENT_WINDOW_MINUTES
    fallbacks = _selector("fallbacks", f'from_kind="{value("dask", EXECUTOR_KINDS)}"')
    reasons = _glossary(DASK_FALLBACKS, FALLBACK_REASONS)
    panels = (FALLBACKS_PANEL, DASK_WORKERS_PANEL)
    return Rule(
        DASK_FALLBACK_ALERT,
        why="A campaign meant for a cluster that runs on the driver's node takes as many times longer as the "
            "cluster had workers; every Dask fallback path starts at 0. " + _event_schedule(w),
        expr=rose(fallbacks, f"{BY_JOB}, to_kind, reason", w),
        for_minutes=0,
        severity=Severity.WARNING,
        fires_when=f"a run with --executor dask went on locally in the last {w} min",
        summary=f"{WHO}: Dask given up, running on {{{{ $labels.to_kind }}}} ({{{{ $labels.reason }}}})",
        description=f"In the last {in_words(w)} {WHO} stopped using its Dask cluster (reason {{{{ $labels.reason }}}}) "
                    "and goes on with local workers: results stay complete and identical, the run is slower. "
                    f"The {event('executor.fallback')} log lines carry the scheduler address and the detail.",
        runbook=" ".join([_open(*panels), "reason", *reasons]),
        panels=panels,
    )


def _reductions_rule() -> Rule:
    w = EVENT_WINDOW_MINUTES
    panels = (REDUCTIONS_PANEL, BINDING_PANEL)
    return Rule(
        REDUCTIONS,
        why="Was: a rate held for 15 minutes, which a batch job never shows (pending for 5 minutes, never "
            "fired). Now any cut in the window, as context: the executor sized its pool to fit, as designed, "
            "so info. " + _event_schedule(w),
        expr=rose(_selector("worker_reductions"), f"{BY_JOB}, task_type, reason", w),
        for_minutes=0,
        severity=Severity.INFO,
        fires_when=f"a grant was cut below the workers asked for in the last {w} min",
        summary=f"{WHO}: {{{{ $labels.task_type }}}} pools cut by {{{{ $labels.reason }}}}",
        description=f"In the last {in_words(w)} {WHO} had {{{{ $labels.task_type }}}} executors granted fewer "
                    "workers than requested (reason {{ $labels.reason }}). The job runs, complete, below the "
                    "parallelism it asked for.",
        runbook=" ".join([_open(*panels), f"The reason names the binding limit ({listing(MANAGER_REASONS, ' / ')}: "
                          "the thread manager could not answer; see the job's "
                          f"{event('executor.workers_reduced')} log lines). Check it with `templ doctor`.",
                          IN_THE_JOB, PROCESS_LIMITS, "Then raise the limit or ask for fewer workers (--workers) "
                          "so the request matches what the host allows."]),
        panels=panels,
    )


def _select_best_errors_rule() -> Rule:
    w = EVENT_WINDOW_MINUTES
    errors = _selector("select_best_calls", f'outcome="{value("error", OUTCOMES)}"')
    panels = (CALLS_PANEL,)
    return Rule(
        SELECT_BEST_ERRORS,
        why="A select_best call that raised returned no poses: that work is lost, so it pages. "
            + _event_schedule(w),
        expr=rose(errors, BY_JOB, w),
        for_minutes=0,
        severity=Severity.CRITICAL,
        fires_when=f"a select_best call raised in the last {w} min",
        summary=f"{WHO}: select_best calls failed",
        description=f"In the last {in_words(w)} at least one select_best call on {WHO} raised instead of "
                    "returning poses: its query has no result. Fallbacks never do this; an error is bad input, "
                    "a bug or a resource the executor cannot fall back from (memory, disk).",
        runbook=" ".join([_open(*panels), f"The job's {event('select_best.done')} and error log lines (level error, "
                          "with the traceback and trace_id) say which query and why; `templ doctor` inside the "
                          "job rules out limits.", IN_THE_JOB, "Rerun the failed queries once the cause is fixed."]),
        panels=panels,
    )


def _telemetry_degraded_rule() -> Rule:
    w = EVENT_WINDOW_MINUTES
    others = _selector("telemetry_degraded", f'component!="{PUSHGATEWAY}"')
    pusher = _selector("telemetry_degraded", f'component="{PUSHGATEWAY}"', f'reason!="{PUSH_FAILED_REASON}"')
    by = f"{BY_JOB}, component, reason"
    panels = (TELEMETRY_PANEL,)
    return Rule(
        TELEMETRY_DEGRADED,
        why="A telemetry component (span export, the /metrics server, the log handler, the pusher) started "
            "degraded: the "
            "work goes on, what the operator sees of it is partial; the pusher too (a pusher thread that could "
            f"not start). Failed pushes have their own alert ({PUSH_FAILED}). " + _event_schedule(w),
        expr=f"sum by ({by}) (\n{indent(events(others, w))}\n  or\n{indent(events(pusher, w))}\n) > 0\n",
        for_minutes=0,
        severity=Severity.WARNING,
        fires_when=f"a telemetry component ran degraded in the last {w} min",
        summary=f"{WHO}: telemetry {{{{ $labels.component }}}} degraded ({{{{ $labels.reason }}}})",
        description=f"In the last {in_words(w)} the {{{{ $labels.component }}}} of {WHO}'s telemetry could not "
                    "start normally ({{ $labels.reason }}) and runs degraded (synchronous span export, no "
                    "/metrics, fewer log lines, no pushes while it runs): the dashboard may show less than the job "
                    "did.",
        runbook=" ".join([_open(*panels), "A reason of thread_start_failed, no_headroom or resource_unavailable "
                          "means the job was out of threads when telemetry started: check `templ doctor`.",
                          IN_THE_JOB, "The telemetry.* log lines name the component; permission_denied on the "
                          "metrics server is a port or address the job may not bind (--metrics-addr)."]),
        panels=panels,
    )


def _ratio(numerator: str, denominator: str, minutes: int, ratio: float) -> str:
    return (f"{total_events(numerator, BY_JOB, minutes)}\n/\n"
            f"{total_events(denominator, BY_JOB, minutes)}\n> {ratio:.2f}\n")


def _failures_rule() -> Rule:
    w = FAILURE_MINUTES
    scored, failed = _selector("conformers_scored"), _selector("conformers_failed")
    done = event("select_best.done")
    by_reason = value("failed_by_reason", LOG_EVENTS_BY_NAME[done].fields)
    panels = (FAILURES_PANEL,)
    # scored + failed per series would need both to match label for label; summed first, they do
    expr = (f"{total_events(failed, BY_JOB, w)}\n/\n(\n{indent(total_events(scored, BY_JOB, w))}\n  +\n"
            f"{indent(total_events(failed, BY_JOB, w))}\n)\n> {FAILURE_RATIO:.2f}\n")
    return Rule(
        SCORING_FAILURES,
        why=f"Failed over all conformers counted in the window, which a 10 s job fills from its first scrape "
            "(the events of a run that started in the window count from 0): was a rate held for 10 minutes, which no "
            "batch job shows. No conformer in the window is 0/0, NaN, and never fires. Clears at the first "
            f"evaluation {in_words(w)} after the failures.",
        expr=expr,
        for_minutes=0,
        severity=Severity.WARNING,
        fires_when=f"> {percent(FAILURE_RATIO)} of the conformers of the last {w} min failed to score",
        summary=f"{WHO}: {{{{ $value | humanizePercentage }}}} of conformers fail to score",
        description=f"Of the conformers {WHO} scored in the last {in_words(w)}, {{{{ $value | humanizePercentage }}}} "
                    f"could not be scored (threshold {percent(FAILURE_RATIO)}). Failures are per conformer, by "
                    f"reason ({listing(FAILURE_REASONS)}).",
        runbook=" ".join([_open(*panels), "Failures are input problems, not thread limits: a fallback never "
                          f"loses a conformer. The {done} log lines ({by_reason}) name the inputs. If they "
                          "coincide with fallbacks, still check `templ doctor` to rule out a job starved of "
                          "workers.", IN_THE_JOB]),
        panels=panels,
    )


def _campaign_failures_rule() -> Rule:
    w = CAMPAIGN_FAILURE_MINUTES
    queries = _selector("campaign_queries")
    failed = _selector("campaign_queries", f'status="{FAILED}"')
    covered = [name for names, _text in QUERY_FAILURE_CHECKS for name in names]
    if sorted(covered) != sorted(reason for reason in QUERY_REASONS if reason != NO_REASON):
        raise ValueError(f"QUERY_FAILURE_CHECKS covers {covered}, the catalog's reasons are {QUERY_REASONS}")
    finished = event(EVENT_QUERY_FINISHED)
    fields = LOG_EVENTS_BY_NAME[finished].fields
    panels = (QUERIES_PANEL,)
    return Rule(
        CAMPAIGN_FAILURES,
        why="Failed over all queries finished in the window, as for conformers: was a rate held for 10 minutes. "
            "A campaign that finished no query in the window is 0/0, NaN, and never fires. Clears at the first "
            f"evaluation {in_words(w)} after the failures.",
        expr=_ratio(failed, queries, w, CAMPAIGN_FAILURE_RATIO),
        for_minutes=0,
        severity=Severity.WARNING,
        fires_when=f"> {percent(CAMPAIGN_FAILURE_RATIO)} of the campaign queries of the last {w} min failed",
        summary=f"{WHO}: {{{{ $value | humanizePercentage }}}} of the campaign's queries fail",
        description=f"Of the queries the screening campaign on {WHO} finished in the last {in_words(w)}, "
                    f"{{{{ $value | humanizePercentage }}}} have no pose (threshold "
                    f"{percent(CAMPAIGN_FAILURE_RATIO)}). "
                    "Each is a failed row in scores.csv; the campaign goes on.",
        runbook=" ".join([_open(*panels), f"The {finished} log lines at level warning carry "
                          f"{value('query_id', fields)}, {value('reason', fields)} and {value('detail', fields)} "
                          f"(Loki: {{job=\"{JOB}\"}} | json | event=\"{finished}\" | status=\"{FAILED}\").",
                          *_glossary(QUERY_FAILURE_CHECKS, QUERY_REASONS),
                          "If worker_lost and timeout coincide with fallbacks or worker reductions, check `templ "
                          "doctor` too.", IN_THE_JOB]),
        panels=panels,
    )


def _unfinished() -> str:
    """Runs with no end timestamp (neither last success nor last failure): running, or dead without saying so."""
    success, failure = _selector("last_success"), _selector("last_failure")
    return f"{success} == 0\nand on ({BY_JOB}) {failure} == 0"


def _push_bound() -> str:
    """Seconds after its last push at which a group that pushes while it runs has missed its pushes.

    MISSED_PUSHES intervals plus PUSH_SLACK_SECONDS: the age read at an evaluation includes the
    Pushgateway's scrape interval and the evaluation's lag.
    """
    return f"{MISSED_PUSHES} * {_selector('push_interval')} + {PUSH_SLACK_SECONDS}"


def _alive_and_unfinished() -> str:
    """Runs that are up (scraped and up, or pushing on schedule) and have no end timestamp."""
    up = f'{UP}{{job="{JOB}"}}'
    return (f"(\n{indent(_unfinished())}\n)\n"
            f"and on ({BY_JOB})\n(\n  {up} == 1\n  or\n  (time() - {push_time()})\n"
            f"    < on ({BY_JOB}) ({_push_bound()})\n)")


def _stall_rule() -> Rule:
    w = CAMPAIGN_STALL_MINUTES
    progress = [_selector(short) for short in ("conformers_scored", "conformers_failed", "conformer_generations",
                                               "campaign_queries")]
    increases = "\nor\n".join(events(counter, w) for counter in progress)
    embedding = _selector("conformer_generations_in_progress")
    run_info = _selector("run_info")
    started = f'process_start_time_seconds{{job="{JOB}"}}'
    limit = in_words(round(DEFAULT_QUERY_TIMEOUT / 60))
    panels = (SCORED_PANEL, QUERIES_PANEL)
    expr = (f"sum by ({BY_JOB}) (\n{indent(increases)}\n) == 0\n"
            f"and on ({BY_JOB})\n(\n  {started} < time() - {w * 60}\n  or\n"
            f"  ({run_info} and {run_info} offset {duration(w)})\n)\n"
            f"and on ({BY_JOB})\n{_alive_and_unfinished()}\n"
            f"unless on ({BY_JOB})\n{embedding} > 0\n")
    return Rule(
        STALLED,
        why=f"Progress is a conformer scored or failed, a conformer generation finished (select-best) or a "
            f"campaign query finished (a run that started in the window counts from 0); none in "
            f"{in_words(w)}, longer than the runner's default query time limit ({limit}, after which every query "
            "ends, as a timeout at worst) plus a window. ETKDG reports no progress while it embeds, and 3000 "
            "conformers of a flexible ligand take many minutes: a job with a conformer generation in progress is "
            "busy, never stalled. The run must be that old (a scraped process started that long ago; a pushed "
            f"group's templ_run_info, run_id and all, was there {in_words(w)} ago: pushes have no process_*), up "
            f"(its target up, or its group pushed within {MISSED_PUSHES} push intervals plus {PUSH_SLACK_SECONDS} s) "
            "and unfinished (no success or failure timestamp): a finished job holding /metrics never fires. "
            "Clears at the first evaluation after progress, the end of the job "
            "(its target or group gone, or an end timestamp) or its pushes stopping "
            f"({PUSHED_JOB_DIED} takes over).",
        expr=expr,
        for_minutes=0,
        severity=Severity.CRITICAL,
        fires_when=f"a running job made no progress (conformers, campaign queries) for {w} min, and is not "
                   "embedding",
        summary=f"{WHO}: no progress for {in_words(w)}",
        description=f"{WHO} is up and has not ended, is not embedding conformers, yet scored no conformer, "
                    f"finished no conformer generation and no campaign query in {in_words(w)}. With the default "
                    f"--query-timeout a campaign query ends within {limit} (a "
                    "hung one as a timeout), so the job is not getting results: it holds its allocation and "
                    "computes nothing.",
        runbook=" ".join([_open(*panels), "Look at the job's last log lines (level warning and up): "
                          f"{event(EVENT_WORKER_REPLACED)} over and over means workers die as they start or time "
                          "out; executor.fallback or executor.workers_reduced mean the kernel refused workers, so "
                          "run `templ doctor`.", IN_THE_JOB, "No line at all: the job is blocked, on the output "
                          "directory (a full or hung file system: `df`, the mount), on reading its input, or in "
                          "native code; `py-spy dump --pid PID` shows where. A campaign run with --query-timeout 0 "
                          "(no limit) can stall on one query that never ends. Stop it with SIGTERM: every finished "
                          "query is kept, and `templ screen --resume` goes on from there."]),
        panels=panels,
    )


def _pushed_job_died_rule() -> Rule:
    interval = _selector("push_interval")
    hours = DEAD_GROUP_HOURS
    panels = (PUSHES_PANEL,)
    return Rule(
        PUSHED_JOB_DIED,
        why=f"A run with --push-interval pushes every interval while it runs and once at its end, with its success "
            f"or failure timestamp; a group whose last push is older than {MISSED_PUSHES} intervals plus "
            f"{PUSH_SLACK_SECONDS} s (the Pushgateway's scrape and the evaluation's lag) and has neither belongs "
            "to a job that died without its last push (SIGKILL, the OOM killer, a node that went down, a "
            "scheduler that ended it). Fires at the first evaluation after that; clears when the group is "
            f"deleted, or {hours} hours after its last push, whichever comes first. A run pushing only at its end "
            "(--push-interval 0) cannot be told apart from one "
            "that has not ended, and a job that dies before its first push leaves no group.",
        expr=(f"(time() - {push_time()})\n> on ({BY_JOB})\n  ({_push_bound()})\n< {hours * 3600}\n"
              f"and on ({BY_JOB}) {interval} > 0\nand on ({BY_JOB})\n(\n{indent(_unfinished())}\n)\n"),
        for_minutes=0,
        severity=Severity.CRITICAL,
        fires_when=f"a pushed job stopped pushing for {MISSED_PUSHES} push intervals + {PUSH_SLACK_SECONDS} s without "
                   f"an end timestamp (for {hours} h at most)",
        summary=f"{WHO}: the job died without its last push",
        description=f"{WHO} pushed its metrics every templ_push_interval_seconds, then stopped more than "
                    f"{MISSED_PUSHES} intervals ago without recording an end: it was killed or its node died, "
                    "and whatever it had not written is lost. Its last pushed counters are on the dashboard. "
                    f"The alert clears when the group is deleted, or {hours} hours after its last push.",
        runbook=" ".join([_open(*panels), "Ask the scheduler how the job ended (`sacct -j JOBID -o "
                          "State,ExitCode,MaxRSS`, `kubectl describe pod POD`: OOMKilled, Evicted) and the node "
                          "(`dmesg` for the OOM killer). Rerun it (`templ screen --resume` keeps the finished "
                          "queries). Then delete the group. A job id with `/`, `[`, `]` or other characters "
                          "special in a URL (`123[4].server`) fails as it is: URL-encode it, or give it in the "
                          "base64url form the Pushgateway accepts, `curl -X DELETE "
                          "\"http://PUSHGATEWAY:9091/metrics/job/templ/instance/HOST/job_id@base64/$(printf %s "
                          "'JOBID' | base64 -w0 | tr '+/' '-_')\"`."]),
        panels=panels,
    )


def _push_failed_rule() -> Rule:
    w = EVENT_WINDOW_MINUTES
    failure_time = push_time("push_failure_time_seconds")
    degraded = _selector("telemetry_degraded", f'component="{PUSHGATEWAY}"', f'reason="{PUSH_FAILED_REASON}"')
    panels = (PUSHES_PANEL, TELEMETRY_PANEL)
    return Rule(
        PUSH_FAILED,
        why="The Pushgateway refused a push (its push_failure_time_seconds is newer than the last good push, "
            f"within {in_words(w)}: a push that keeps failing keeps it fresh; a job that died after a failed push "
            f"falls to {PUSHED_JOB_DIED}), or the job counted a push it could not deliver (unreachable, timeout), "
            "seen on its scrape or its next good push. " + _event_schedule(w),
        expr=(f"max by ({BY_JOB}) (\n  {failure_time} > on ({BY_JOB}) {push_time()}\n"
              f"  and {failure_time} > time() - {w * 60}\n)\nor\n"
              f"{total_events(degraded, BY_JOB, w)} > 0\n"),
        for_minutes=0,
        severity=Severity.WARNING,
        fires_when=f"a push to the Pushgateway failed in the last {w} min",
        summary=f"{WHO}: pushes to the Pushgateway fail",
        description=f"In the last {in_words(w)} a push of {WHO} to the Pushgateway failed: the Pushgateway "
                    "holds older values, and if the job ends now its final counters and end timestamp are lost.",
        runbook=" ".join([_open(*panels), "The job's telemetry.push_failed log lines say why (refused: the "
                          "Pushgateway's log names the inconsistent metric; unreachable: the URL, the network, "
                          "the Pushgateway's health at /-/healthy)."]),
        panels=panels,
    )


def _node_rule(alert: str, used: str, limit: str, what: str, sysctl: str, selects: str, panel: Panel) -> Rule:
    w = EVENT_WINDOW_MINUTES
    panels = (panel,)
    return Rule(
        alert,
        why=f"{what} from {selects} (job \"{selects}\"), whatever runs there: TEMPL's own gauges see only the "
            f"TEMPL jobs' view. The highest in the last {in_words(w)} over the limit, so a burst seen by one "
            f"scrape fires at the next evaluation; clears at the first evaluation {in_words(w)} after it. "
            "Warning: programs on the node are about to fail to start threads, TEMPL falls back.",
        expr=f"max_over_time({used}[{duration(w)}])\n/\n{limit}\n> {NODE_PRESSURE:.2f}\n",
        for_minutes=0,
        severity=Severity.WARNING,
        fires_when=f"{what[0].lower()}{what[1:]} above {percent(NODE_PRESSURE)} of {sysctl} in the last {w} min",
        summary=f"{{{{ $labels.instance }}}}: {{{{ $value | humanizePercentage }}}} of {sysctl} in use",
        description=f"{what} on {{{{ $labels.instance }}}} reached {{{{ $value | humanizePercentage }}}} of "
                    f"{sysctl} in the last {in_words(w)} (threshold {percent(NODE_PRESSURE)}): every program "
                    "there is close to failing to start threads or processes.",
        runbook=" ".join([_open(*panels), "Find who holds the tasks: `ps -eo nlwp,pid,user,comm --sort=-nlwp | "
                          "head` on the node; then raise the limit or move jobs.", IN_THE_JOB]),
        panels=panels,
        selects=selects,
        dashboard=f"/d/{UID}?var-job={JOB}",
    )


def _node_rules() -> list[Rule]:
    def node(name: str) -> str:
        return f'{name}{{job="{NODE_JOB}"}}'
    exporter = "node_exporter --collector.processes"
    cadvisor_used, cadvisor_max = (f'{name}{{job="{CADVISOR_JOB}"}}' for name in ("container_threads",
                                                                                 "container_threads_max"))
    container = _node_rule(CONTAINER_THREADS, cadvisor_used, f"({cadvisor_max} > 0)",
                           "Threads of a container", "its threads limit", CADVISOR_JOB, CONTAINERS_PANEL)
    return [
        _node_rule(NODE_THREADS, node("node_processes_threads"), node("node_processes_max_threads"),
                   f"Threads on the node ({exporter})", "kernel.threads-max", NODE_JOB, NODE_THREADS_PANEL),
        _node_rule(NODE_PIDS, node("node_processes_pids"), node("node_processes_max_processes"),
                   f"Process ids in use on the node ({exporter})", "kernel.pid_max", NODE_JOB, NODE_PIDS_PANEL),
        replace(container,
                why=container.why + " container_threads_max is 0 for a container without a limit: left out.",
                summary="{{ $labels.instance }}: container {{ $labels.id }} uses {{ $value | humanizePercentage }} "
                        "of its threads limit",
                description="Container {{ $labels.id }} on {{ $labels.instance }} reached {{ $value | "
                            "humanizePercentage }} of its threads limit (cAdvisor container_threads_max: the "
                            "cgroup's pids.max) in the last "
                            f"{in_words(EVENT_WINDOW_MINUTES)} (threshold {percent(NODE_PRESSURE)}): its threads are "
                            "about to fail to start."),
    ]


def rules(t: Thresholds | None = None) -> list[Rule]:
    """Every alert, in the order of the file."""
    t = t or thresholds()
    return [*_headroom_rules(t), _refused_starts_rule(t), _refused_forks_rule(), _fallback_rule(),
            _dask_fallback_rule(), _reductions_rule(), _select_best_errors_rule(), _telemetry_degraded_rule(),
            _failures_rule(),
            _campaign_failures_rule(), _stall_rule(), _pushed_job_died_rule(), _push_failed_rule(), *_node_rules()]


def as_data(alert_rules: Sequence[Rule]) -> dict:
    """The rule file as Prometheus reads it (what ``yaml.safe_load`` of :func:`render` returns)."""
    def one(rule: Rule) -> dict:
        data: dict = {"alert": rule.alert, "expr": rule.expr}
        if rule.for_minutes:
            data["for"] = duration(rule.for_minutes)
        data["labels"] = {"severity": rule.severity.value}
        data["annotations"] = {"summary": rule.summary, "description": rule.description,
                               "runbook": rule.runbook, "dashboard": rule.dashboard}
        return data
    return {"groups": [{"name": GROUP, "rules": [one(rule) for rule in alert_rules]}]}


def _wrap(text: str, width: int) -> list[str]:
    """Lines of at most ``width`` (unless a word is longer), never breaking inside a ``{{ ... }}`` template."""
    glued = _TEMPLATE.sub(lambda match: match.group().replace(" ", _GLUE), text)
    lines = textwrap.wrap(glued, width, break_long_words=False, break_on_hyphens=False)
    return [line.replace(_GLUE, " ") for line in lines]


def _comment(text: str, indent_: int) -> list[str]:
    return [" " * indent_ + "# " + line for line in _wrap(text, WIDTH - indent_ - 2)]


def _folded(key: str, text: str, indent_: int) -> list[str]:
    """``key: >-`` and ``text`` wrapped: YAML folds the line breaks back into single spaces."""
    if "\n" in text or "  " in text or text != text.strip():
        raise ValueError(f"{key}: a folded scalar keeps neither line breaks nor runs of spaces: {text!r}")
    return [f"{' ' * indent_}{key}: >-", *(" " * (indent_ + 2) + line for line in _wrap(text, WIDTH - indent_ - 2))]


def _header(t: Thresholds) -> list[str]:
    headroom, limit = metric("thread_headroom"), metric("thread_limit")
    severities = " ".join(f"{s.value}: {text}." for s, text in (
        (Severity.CRITICAL, "pages, work lost or a job stuck holding its allocation"),
        (Severity.WARNING, "a ticket, the work completes degraded or the monitoring is blind"),
        (Severity.INFO, "no notification, the executor adapted as designed")))
    paragraphs = [
        f'Alert rules for the TEMPL executor (job "{JOB}", see prometheus.yml; the node-level rules select job '
        f'"{NODE_JOB}" and "{CADVISOR_JOB}").',
        "Generated by `make dashboards` (python -m templ_pipeline.dashboards.generate) from dashboards/alerts.py: "
        "change that and regenerate; tests/test_alert_rules.py fails when this file or alerts_test.yml differs "
        "from the generator's output.",
        "Written for batch jobs: a 10 s job is scraped once or twice, its counters are born at 1 and its series go "
        "stale when it ends. Every rule reads a window (range functions; dashboards/alert_queries.py), so it "
        "fires at the next evaluation and clears on the schedule its comment states. " + severities,
        f"Headroom thresholds are for the {t.start_method} start method: {t.cost_text()}. The stall window "
        f"follows the campaign runner's default query time limit ({DEFAULT_QUERY_TIMEOUT:g} s). Metric names and "
        "label values come from telemetry/catalog.py; `promtool test rules alerts_test.yml` covers every alert.",
        f"{limit} / {headroom} are NaN when a limit is unknown and +Inf when it is not enforced: every "
        'comparison with NaN is false and +Inf is never "low", so those series can neither fire nor hide a '
        "real one.",
    ]
    lines: list[str] = []
    for number, paragraph in enumerate(paragraphs):
        lines += (["#"] if number else []) + _comment(paragraph, 0)
    return lines


def render(t: Thresholds | None = None) -> str:
    """The committed ``alerts.yml``."""
    t = t or thresholds()
    lines = _header(t) + ["groups:", f"  - name: {GROUP}", "    rules:"]
    for number, rule in enumerate(rules(t)):
        lines += [""] if number else []
        lines += [f"      - alert: {rule.alert}", *_comment(rule.why, 8), "        expr: |"]
        lines += ["          " + line for line in rule.expr.splitlines()]
        lines += [f"        for: {duration(rule.for_minutes)}"] if rule.for_minutes else []
        lines += ["        labels:", f"          severity: {rule.severity.value}", "        annotations:",
                  f"          summary: {json.dumps(rule.summary, ensure_ascii=False)}",
                  *_folded("description", rule.description, 10), *_folded("runbook", rule.runbook, 10),
                  f"          dashboard: {json.dumps(rule.dashboard, ensure_ascii=False)}"]
    return "\n".join(lines) + "\n"


def readme_table(t: Thresholds | None = None) -> str:
    """The alerts table of dashboards/README.md."""
    rows = [f"| `{rule.alert}` | {rule.fires_when} | {rule.severity.value} |" for rule in rules(t)]
    return "\n".join(["| Alert | Fires when | Severity |", "|---|---|---|", *rows]) + "\n"
