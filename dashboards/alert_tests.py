"""The promtool unit tests of the alert rules (``dashboards/prometheus/alerts_test.yml``), generated.

Every alert has a case of each :class:`Kind` (or a :class:`Waiver` that says why the kind
cannot apply). A case is input series and the alerts expected at some evaluation times;
the expected annotations are the rule's own templates rendered by :func:`expand`, a
renderer of exactly the Go template subset the annotations use, so a wording change in
:mod:`dashboards.alerts` needs no edit here. promtool compares annotations verbatim.

Times follow prometheus.yml: rules every 15 s; a directly scraped job every 5 s; the
Pushgateway scraped every 15 s, holding a group's values until it is deleted.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from templ_pipeline.dashboards import alerts
from templ_pipeline.dashboards.alerts import Rule
from templ_pipeline.dashboards.dashboard_exporters import CADVISOR_JOB, NODE_JOB
from templ_pipeline.dashboards.names import JOB, metric
from templ_pipeline.dashboards.thresholds import (
    CAMPAIGN_STALL_MINUTES,
    DEAD_GROUP_HOURS,
    EVENT_WINDOW_MINUTES,
    FAILURE_MINUTES,
    PUSH_FRESH_MINUTES,
    PUSH_SLACK_SECONDS,
    Thresholds,
    thresholds,
)

EVALUATION_INTERVAL = "15s"  # prometheus.yml's evaluation_interval
SCRAPE = "5s"  # the templ job's scrape_interval
PUSHGATEWAY_SCRAPE = "15s"
START = 60  # seconds: a short job's first sample
HOURS = 1200  # samples of a value the Pushgateway holds: 5 hours at its 15 s scrape


class Kind(StrEnum):
    """The five things every alert's tests show."""

    SHORT = "fires for a 10 s job"
    PUSHED = "fires from pushed metrics"
    HEALTHY = "stays silent when healthy"
    RESOLVES = "resolves when the job is gone or its push is stale"
    BORN_AT_1 = "a counter series born at 1 (a gauge: its first sample already bad)"


@dataclass(frozen=True)
class Fired:
    """An alert expected at an evaluation: its labels (severity added from the rule) and ``$value``."""

    labels: Mapping[str, str]
    value: float | None = None


@dataclass(frozen=True)
class Case:
    """One promtool test group: one alert, one kind."""

    alert: str
    kind: Kind
    note: str
    series: Sequence[tuple[str, str]]  # (series, values)
    checks: Sequence[tuple[str, Sequence[Fired]]]  # (eval_time, alerts expected then)
    interval: str = SCRAPE


@dataclass(frozen=True)
class Waiver:
    """A kind that cannot apply to an alert, and why; rendered as a comment next to its cases."""

    alert: str
    kind: Kind
    reason: str


SCRAPED = {"job": JOB, "instance": "node1:9464"}
PUSHED = {"job": JOB, "instance": "node1", "job_id": "4711"}
OTHER_PUSHED = {"job": JOB, "instance": "node1", "job_id": "4712"}


def series(name: str, labels: Mapping[str, str]) -> str:
    """``name{a="b", ...}`` as promtool's input_series wants it."""
    return name + "{" + ", ".join(f'{key}="{value}"' for key, value in labels.items()) + "}"


def short_job(*values: float | str, start: int = START) -> str:
    """A 10 s job scraped every 5 s: samples at ``start`` (60 s), 5 and 10 s later, then stale."""
    return " ".join([f"_x{start // 5}", *(str(v) for v in values), "stale"])


def cleared_at(last_sample: int, window_minutes: int) -> int:
    """The first evaluation whose window no longer holds ``last_sample`` (ranges include both ends)."""
    end = last_sample + window_minutes * 60
    return end + 15 - end % 15


RUN_LABELS = ("job", "instance", "job_id")  # the labels a run's templ_run_start_time_seconds shares with its series


def run_start(labels: Mapping[str, str], values: str) -> tuple[str, str]:
    """The ``templ_run_start_time_seconds`` row of the run behind series with ``labels``."""
    return series(metric("run_start"), _pick(labels, RUN_LABELS)), values


def short_run_start(start: int = START) -> str:
    """The start time of a 10 s job (5 s before its first scrape) on each of its scrapes, as :func:`short_job`."""
    return short_job(*([start - 5] * 3), start=start)


def held(value: float | str, after: int = 4) -> str:
    """A pushed value: absent for ``after`` Pushgateway scrapes, then held for hours."""
    return f"_x{after} {value}x{HOURS}" if after else f"{value}x{HOURS}"


def seconds(value: int) -> str:
    return f"{value}s"


def minutes(value: float) -> str:
    return f"{int(value * 60)}s"


