"""The Prometheus alert rules (``dashboards/prometheus/alerts.yml``): plain data and one renderer.

:func:`rules` builds each rule from the shared thresholds (:mod:`dashboards.thresholds`,
which asks the worker cost model and the grant what fits) and from the catalog's names
(:mod:`dashboards.names`); :func:`render` writes them as the committed YAML, with the
reasoning behind each threshold as a comment. ``python -m templ_pipeline.dashboards.generate`` writes
the file; the tests compare the committed one with :func:`render` and run promtool on it.
"""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

from templ_pipeline.dashboards.executor_dashboard import UID
from templ_pipeline.dashboards.names import FAILED, JOB, MANAGER_REASONS, SEQUENTIAL, event, listing, metric, value
from templ_pipeline.dashboards.thresholds import (
    CAMPAIGN_FAILURE_MINUTES,
    CAMPAIGN_FAILURE_RATIO,
    CAMPAIGN_STALL_MINUTES,
    CAMPAIGN_STALL_WINDOW,
    FAILURE_MINUTES,
    FAILURE_RATIO,
    Thresholds,
    percent,
    thresholds,
)
from templ_pipeline.telemetry.catalog import (
    EVENT_QUERY_FINISHED,
    EVENT_WORKER_REPLACED,
    FAILURE_REASONS,
    FALLBACK_REASONS,
    LIMIT_NAMES,
    LOG_EVENTS_BY_NAME,
    NO_REASON,
    QUERY_REASONS,
)
from templ_pipeline.campaign.runner import DEFAULT_QUERY_TIMEOUT
from templ_pipeline.core.limits.model import PID_MAX, PIDS_CGROUP, RLIMIT_NPROC, STACK_MEMORY, THREADS_MAX

GROUP = "templ-executor"
WIDTH = 100  # columns of the rendered file
_TEMPLATE = re.compile(r"\{\{.*?\}\}")  # Go template actions in annotations: kept on one line
_GLUE = "\x00"  # stands for a space inside a template action while the text is wrapped

#: What to look at for each limit the headroom alerts name; together they cover every limit.
LIMIT_CHECKS: tuple[tuple[tuple[str, ...], str], ...] = (
    ((PIDS_CGROUP,), "`cat /proc/<pid>/cgroup`, then pids.max and pids.current in that cgroup "
                     "(v2: /sys/fs/cgroup/<path>/, v1: /sys/fs/cgroup/pids/<path>/); it is the container's "
                     "--pids-limit or the pod's pids limit, and counts every task of every process in the cgroup."),
    ((RLIMIT_NPROC,), "`ulimit -u` of the job's user (counts all of that user's threads on the host)."),
    ((THREADS_MAX, PID_MAX), "/proc/sys/kernel/threads-max and pid_max (host-wide)."),
    ((STACK_MEMORY,), "RLIMIT_AS (`ulimit -v`) and free memory."),
)

#: What each fallback reason that ends on the sequential rung means for the operator.
SEQUENTIAL_FALLBACKS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("no_headroom", "thread_start_failed", "process_start_failed"),
     "a kernel limit (the cause) refused the pool; check it as for {low}: `templ doctor`, the pids cgroup "
     "(pids.max, pids.current), `ulimit -u`."),
    (("broken_pool",), "a worker died (OOM killer: `dmesg`, memory limits)."),
    (("daemon_process",), "the caller runs inside a daemon process, which cannot have children; run "
                          "select_best from a non-daemon process."),
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
REFUSED_FORKS = "TemplPidsCgroupRefusedForks"


@dataclass(frozen=True, slots=True)
class Rule:
    """One alerting rule. ``why`` is the comment above it; ``fires_when`` its line in the README's table."""

    alert: str
    why: str
    expr: str
    for_minutes: int  # 0: fires on the first evaluation that matches
    severity: str
    fires_when: str
    summary: str
    description: str
    runbook: str


def duration(minutes: int) -> str:
    """Prometheus duration: ``5`` -> ``5m``."""
    return f"{minutes}m"


