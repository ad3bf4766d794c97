"""PromQL shapes of the alert rules that a 10 s batch job needs, built once.

A 10 s job is scraped once or twice, its counters are born at 1 (the first scrape comes
after the event) and its series go stale when it ends, while rules run every 15 s. An
instant selector misses such a job and ``increase()`` cannot count a series' first sample,
so every shape here reads a range: the job stays in it for the window after its last
sample, and the alert clears at the first evaluation after that.
"""

from __future__ import annotations

from templ_pipeline.dashboards.names import JOB


def window(minutes: int) -> str:
    """A range or offset: ``5`` -> ``5m``."""
    return f"{minutes}m"


def events(counter: str, minutes: int) -> str:
    """Per series: how much ``counter`` rose within the window, counting a series born in it from 0.

    A series with no sample in the window before this one (``count_over_time(...
    offset W)`` is empty) was born in the window, and its largest value is all it rose:
    a labelled counter's first event creates it at 1, which ``increase()`` never counts.
    Any other series has ``increase()``; the born branch comes first because ``or``
    keeps the left side, and a born series with two samples has an increase of 0.
    Range functions keep a job that ended (its series stale) for the window.
    """
    w = window(minutes)
    return (f"(\n  max_over_time({counter}[{w}])\n  unless count_over_time({counter}[{w}] offset {w})\n)\n"
            f"or\nincrease({counter}[{w}])")


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