# ----------------------------------------------------------------------------------------------
# Rendering of the annotation templates
# ----------------------------------------------------------------------------------------------
_IF = re.compile(r"\{\{ if \$labels\.(\w+) \}\}(.*?)\{\{ end \}\}")
_LABEL = re.compile(r"\{\{ \$labels\.(\w+) \}\}")
_VALUE = re.compile(r"\{\{ \$value \| (humanize|humanizePercentage) \}\}")


def _humanize(value: float) -> str:
    """Prometheus's ``humanize`` for the values the tests use: 0 and 1 <= |v| < 1000 (no SI prefix)."""
    if value != 0 and not 1 <= abs(value) < 1000:
        raise ValueError(f"humanize of {value} needs an SI prefix, which this renderer does not do")
    return f"{value:.4g}"


def expand(template: str, labels: Mapping[str, str], value: float | None) -> str:
    """``template`` as Prometheus expands it, for the subset the rules use (anything else is an error).

    ``{{ $labels.x }}``, ``{{ if $labels.x }}...{{ end }}`` (not nested), ``{{ $value | humanize }}``
    and ``{{ $value | humanizePercentage }}`` (Go's ``%.4g``, as Python's).
    """
    def value_of(match: re.Match) -> str:
        if value is None:
            raise ValueError(f"{template!r} shows $value: give the case's expected value")
        return _humanize(value) if match.group(1) == "humanize" else f"{value * 100:.4g}%"

    text = _IF.sub(lambda m: m.group(2) if labels.get(m.group(1)) else "", template)
    text = _LABEL.sub(lambda m: labels.get(m.group(1), ""), text)
    text = _VALUE.sub(value_of, text)
    if "{{" in text:
        raise ValueError(f"a template action this renderer does not know: {text!r}")
    return text


# ----------------------------------------------------------------------------------------------
# Cases
# ----------------------------------------------------------------------------------------------
def _pick(labels: Mapping[str, str], names: Sequence[str]) -> dict[str, str]:
    return {name: labels[name] for name in names if name in labels}


@dataclass(frozen=True)
class CounterAlert:
    """An alert on "this counter rose in the window": the counter, the labels of a bad series, the quiet ones."""

    alert: str
    counter: str
    labels: Mapping[str, str]
    by: Sequence[str]
    quiet: Sequence[Mapping[str, str]] = field(default_factory=tuple)  # labels that rise without firing
    window: int = EVENT_WINDOW_MINUTES


def _counter_cases(c: CounterAlert) -> list[Case]:
    name = metric(c.counter)
    scraped, pushed = {**SCRAPED, **c.labels}, {**PUSHED, **c.labels}
    fired_scraped, fired_pushed = Fired(_pick(scraped, c.by)), Fired(_pick(pushed, c.by))
    clears = cleared_at(START + 10, c.window)
    later = 6 * 60  # the healthy case's 10 s job, once the long series have a window of history
    quiet = [(series(name, {**SCRAPED, **labels}), short_job(0, 1, 2, start=later)) for labels in c.quiet]
    short_start = run_start(SCRAPED, short_run_start())
    # a second run on the port, 7 minutes after the first ended: its first scrape (at 490 s) shows the event
    second = START + 10 + 7 * 60
    gap = f"_x{second // 5 - (START + 15) // 5 - 1}"
    old = "-3600"  # a run that started an hour before the test's first sample
    return [
        Case(c.alert, Kind.SHORT, "a 10 s job, zero-initialised, counts 1 then 2 between two evaluations",
             [(series(name, scraped), short_job(0, 1, 2)), short_start],
             [(seconds(45), []), (seconds(75), [fired_scraped])]),
        Case(c.alert, Kind.PUSHED, "pushed once at the end with the count at 1, then held for hours",
             [(series(name, pushed), held(1)), (series("push_time_seconds", PUSHED), held(START)),
              run_start(PUSHED, held(START - 10))],
             [(seconds(75), [fired_pushed]), ("16m", [])], interval=PUSHGATEWAY_SCRAPE),
        Case(c.alert, Kind.HEALTHY, "a 10 s job and a long one at 0, a long one flat at 4, and labels that do not "
             "count", [(series(name, scraped), short_job(0, 0, 0, start=later)),
                       run_start(SCRAPED, short_run_start(later)),
                       (series(name, {**SCRAPED, **c.labels, "instance": "node2:9464"}), "0x1000"),
                       (series(name, {**SCRAPED, **c.labels, "instance": "node3:9464"}), "4x1000"),
                       (series(name, {**PUSHED, **c.labels}), held(0)), *quiet],
             [(seconds(later + 15), []), (seconds(later + 6 * 60), [])]),
        Case(c.alert, Kind.HEALTHY, "a group pushed with its count at 3 15 minutes (3 windows) before Prometheus "
             "first scrapes the Pushgateway: old events, not new ones",
             [(series(name, pushed), f"_x60 3x{HOURS}"), (series("push_time_seconds", PUSHED), f"_x60 0x{HOURS}"),
              run_start(PUSHED, f"_x60 -10x{HOURS}")],
             [(seconds(915), []), (seconds(1200), [])], interval=PUSHGATEWAY_SCRAPE),
        Case(c.alert, Kind.HEALTHY, "a job running for an hour, its count at 4, behind a 10-minute scrape gap "
             "(a Prometheus restart): the count seen again is not new",
             [(series(name, scraped), "4x20 _x120 4x100"), run_start(SCRAPED, f"{old}x20 _x120 {old}x100")],
             [(seconds(90), []), (seconds(720), []), (seconds(900), [])]),
        Case(c.alert, Kind.RESOLVES, f"the 10 s job's alert holds for the {c.window}-minute window after its last "
             "rise, then clears", [(series(name, scraped), short_job(0, 1, 2)), short_start],
             [(seconds(clears - 15), [fired_scraped]), (seconds(clears), [])]),
        Case(c.alert, Kind.BORN_AT_1, "no zero sample: the job's only scrape already shows 1",
             [(series(name, scraped), short_job(1)), run_start(SCRAPED, short_job(START - 5))],
             [(seconds(75), [fired_scraped]), (minutes(c.window + 1), [])]),
        Case(c.alert, Kind.BORN_AT_1, "a second run on the port, started 7 minutes after the first ended (its "
             "series in the window before): its first event is born at 1 and fires",
             [(series(name, scraped), f"{short_job(0, 1, 3)} {gap} 1 stale"),
              run_start(SCRAPED, f"{short_run_start()} {gap} {second - 5} stale")],
             [(seconds(clears), []), (seconds(second + 5), [fired_scraped])]),
    ]