def in_words(minutes: int) -> str:
    """``1`` -> ``1 minute``, ``5`` -> ``5 minutes``."""
    return f"{minutes} minute" if minutes == 1 else f"{minutes} minutes"


def _selector(short: str, *matchers: str) -> str:
    job = f'job="{JOB}"'
    return f"{metric(short)}{{{', '.join((job, *matchers))}}}"


def _glossary(entries: Sequence[tuple[tuple[str, ...], str]], allowed: Sequence[str]) -> list[str]:
    """``"a / b: text"`` per entry, once every name is checked against ``allowed``."""
    return [f"{' / '.join(value(name, allowed) for name in names)}: {text}" for names, text in entries]


def _headroom_runbook() -> str:
    covered = [name for names, _text in LIMIT_CHECKS for name in names]
    if sorted(covered) != sorted(LIMIT_NAMES):
        raise ValueError(f"LIMIT_CHECKS covers {covered}, the catalog's limits are {LIMIT_NAMES}")
    return " ".join([
        "Find the binding limit: run `templ doctor` (or `templ doctor --json`) on the host as the job's user; "
        "it lists every limit with its headroom and marks the binding one.",
        *_glossary(LIMIT_CHECKS, LIMIT_NAMES),
        "Fix: raise the binding limit, or run fewer workers (--workers) or fewer jobs per host/cgroup.",
    ])


def _headroom_rules(t: Thresholds) -> list[Rule]:
    headroom, limit = _selector("thread_headroom"), _selector("thread_limit")
    runbook = _headroom_runbook()
    low_for, critical_for = 5, 1
    smallest = t.smallest_pool
    return [
        Rule(
            LOW,
            why=f"Below {t.warning_tasks} tasks, pools of more than {t.largest_pool_below_warning} process workers "
                f"get cut (N workers need {t.pool_tasks('N')}); below {percent(t.warning_share)} of the limit "
                f"(pressure {t.warning_pressure:.2f}, where the thread manager reports warning) the limit is close "
                "whatever its size.",
            expr=f"{headroom} < {t.warning_tasks}\nor\n{headroom} < {t.warning_share:.2f} * {limit}\n",
            for_minutes=low_for,
            severity="warning",
            fires_when=f"headroom under a limit < {t.warning_tasks} tasks or < {percent(t.warning_share)} of the "
                       f"limit, for {low_for} min",
            summary="{{ $labels.instance }}: only {{ $value | humanize }} tasks of headroom left under "
                    "{{ $labels.limit }}",
            description="The {{ $labels.limit }} limit lets {{ $labels.instance }} start only "
                        "{{ $value | humanize }} more threads or processes (warning below "
                        f"{t.warning_tasks} tasks or {percent(t.warning_share)} of the limit, for "
                        f"{in_words(low_for)}). The executor shrinks its pools to fit, so throughput drops "
                        "before anything fails.",
            runbook=runbook,
        ),
        Rule(
            CRITICAL,
            why=f"Below {t.critical_tasks} tasks a {smallest}-worker process pool ({t.pool_tasks(smallest)}), "
                f"the smallest the executor starts, no longer fits: the executor runs sequentially. Below "
                f"{percent(t.critical_share)} of the limit is pressure {t.critical_pressure:.2f}, where the "
                "thread manager reports critical.",
            expr=f"{headroom} < {t.critical_tasks}\nor\n{headroom} < {t.critical_share:.2f} * {limit}\n",
            for_minutes=critical_for,
            severity="critical",
            fires_when=f"headroom < {t.critical_tasks} tasks (a {smallest}-worker pool no longer fits) or < "
                       f"{percent(t.critical_share)}, for {critical_for} min",
            summary="{{ $labels.instance }}: {{ $value | humanize }} tasks of headroom under {{ $labels.limit }}, "
                    "threads are about to fail",
            description="{{ $labels.instance }} can start only {{ $value | humanize }} more threads or processes "
                        f"under {{{{ $labels.limit }}}} (critical below {t.critical_tasks} tasks or "
                        f"{percent(t.critical_share)} of the limit, for {in_words(critical_for)}). Not even a "
                        f"{smallest}-worker process pool fits ({t.pool_tasks(smallest)}): scoring runs "
                        "sequentially, and any library that starts a thread may fail with \"can't start new "
                        "thread\".",
            runbook=runbook,
        ),
    ]


