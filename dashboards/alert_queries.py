"""PromQL shapes of the alert rules that a 10 s batch job needs, built once.

A 10 s job is scraped once or twice, its counters are born at 1 (the first scrape comes
after the event) and its series go stale when it ends, while rules run every 15 s. An
instant selector misses such a job and ``increase()`` cannot count a series' first sample,
so every shape here reads a range: the job stays in it for the window after its last
sample, and the alert clears at the first evaluation after that. Whether a series counts
from 0 is decided by its run's start time, not by the series' own history.
"""

from __future__ import annotations

from templ_pipeline.dashboards.names import JOB, metric


def window(minutes: int) -> str:
    """A range or offset: ``5`` -> ``5m``."""
    return f"{minutes}m"


def run_started(minutes: int) -> str:
    """The runs (``job``, ``instance``, ``job_id``) that started within the window, by their own start time.

    ``templ_run_start_time_seconds`` travels with the run's other series (scrape, textfile,
    push), so a counter seen for the first time because Prometheus restarted, a scrape gap
    outlasted the window or a Pushgateway group pushed long ago was first scraped, is not
    mistaken for one born in the window.
    """
    return (f'max_over_time({metric("run_start")}{{job="{JOB}"}}[{window(minutes)}])'
            f" > time() - {minutes * 60}")


def events(counter: str, minutes: int) -> str:
    """Per series: how much ``counter`` rose within the window, counting a run that started in it from 0.

    A series of a run that started within the window (:func:`run_started`) rose by its last
    value in the window: a labelled counter's first event creates it at 1, which
    ``increase()`` never counts. Any other series has ``increase()``, which needs two samples
    and so stays silent for old counters seen anew (after a Prometheus restart, a scrape gap,
    a Pushgateway group scraped long after its push). The born branch comes first because
    ``or`` keeps the left side. Counters of library users, whose process publishes no
    ``templ_run_start_time_seconds``, always take ``increase()``: their series are
    zero-initialised from process start, so two samples suffice. Range functions keep a job
    that ended (its series stale) for the window.
    """
    w = window(minutes)
    return (f"(\n  last_over_time({counter}[{w}])\n  and on (job, instance, job_id)\n"
            f"  ({run_started(minutes)})\n)\nor\nincrease({counter}[{w}])")


def indent(text: str, spaces: int = 2) -> str:
    """``text`` with every line indented, for nesting one shape in another."""
    return "\n".join(" " * spaces + line for line in text.splitlines())


def total_events(counter: str, by: str, minutes: int) -> str:
    """``sum by (by)`` of :func:`events`: the events of the window per alert."""
    return f"sum by ({by}) (\n{indent(events(counter, minutes))}\n)"


def rose(counter: str, by: str, minutes: int) -> str:
    """PromQL: ``counter`` rose within the window (a series born in it above 0 included), per ``by``."""
    return total_events(counter, by, minutes) + " > 0\n"


def push_time(metric: str = "push_time_seconds") -> str:
    """The Pushgateway's push time of a TEMPL group (``job`` and the grouping key's ``instance``, ``job_id``)."""
    return f'{metric}{{job="{JOB}"}}'


def stale_pushes(minutes: int) -> str:
    """The groups whose last push is older than ``minutes``: their gauges no longer count."""
    return f"{push_time()} < time() - {minutes * 60}"


def unless_stale_push(expr: str, minutes: int) -> str:
    """``expr`` without the series of pushed groups older than ``minutes`` (scraped series have no push time)."""
    return f"(\n{indent(expr)}\n)\nunless on (job, instance, job_id)\n  {stale_pushes(minutes)}"