def _ratio_cases(alert: str, numerator: tuple[str, Mapping[str, str]], others: tuple[str, Mapping[str, str]],
                 window: int) -> list[Case]:
    """Failures over all: ``numerator`` the failed series, ``others`` the ones that went well."""
    (bad, bad_labels), (good, good_labels) = numerator, others
    by = ("job", "instance", "job_id")

    def inputs(base: Mapping[str, str], failed: str, ok: str) -> list[tuple[str, str]]:
        return [(series(metric(bad), {**base, **bad_labels}), failed),
                (series(metric(good), {**base, **good_labels}), ok)]

    pushed_time = [(series("push_time_seconds", PUSHED), held(START)), run_start(PUSHED, held(START - 10))]
    short_start = [run_start(SCRAPED, short_run_start())]
    clears = cleared_at(START + 10, window)
    return [
        Case(alert, Kind.SHORT, "a 10 s job: 20 of 100 fail", inputs(SCRAPED, short_job(0, 10, 20),
             short_job(0, 40, 80)) + short_start, [(seconds(75), [Fired(_pick(SCRAPED, by), 0.2)])]),
        Case(alert, Kind.PUSHED, "pushed once at the end, 30 failed and 100 not, held for hours",
             inputs(PUSHED, held(30), held(100)) + pushed_time,
             [(seconds(75), [Fired(_pick(PUSHED, by), 30 / 130)]), ("16m", [])], interval=PUSHGATEWAY_SCRAPE),
        Case(alert, Kind.HEALTHY, "2 of 100 fail; an idle job (0/0) says nothing",
             inputs(SCRAPED, short_job(0, 1, 2), short_job(0, 49, 98)) + short_start
             + inputs({**SCRAPED, "instance": "node2:9464"}, "0x1000", "0x1000"),
             [(seconds(75), []), ("12m", [])]),
        Case(alert, Kind.RESOLVES, f"the 10 s job leaves the {window}-minute window", inputs(
             SCRAPED, short_job(0, 10, 20), short_job(0, 40, 80)) + short_start,
             [(seconds(clears - 15), [Fired(_pick(SCRAPED, by), 0.2)]), (seconds(clears), [])]),
        Case(alert, Kind.BORN_AT_1, "the only scrape: 1 failed, 1 not",
             inputs(SCRAPED, short_job(1), short_job(1)) + [run_start(SCRAPED, short_job(START - 5))],
             [(seconds(75), [Fired(_pick(SCRAPED, by), 0.5)])]),
    ]