def _rose(counter: str, by: str, minutes: int) -> str:
    """PromQL: ``counter`` rose within the window, or its series was born within it above 0.

    ``increase()`` needs two samples, so the first value of a new series (a
    process's first event, a cgroup that had refused forks before the first scrape)
    is seen only by the second branch.
    """
    window = duration(minutes)
    return (f"sum by ({by}) (\n  increase({counter}[{window}])\n) > 0\nor\n"
            f"sum by ({by}) (\n  {counter}\n  unless {counter} offset {window}\n) > 0\n")


def _refused_forks_rule() -> Rule:
    window = 5
    refused = _selector("pids_refused_forks")
    fixes = next(text for names, text in LIMIT_CHECKS if names == (PIDS_CGROUP,))
    return Rule(
        REFUSED_FORKS,
        why="The kernel's count only rises while the cgroup lives, so any increase is a refused fork. The second "
            "branch catches a series first seen above 0 (a short job whose first scrape came after the refusal; a "
            "job started in a cgroup that had refused forks before, whose refusals the kernel cannot date), "
            "which increase() cannot see.",
        expr=_rose(refused, "job, instance", window),
        for_minutes=0,
        severity="warning",
        fires_when=f"the pids cgroup refused a fork in the last {window} min (or its count is first seen above 0)",
        summary="{{ $labels.instance }}: the pids cgroup refused to start threads or processes",
        description=f"In the last {in_words(window)} the pids controller of the cgroup of {{{{ $labels.instance }}}} "
                    "refused at least one fork (pids.events max rose, or was first seen above 0): a thread or "
                    "process of the job, or of another process in the same cgroup, failed to start, however much "
                    "headroom the scrapes show, since a refused pool start frees its tasks at once. The executor "
                    "falls back on its own; other code that starts a thread may fail with \"can't start new "
                    "thread\".",
        runbook="Run `templ doctor` in the job's cgroup: it shows the refused forks and pids.peak next to pids.max "
                f"(the dashboard's Headroom row plots them over time). pids_cgroup: {fixes} Raise that limit, or "
                "run fewer workers (--workers) or fewer jobs in the cgroup. Refusals by `ulimit -u` (RLIMIT_NPROC) "
                "or kernel.threads-max are not counted here: the executor.fallback log lines name their cause.",
    )


def _fallback_rule() -> Rule:
    window = 5
    fallbacks = _selector("fallbacks", f'to_kind="{SEQUENTIAL}"')
    by = "job, instance, from_kind, reason, cause"
    reasons = _glossary([(names, text.format(low=LOW)) for names, text in SEQUENTIAL_FALLBACKS], FALLBACK_REASONS)
    return Rule(
        "TemplExecutorFellBackToSequential",
        why="The second branch catches the first fallback of a process: a counter series born within the window "
            "(increase() needs two samples, and new series start at 1).",
        expr=_rose(fallbacks, by, window),
        for_minutes=0,
        severity="warning",
        fires_when=f"any fallback to {SEQUENTIAL} in the last {window} min (including a process's first)",
        summary="{{ $labels.instance }}: executor fell back from {{ $labels.from_kind }} to "
                f"{SEQUENTIAL} ({{{{ $labels.reason }}}}, cause {{{{ $labels.cause }}}})",
        description=f"In the last {in_words(window)} select_best on {{{{ $labels.instance }}}} gave up its worker "
                    "pool and scored in the calling thread (reason {{ $labels.reason }}, cause "
                    "{{ $labels.cause }}). Results are complete but slower. The "
                    f"{event('executor.fallback')} log lines carry the detail and a trace_id.",
        runbook="reason " + " ".join(reasons),
    )