def _headroom_cases(alert: str, limit: str, low: int, host: bool) -> list[Case]:
    headroom, limit_metric = metric("thread_headroom"), metric("thread_limit")

    def job(base: Mapping[str, str], value: str, size: str, present: str, run: str = "r1") -> list[tuple[str, str]]:
        """Headroom, limit and templ_run_info (``present``: its values) of one run."""
        info = {**base, "run_id": run, "job_id": base.get("job_id", run), "host": "node1"}
        return [(series(headroom, {**base, "limit": limit}), value),
                (series(limit_metric, {**base, "limit": limit}), size), (series(metric("run_info"), info), present)]

    scraped_run = short_job(1, 1, 1)

    if host:
        def fired(base: Mapping[str, str], value: float) -> Fired:
            return Fired({"job": JOB, "host": "node1", "limit": limit}, value)
    else:
        def fired(base: Mapping[str, str], value: float) -> Fired:
            return Fired({**base, "limit": limit}, value)

    second = {**SCRAPED, "instance": "node1:9465"}
    short = job(SCRAPED, short_job(low, low, low), short_job(1000, 1000, 1000), scraped_run)
    if host:  # a second job on the host, lower still: one alert, the lowest headroom
        short += job(second, short_job(low - 1, low - 1, low - 1), short_job(1000, 1000, 1000), scraped_run, "r2")
    shortest = low - 1 if host else low
    pushed = job(PUSHED, held(low), held(1000), held(1)) + [(series("push_time_seconds", PUSHED), held(START))]
    stale_at = START + PUSH_FRESH_MINUTES * 60 + 15
    healthy = [row for instance, value, size in (("node1:9464", 3000, 4000), ("node2:9464", "NaN", "NaN"),
                                                 ("node3:9464", "Inf", "Inf"))
               for row in job({**SCRAPED, "instance": instance}, short_job(value, value, value),
                              short_job(size, size, size), scraped_run)]
    clears = cleared_at(START + 10, EVENT_WINDOW_MINUTES)
    cases = [
        Case(alert, Kind.SHORT, f"a 10 s job at {low} tasks" + (" and a second one on the host at one less" if host
                                                                  else ""), short,
             [(seconds(45), []), (seconds(75), [fired(SCRAPED, shortest)])]),
        Case(alert, Kind.PUSHED, "a pushed group holding the gauge (TEMPL pushes no live gauge; an older "
             "version or another pusher may), fresh for a while", pushed,
             [(seconds(75), [fired(PUSHED, low)])], interval=PUSHGATEWAY_SCRAPE),
        Case(alert, Kind.HEALTHY, "3000 of 4000 tasks left; unknown (NaN) and not enforced (+Inf)", healthy,
             [(seconds(75), []), ("10m", [])]),
        Case(alert, Kind.RESOLVES, "the 10 s job leaves the window", short,
             [(seconds(clears - 15), [fired(SCRAPED, shortest)]), (seconds(clears), [])]),
        Case(alert, Kind.RESOLVES, f"the pushed group's gauge stops counting {PUSH_FRESH_MINUTES} minutes after its "
             "last push, though the Pushgateway holds it", pushed,
             [(seconds(stale_at - stale_at % 15 - 15), [fired(PUSHED, low)]),
              (seconds(stale_at - stale_at % 15 + 15), []),
              ("16m", [])], interval=PUSHGATEWAY_SCRAPE),
        Case(alert, Kind.BORN_AT_1, "the job's only scrape is already low",
             job(SCRAPED, short_job(low), short_job(1000), short_job(1)),
             [(seconds(75), [fired(SCRAPED, low)])]),
    ]
    if host:  # a library user's process publishes no templ_run_info: it alerts on its own, its instance as host
        library = {**SCRAPED, "instance": "node2:9464"}
        cases.append(Case(alert, Kind.SHORT, "a library user's process (no templ_run_info) at the threshold",
                          job(library, short_job(low, low, low), short_job(1000, 1000, 1000), scraped_run)[:2],
                          [(seconds(75), [Fired({"job": JOB, "host": library["instance"], "limit": limit}, low)])]))
    if host:  # two runs on one port within the window: one match per host, not a many-to-many error
        cases.append(Case(alert, Kind.SHORT, "two successive runs on one port within the window",
                          job(SCRAPED, short_job(low, low, low), short_job(1000, 1000, 1000), scraped_run)
                          + [(series(metric("run_info"), {**SCRAPED, "run_id": "r2", "job_id": "r2", "host": "node1"}),
                              "_x15 1 1 stale")],
                          [(seconds(90), [fired(SCRAPED, low)])]))
    return cases


def _node_cases(rule: Rule, used: str, limit: str, labels: Mapping[str, str], unlimited: bool) -> list[Case]:
    other = {**labels, "instance": "node2:9100"}
    return [
        Case(rule.alert, Kind.SHORT, "a 10 s burst to 980 of 1000 seen by one 15 s scrape",
             [(series(used, labels), "500x3 980 500x40"), (series(limit, labels), "1000x45")],
             [(seconds(75), [Fired(labels, 0.98)])], interval="15s"),
        Case(rule.alert, Kind.HEALTHY, "half the limit" + ("; a container without a limit (0)" if unlimited else ""),
             [(series(used, labels), "500x45"), (series(limit, labels), "1000x45")]
             + ([(series(used, other), "500x45"), (series(limit, other), "0x45")] if unlimited else []),
             [(seconds(75), []), (seconds(600), [])], interval="15s"),
        Case(rule.alert, Kind.RESOLVES, f"the burst leaves the {EVENT_WINDOW_MINUTES}-minute window",
             [(series(used, labels), "500x3 980 500x40"), (series(limit, labels), "1000x45")],
             [(seconds(360), [Fired(labels, 0.98)]), (seconds(375), [])], interval="15s"),
        Case(rule.alert, Kind.BORN_AT_1, "a node whose first scrape is already at 990 of 1000",
             [(series(used, other), "_x4 990x10"), (series(limit, other), "_x4 1000x10")],
             [(seconds(60), [Fired(other, 0.99)])], interval="15s"),
    ]


def _stall_cases() -> list[Case]:
    name = alerts.STALLED
    w = CAMPAIGN_STALL_MINUTES
    steps = 4 * 35  # 35 minutes of 15 s scrapes
    scored, failed, queries = (metric(short) for short in ("conformers_scored", "conformers_failed",
                                                            "campaign_queries"))

    def run(base: Mapping[str, str], progress: str, *, success: str = f"0x{steps}", up: str | None = f"1x{steps}",
            alive: Sequence[tuple[str, str]] = ()) -> list[tuple[str, str]]:
        info = {**base, "run_id": "r1", "job_id": base.get("job_id", "r1"), "host": "node1"}
        started = [] if up is None else [(series("process_start_time_seconds", base), f"0x{steps}")]
        rows = [(series(metric("run_info"), info), f"1x{steps}"), run_start(base, f"0x{steps}"), *started,
                (series(metric("last_success"), base), success), (series(metric("last_failure"), base), f"0x{steps}"),
                (series(scored, base), progress),
                (series(failed, {**base, "reason": "embedding_failed"}), f"0x{steps}"),
                (series(queries, {**base, "status": "ok", "reason": "none"}), f"0x{steps}"), *alive]
        return rows + ([(series("up", base), up)] if up else [])

    flat_after_5m = f"0+10x20 200x{steps - 20}"  # scores for 5 minutes, then nothing
    embedding = {**SCRAPED, "instance": "node3:9464"}
    fired = Fired(SCRAPED)
    pushing = [(series("push_time_seconds", PUSHED), f"0+15x{steps}"),
               (series(metric("push_interval"), PUSHED), f"30x{steps}")]
    return [
        Case(name, Kind.PUSHED, "a group pushed every 15 s (interval 30 s) that stops scoring after 5 minutes",
             run(PUSHED, flat_after_5m, up=None, alive=pushing),
             [(minutes(19), []), (minutes(21), [Fired(PUSHED)])], interval="15s"),
        Case(name, Kind.HEALTHY, "a job that keeps scoring; one that finished and holds /metrics; one that "
             "embeds conformers for 35 minutes",
             run(SCRAPED, f"0+10x{steps}") + run({**SCRAPED, "instance": "node2:9464"}, flat_after_5m,
                                                 success=f"0x20 300x{steps - 20}")
             + run(embedding, f"0x{steps}",
                   alive=[(series(metric("conformer_generations_in_progress"), embedding), f"1x{steps}")]),
             [(minutes(21), []), (minutes(25), [])], interval="15s"),
        Case(name, Kind.RESOLVES, f"no progress for {w} minutes fires; the target gone (the job ended) clears it",
             run(SCRAPED, flat_after_5m, up=f"1x{4 * 30} stale"),
             [(minutes(19), []), (minutes(21), [fired]), (minutes(30), [fired]), (seconds(30 * 60 + 15), [])],
             interval="15s"),
        Case(name, Kind.RESOLVES, "progress again clears it at the next evaluation",
             run(SCRAPED, f"0+10x20 200x80 200+10x{steps - 102}"),  # flat from 5 to 25.5 minutes
             [(minutes(24), [fired]), (seconds(1530), [fired]), (seconds(1545), [])], interval="15s"),
        Case(name, Kind.BORN_AT_1, "a campaign whose queries counter is born at 1 at its first scrape, flat "
             f"since: silent while the run is younger than {w} minutes, then it fires (a counter born later in a "
             "run older than the window counts from its second sample: TEMPL's are zero-initialised)",
             [row for row in run(SCRAPED, f"0x{steps}") if not row[0].startswith(queries)]
             + [(series(queries, {**SCRAPED, "status": "ok", "reason": "none"}), f"1x{steps}")],
             [(minutes(w), []), (seconds(w * 60 + 15), [fired])], interval="15s"),
    ]