def _reductions_rule() -> Rule:
    window, hold = 5, 15
    reductions = _selector("worker_reductions")
    return Rule(
        "TemplWorkerReductionsSustained",
        why=f"A grant cut in every {window}-minute window for {in_words(hold)}: the job keeps running below the "
            "parallelism it asked for.",
        expr=(f"sum by (job, instance, task_type, reason) (\n  rate({reductions}[{duration(window)}])\n) > 0\n"),
        for_minutes=hold,
        severity="warning",
        fires_when=f"grants cut in every {window}-min window for {hold} min",
        summary="{{ $labels.instance }}: {{ $labels.task_type }} pools cut by {{ $labels.reason }} for "
                f"{in_words(hold)}",
        description=f"For {in_words(hold)} every {window}-minute window on {{{{ $labels.instance }}}} had "
                    "{{ $labels.task_type }} executors granted fewer workers than requested (reason "
                    "{{ $labels.reason }}, {{ printf \"%.3f\" $value }}/s). The job runs, but below the "
                    "parallelism it asked for.",
        runbook=f"The reason names the binding limit ({listing(MANAGER_REASONS, ' / ')}: the thread manager could "
                f"not answer; see the job's {event('executor.workers_reduced')} log lines). Check it with `templ "
                "doctor`, the pids cgroup (pids.max, pids.current) and `ulimit -u`; then raise the limit or "
                "request fewer workers (--workers) so the request matches what the host allows.",
    )


def _failures_rule() -> Rule:
    window = duration(FAILURE_MINUTES)
    scored, failed = _selector("conformers_scored"), _selector("conformers_failed")
    done = event("select_best.done")
    by_reason = value("failed_by_reason", LOG_EVENTS_BY_NAME[done].fields)
    return Rule(
        "TemplScoringFailureRatioHigh",
        why="Failed over all conformers, per instance; an idle instance is 0/0, NaN, and never fires.",
        expr=(f"sum by (job, instance) (rate({failed}[{window}]))\n/\n(\n"
              f"  sum by (job, instance) (rate({scored}[{window}]))\n"
              f"  + sum by (job, instance) (rate({failed}[{window}]))\n)\n> {FAILURE_RATIO:.2f}\n"),
        for_minutes=FAILURE_MINUTES,
        severity="warning",
        fires_when=f"> {percent(FAILURE_RATIO)} of conformers fail to score, for {FAILURE_MINUTES} min",
        summary="{{ $labels.instance }}: {{ $value | humanizePercentage }} of conformers fail to score",
        description=f"Over the last {in_words(FAILURE_MINUTES)} {{{{ $value | humanizePercentage }}}} of the "
                    "conformers on {{ $labels.instance }} could not be scored (threshold "
                    f"{percent(FAILURE_RATIO)}, for {in_words(FAILURE_MINUTES)}). Failures are per conformer, by "
                    f"reason ({listing(FAILURE_REASONS)}); the dashboard's Work row shows which.",
        runbook="Failures are input problems, not thread limits: a fallback never loses a conformer. Look at the "
                f"reasons on the dashboard and the {done} log lines ({by_reason}) to find the inputs. If they "
                "coincide with fallbacks, still check `templ doctor`, the pids cgroup and `ulimit -u` to rule out "
                "a job starved of workers.",
    )