def _pushed_died_cases() -> list[Case]:
    name = alerts.PUSHED_JOB_DIED
    success, failure, interval = (metric(short) for short in ("last_success", "last_failure", "push_interval"))

    def group(push_times: str, every: int, ended: str = f"0x{HOURS}", steps: int = HOURS) -> list[tuple[str, str]]:
        """A group's push times, push interval and end timestamps (``ended``: last_success's values)."""
        return [(series("push_time_seconds", PUSHED), push_times), (series(interval, PUSHED), f"{every}x{steps}"),
                (series(success, PUSHED), ended), (series(failure, PUSHED), f"0x{steps}")]

    def other(push_times: str, every: int) -> list[tuple[str, str]]:
        return [(series("push_time_seconds", OTHER_PUSHED), push_times),
                *((series(m, OTHER_PUSHED), f"{v}x{HOURS}")
                  for m, v in ((interval, every), (success, 0), (failure, 0)))]

    fired = Fired(PUSHED)
    # 3 intervals of 5 s and the slack: the killed job's push at 10 s is too old from 10 + 15 + slack on
    dead_at = 10 + 3 * 5 + PUSH_SLACK_SECONDS
    hours = DEAD_GROUP_HOURS * 3600
    return [
        Case(name, Kind.SHORT, "a 10 s job pushing every 5 s, killed after its push at 10 s; beside it a live job "
             "pushing every 5 s whose push reads 19 s old (the Pushgateway's scrape and the evaluation's lag)",
             group(f"_ 10x{HOURS}", 5) + other(f"_x2 11+15x{HOURS}", 5),
             [(seconds(30), []), (seconds(dead_at), []), (seconds(dead_at + 15), [fired])], interval="15s"),
        Case(name, Kind.PUSHED, "pushes every 30 s for 5 minutes, then none (SIGKILL)",
             group(f"0+30x10 300x{HOURS}", 30), [(seconds(435), []), (seconds(465), [fired]), ("16m", [fired])],
             interval="30s"),
        Case(name, Kind.HEALTHY, "its last push has the success timestamp; another pushes only at its end",
             group(f"0+30x10 300x{HOURS}", 30, ended=f"0x10 300x{HOURS}") + [
                 (series("push_time_seconds", OTHER_PUSHED), f"_x10 300x{HOURS}"),
                 (series(interval, OTHER_PUSHED), f"_x10 0x{HOURS}"),
                 (series(success, OTHER_PUSHED), f"_x10 0x{HOURS}"),
                 (series(failure, OTHER_PUSHED), f"_x10 0x{HOURS}")],
             [(seconds(405), []), ("16m", [])], interval="30s"),
        Case(name, Kind.RESOLVES, "the operator deletes the group",
             [(name, values + " stale") for name, values in group("0+30x10 300x20", 30, "0x30", 30)],
             [(seconds(465), [fired]), (seconds(30 * 32 + 30), [])], interval="30s"),
        # the last push lies almost a day before the test's start (promtool would otherwise evaluate every rule
        # every 15 s for a whole day): 5 minutes short of the bound at 0, past it at 360 s
        Case(name, Kind.RESOLVES, f"nobody deletes the group: the alert clears {DEAD_GROUP_HOURS} hours after its "
             "last push", group(f"{300 - hours}x10", 60, "0x10", 10),
             [(seconds(60), [fired]), (seconds(285), [fired]), (seconds(315), [])], interval="60s"),
        Case(name, Kind.BORN_AT_1, "the group's first push is its last", group(f"_x4 60x{HOURS}", 30),
             [(seconds(210), []), (seconds(225), [fired])], interval="15s"),
    ]


def _push_failed_cases() -> list[Case]:
    name = alerts.PUSH_FAILED
    degraded = metric("telemetry_degraded")
    pgw = {"component": alerts.PUSHGATEWAY, "reason": "push_failed"}

    def times(pushed: str, failed: str) -> list[tuple[str, str]]:
        return [(series("push_time_seconds", PUSHED), pushed), (series("push_failure_time_seconds", PUSHED), failed)]

    fired = Fired(PUSHED)
    return [
        Case(name, Kind.SHORT, "a 10 s job scraped directly counts a push it could not deliver",
             [(series(degraded, {**SCRAPED, **pgw}), short_job(0, 1, 1)), run_start(SCRAPED, short_run_start())],
             [(seconds(75), [Fired(SCRAPED)])]),
        Case(name, Kind.PUSHED, "the Pushgateway refused the push at 90 s (the last good one at 60 s)",
             times(held(START), f"_x4 0x2 90x{HOURS}"),
             [(seconds(75), []), (seconds(120), [fired]), (seconds(375), [fired])],
             interval="15s"),
        Case(name, Kind.HEALTHY, "no failure (0), a failure older than the last good push, and a pusher thread "
             "the kernel refused (telemetry degraded, not a failed push)",
             times(held(START), held(0)) + [(series("push_time_seconds", OTHER_PUSHED), held(START)),
                                            (series("push_failure_time_seconds", OTHER_PUSHED), held(30)),
                                            (series(degraded, {**PUSHED, **pgw, "reason": "thread_start_failed"}),
                                             held(1)), run_start(PUSHED, held(START - 10))],
             [(seconds(120), []), ("16m", [])], interval="15s"),
        Case(name, Kind.RESOLVES, f"the next push succeeds; a failure older than {EVENT_WINDOW_MINUTES} minutes "
             "stops counting", times(f"_x4 60x4 120x{HOURS}", f"_x4 0x2 90x{HOURS}") + [
                 (series("push_time_seconds", OTHER_PUSHED), held(START)),
                 (series("push_failure_time_seconds", OTHER_PUSHED), f"_x4 0x2 90x{HOURS}")],
             [(seconds(105), [fired, Fired(OTHER_PUSHED)]), (seconds(135), [Fired(OTHER_PUSHED)]),
              (seconds(405), [])], interval="15s"),
        Case(name, Kind.BORN_AT_1, "the job's next good push carries its failed-push count, born at 1",
             [(series(degraded, {**PUSHED, **pgw}), held(1)), (series("push_time_seconds", PUSHED), held(START)),
              (series("push_failure_time_seconds", PUSHED), held(0)), run_start(PUSHED, held(START - 10))],
             [(seconds(75), [fired]), (minutes(EVENT_WINDOW_MINUTES + 1), [])], interval="15s"),
    ]