def _campaign_failures_rule() -> Rule:
    window = duration(CAMPAIGN_FAILURE_MINUTES)
    queries = _selector("campaign_queries")
    failed = _selector("campaign_queries", f'status="{FAILED}"')
    covered = [name for names, _text in QUERY_FAILURE_CHECKS for name in names]
    if sorted(covered) != sorted(reason for reason in QUERY_REASONS if reason != NO_REASON):
        raise ValueError(f"QUERY_FAILURE_CHECKS covers {covered}, the catalog's reasons are {QUERY_REASONS}")
    finished = event(EVENT_QUERY_FINISHED)
    fields = LOG_EVENTS_BY_NAME[finished].fields
    return Rule(
        "TemplCampaignFailureRatioHigh",
        why="Failed over all finished queries, per instance; an instance that finished no query in the window is "
            "0/0, NaN, and never fires.",
        expr=(f"sum by (job, instance) (rate({failed}[{window}]))\n/\n"
              f"sum by (job, instance) (rate({queries}[{window}]))\n> {CAMPAIGN_FAILURE_RATIO:.2f}\n"),
        for_minutes=CAMPAIGN_FAILURE_MINUTES,
        severity="warning",
        fires_when=f"> {percent(CAMPAIGN_FAILURE_RATIO)} of a campaign's queries fail, for "
                   f"{CAMPAIGN_FAILURE_MINUTES} min",
        summary="{{ $labels.instance }}: {{ $value | humanizePercentage }} of the campaign's queries fail",
        description=f"Over the last {in_words(CAMPAIGN_FAILURE_MINUTES)} {{{{ $value | humanizePercentage }}}} of "
                    "the queries the screening campaign on {{ $labels.instance }} finished have no pose (threshold "
                    f"{percent(CAMPAIGN_FAILURE_RATIO)}, for {in_words(CAMPAIGN_FAILURE_MINUTES)}). Each is a "
                    "failed row in scores.csv; the campaign goes on. The dashboard's Campaign row shows the "
                    "reasons.",
        runbook=f"Find the reason on the dashboard, then the queries: the {finished} log lines at level warning "
                f"carry {value('query_id', fields)}, {value('reason', fields)} and {value('detail', fields)} "
                f"(Loki: {{job=\"{JOB}\"}} | json | event=\"{finished}\" | status=\"{FAILED}\"). "
                + " ".join(_glossary(QUERY_FAILURE_CHECKS, QUERY_REASONS))
                + " If worker_lost and timeout coincide with fallbacks or worker reductions, check `templ doctor`, "
                "the pids cgroup and `ulimit -u` too.",
    )


def _campaign_stall_rule() -> Rule:
    window, hold = CAMPAIGN_STALL_WINDOW, CAMPAIGN_STALL_MINUTES - CAMPAIGN_STALL_WINDOW
    queries = _selector("campaign_queries")
    in_flight, expected, skipped = (_selector(short) for short in ("campaign_in_flight", "campaign_expected",
                                                                    "campaign_skipped"))
    limit = in_words(round(DEFAULT_QUERY_TIMEOUT / 60))
    return Rule(
        "TemplCampaignStalled",
        why=f"No query finished in {in_words(window)}, held for {in_words(hold)} more: {in_words(CAMPAIGN_STALL_MINUTES)} "
            f"of silence, longer than the runner's default query time limit ({limit}), after which every query "
            "ends, as a timeout at worst. It needs queries in flight, or queries left by the input's size (NaN when "
            "that is unknown, so only in flight counts): a campaign that is done, or holds its /metrics after the "
            "run, never fires.",
        expr=(f"sum by (job, instance) (increase({queries}[{duration(window)}])) == 0\n"
              f"and on (job, instance)\n(\n  {in_flight} > 0\n  or\n"
              f"  {expected} - {skipped}\n    - on (job, instance) sum by (job, instance) ({queries}) > 0\n)\n"),
        for_minutes=hold,
        severity="critical",
        fires_when=f"no campaign query finished for {CAMPAIGN_STALL_MINUTES} min while queries are in flight or "
                   "remain",
        summary="{{ $labels.instance }}: the screening campaign has finished no query for "
                f"{in_words(CAMPAIGN_STALL_MINUTES)}",
        description=f"The campaign on {{{{ $labels.instance }}}} finished no query in {in_words(CAMPAIGN_STALL_MINUTES)} "
                    "although queries are in flight or left to run. With the default --query-timeout a query ends "
                    f"within {limit} (a hung one as a timeout), so the parent is not getting results: the job "
                    "still holds its allocation and screens nothing.",
        runbook="Look at the job's last log lines (level warning and up): "
                f"{event(EVENT_WORKER_REPLACED)} over and over means workers die as they start or time out; "
                "executor.fallback or executor.workers_reduced mean the kernel refused workers, so run `templ "
                "doctor` in the job (the pids cgroup's pids.max and pids.current, `ulimit -u`). No line at all: "
                "the parent is blocked, on the output directory (a full or hung file system: `df`, the mount) or "
                "on reading the queries; `py-spy dump --pid PID` shows where. A campaign run with --query-timeout "
                "0 (no limit) can stall on one query that never ends. Stop it with SIGTERM: every finished query "
                "is kept, and --resume goes on from there.",
    )