COUNTER_ALERTS: tuple[CounterAlert, ...] = (
    CounterAlert(alerts.REFUSED_STARTS_ALERT, "start_refusals", {"kind": "thread", "cause": "pids_cgroup"},
                 ("job", "instance", "job_id", "kind", "cause")),
    CounterAlert(alerts.REFUSED_FORKS, "pids_refused_forks", {}, ("job", "instance", "job_id")),
    CounterAlert(alerts.FALLBACK_ALERT, "fallbacks",
                 {"from_kind": "process", "to_kind": "sequential", "reason": "thread_start_failed",
                  "cause": "pids_cgroup"}, ("job", "instance", "job_id", "from_kind", "reason", "cause"),
                 quiet=({"from_kind": "process", "to_kind": "thread", "reason": "process_start_failed",
                         "cause": "pids_cgroup"},)),
    CounterAlert(alerts.DASK_FALLBACK_ALERT, "fallbacks",
                 {"from_kind": "dask", "to_kind": "process", "reason": "no_workers", "cause": "none"},
                 ("job", "instance", "job_id", "to_kind", "reason"),
                 quiet=({"from_kind": "process", "to_kind": "sequential", "reason": "no_headroom",
                         "cause": "pids_cgroup"},)),
    CounterAlert(alerts.REDUCTIONS, "worker_reductions", {"task_type": "scoring", "reason": "pids_cgroup"},
                 ("job", "instance", "job_id", "task_type", "reason")),
    CounterAlert(alerts.SELECT_BEST_ERRORS, "select_best_calls", {"outcome": "error"}, ("job", "instance", "job_id"),
                 quiet=({"outcome": "ok"},)),
    CounterAlert(alerts.TELEMETRY_DEGRADED, "telemetry_degraded",
                 {"component": "span_processor", "reason": "thread_start_failed"},
                 ("job", "instance", "job_id", "component", "reason"),
                 quiet=({"component": alerts.PUSHGATEWAY, "reason": "push_failed"},)),
    CounterAlert(alerts.TELEMETRY_DEGRADED, "telemetry_degraded",
                 {"component": alerts.PUSHGATEWAY, "reason": "thread_start_failed"},
                 ("job", "instance", "job_id", "component", "reason"),
                 quiet=({"component": alerts.PUSHGATEWAY, "reason": "push_failed"},)),
)

WAIVERS: tuple[Waiver, ...] = (
    Waiver(alerts.STALLED, Kind.SHORT, f"a 10 s job cannot go {CAMPAIGN_STALL_MINUTES} minutes without progress; "
                                       "the stalled long job of the RESOLVES case fires instead"),
    *(Waiver(alert, Kind.PUSHED, "node_exporter and cAdvisor are scraped, never pushed")
      for alert in (alerts.NODE_THREADS, alerts.NODE_PIDS, alerts.CONTAINER_THREADS)),
)


def cases(t: Thresholds | None = None) -> list[Case]:
    """Every test case, grouped by alert in the order of the rule file."""
    t = t or thresholds()
    job_limit, host_limit = "pids_cgroup", "threads_max"
    node, cadvisor = {"job": NODE_JOB, "instance": "node1:9100"}, {"job": CADVISOR_JOB, "instance": "node1:8080",
                                                                    "id": "/kubepods/pod1/abc"}
    by_alert = {rule.alert: rule for rule in alerts.rules(t)}
    scoring = _ratio_cases(alerts.SCORING_FAILURES, ("conformers_failed", {"reason": "embedding_failed"}),
                           ("conformers_scored", {}), FAILURE_MINUTES)
    found = [
        *_headroom_cases(alerts.LOW, job_limit, t.warning_tasks - 12, False),
        *_headroom_cases(alerts.CRITICAL, job_limit, t.critical_tasks - 2, False),
        *_headroom_cases(alerts.HOST_LOW, host_limit, t.warning_tasks - 12, True),
        *_headroom_cases(alerts.HOST_CRITICAL, host_limit, t.critical_tasks - 2, True),
        *(case for c in COUNTER_ALERTS for case in _counter_cases(c)),
        *scoring,
        *_ratio_cases(alerts.CAMPAIGN_FAILURES, ("campaign_queries", {"status": "failed", "reason": "timeout"}),
                      ("campaign_queries", {"status": "ok", "reason": "none"}), FAILURE_MINUTES),
        *_stall_cases(), *_pushed_died_cases(), *_push_failed_cases(),
        *_node_cases(by_alert[alerts.NODE_THREADS], "node_processes_threads", "node_processes_max_threads", node,
                     False),
        *_node_cases(by_alert[alerts.NODE_PIDS], "node_processes_pids", "node_processes_max_processes", node, False),
        *_node_cases(by_alert[alerts.CONTAINER_THREADS], "container_threads", "container_threads_max", cadvisor,
                     True),
    ]
    order = list(by_alert)
    return sorted(found, key=lambda case: order.index(case.alert))


# ----------------------------------------------------------------------------------------------
# The YAML
# ----------------------------------------------------------------------------------------------
def _quoted(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _expected(rule: Rule, fired: Fired, anchors: set[str]) -> list[str]:
    labels = {**fired.labels, "severity": rule.severity.value}
    values = {**fired.labels}
    lines = ["          - exp_labels: {" + ", ".join(f"{k}: {_quoted(v)}" for k, v in labels.items()) + "}",
             "            exp_annotations:"]
    for key, template in (("summary", rule.summary), ("description", rule.description), ("dashboard", rule.dashboard)):
        lines.append(f"              {key}: {_quoted(expand(template, values, fired.value))}")
    anchor = "runbook_" + rule.alert
    if anchor in anchors:
        lines.append(f"              runbook: *{anchor}")
    else:
        anchors.add(anchor)
        lines.append(f"              runbook: &{anchor} {_quoted(expand(rule.runbook, values, fired.value))}")
    return lines


def render(t: Thresholds | None = None) -> str:
    """The committed ``alerts_test.yml``."""
    t = t or thresholds()
    by_alert = {rule.alert: rule for rule in alerts.rules(t)}
    lines = [
        "# Unit tests of alerts.yml: `promtool test rules alerts_test.yml` (run by tests/test_alert_rules.py).",
        "# Generated by `make dashboards` from dashboards/alert_tests.py: never edit by hand. Every alert has",
        "# one test group (or more) of each kind below, named in the comment above it as `<alert> | <kind>`,",
        "# or a waiver that says why the kind cannot apply. Times follow prometheus.yml: rules every 15 s, the",
        f"# templ job scraped every {SCRAPE}, the Pushgateway every {PUSHGATEWAY_SCRAPE}.",
        *(f"#   {kind.name}: {kind.value}" for kind in Kind),
        "rule_files:", "  - alerts.yml", "", f"evaluation_interval: {EVALUATION_INTERVAL}", "", "tests:",
    ]
    anchors: set[str] = set()
    waived = {(w.alert, w.kind): w for w in WAIVERS}
    done: set[str] = set()
    for case in cases(t):
        rule = by_alert[case.alert]
        if case.alert not in done:
            done.add(case.alert)
            lines += [f"  # waiver: {w.alert} | {w.kind.name}: {w.reason}" for (a, _k), w in waived.items()
                      if a == case.alert]
        lines += [f"  # {case.alert} | {case.kind.name}: {case.note}", f"  - interval: {case.interval}",
                  "    input_series:"]
        for name, values in case.series:
            lines += [f"      - series: '{name}'", f"        values: '{values}'"]
        lines.append("    alert_rule_test:")
        for at, expected in case.checks:
            lines += [f"      - eval_time: {at}", f"        alertname: {case.alert}"]
            if not expected:
                lines.append("        exp_alerts: []")
                continue
            lines.append("        exp_alerts:")
            for fired in expected:
                lines += _expected(rule, fired, anchors)
        lines.append("")
    return "\n".join(lines)


def kinds_by_alert(text: str) -> dict[str, set[str]]:
    """Alert -> the kinds its test groups (and waivers) in the rendered file name, read from the comments."""
    found: dict[str, set[str]] = {}
    for alert, kind in re.findall(r"^  # (?:waiver: )?(\w+) \| (\w+):", text, re.MULTILINE):
        found.setdefault(alert, set()).add(kind)
    return found