def rules(t: Thresholds | None = None) -> list[Rule]:
    """Every alert, in the order of the file."""
    t = t or thresholds()
    return [*_headroom_rules(t), _refused_forks_rule(), _fallback_rule(), _reductions_rule(), _failures_rule(),
            _campaign_failures_rule(), _campaign_stall_rule()]


def dashboard_link() -> str:
    """The ``dashboard`` annotation: the executor dashboard on the alert's job and instance."""
    return f"/d/{UID}?var-job={{{{ $labels.job }}}}&var-instance={{{{ $labels.instance }}}}"


def as_data(alert_rules: Sequence[Rule]) -> dict:
    """The rule file as Prometheus reads it (what ``yaml.safe_load`` of :func:`render` returns)."""
    def one(rule: Rule) -> dict:
        data: dict = {"alert": rule.alert, "expr": rule.expr}
        if rule.for_minutes:
            data["for"] = duration(rule.for_minutes)
        data["labels"] = {"severity": rule.severity}
        data["annotations"] = {"summary": rule.summary, "description": rule.description,
                               "runbook": rule.runbook, "dashboard": dashboard_link()}
        return data
    return {"groups": [{"name": GROUP, "rules": [one(rule) for rule in alert_rules]}]}


def _wrap(text: str, width: int) -> list[str]:
    """Lines of at most ``width`` (unless a word is longer), never breaking inside a ``{{ ... }}`` template."""
    glued = _TEMPLATE.sub(lambda match: match.group().replace(" ", _GLUE), text)
    lines = textwrap.wrap(glued, width, break_long_words=False, break_on_hyphens=False)
    return [line.replace(_GLUE, " ") for line in lines]


def _comment(text: str, indent: int) -> list[str]:
    return [" " * indent + "# " + line for line in _wrap(text, WIDTH - indent - 2)]


def _folded(key: str, text: str, indent: int) -> list[str]:
    """``key: >-`` and ``text`` wrapped: YAML folds the line breaks back into single spaces."""
    if "\n" in text or "  " in text or text != text.strip():
        raise ValueError(f"{key}: a folded scalar keeps neither line breaks nor runs of spaces: {text!r}")
    return [f"{' ' * indent}{key}: >-", *(" " * (indent + 2) + line for line in _wrap(text, WIDTH - indent - 2))]


def _header(t: Thresholds) -> list[str]:
    headroom, limit = metric("thread_headroom"), metric("thread_limit")
    paragraphs = [
        f'Alert rules for the TEMPL executor (job "{JOB}", see prometheus.yml).',
        "Generated by `make dashboards` (python -m templ_pipeline.dashboards.generate) from dashboards/alerts.py: change "
        "that and regenerate; tests/test_alert_rules.py fails when this file differs from the generator's output.",
        f"Headroom thresholds are for the {t.start_method} start method: {t.cost_text()}. The campaign stall "
        f"window follows the campaign runner's default query time limit ({DEFAULT_QUERY_TIMEOUT:g} s). Metric "
        "names and "
        "label values come from telemetry/catalog.py; `promtool test rules alerts_test.yml` covers every alert, "
        "firing and silent.",
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
        lines += ["        labels:", f"          severity: {rule.severity}", "        annotations:",
                  f"          summary: {json.dumps(rule.summary, ensure_ascii=False)}",
                  *_folded("description", rule.description, 10), *_folded("runbook", rule.runbook, 10),
                  f"          dashboard: {json.dumps(dashboard_link(), ensure_ascii=False)}"]
    return "\n".join(lines) + "\n"


def readme_table(t: Thresholds | None = None) -> str:
    """The alerts table of dashboards/README.md."""
    rows = [f"| `{rule.alert}` | {rule.fires_when} | {rule.severity} |" for rule in rules(t)]
    return "\n".join(["| Alert | Fires when | Severity |", "|---|---|---|", *rows]) + "\n"
