"""PromQL fragments shared by the dashboard panels: the selector, exact event counts, rates, shares, joins.

Event counters are counted with :func:`events`, not ``increase()``/``rate()``: a labelled
counter's series is born at its first value (1, one scrape after the event), and
``increase()`` never counts that first sample and extrapolates the rest. The difference of
a series with itself one interval earlier, taken over consecutive intervals, telescopes to
the exact number of events; a negative difference is a counter reset (a new process on the
same instance), after which the new value is the count; a series with no sample an interval
earlier is new and counts from 0.
"""

from __future__ import annotations

#: Every dashboard query is scoped to the chosen job and instance(s); host and job_id pick the instances.
SELECTOR = 'job="$job", instance=~"$instance"'
#: The run identity of each scraped process (one series per run: run_id, job_id, host).
RUN_INFO = "templ_run_info"
#: The labels :func:`with_run` adds to a series.
RUN_LABELS = "run_id, job_id, host"


def series(metric: str, *matchers: str) -> str:
    """``metric{job="$job", instance=~"$instance", <matchers>}``."""
    return f"{metric}{{{', '.join((SELECTOR, *matchers))}}}"


def rate(metric: str, *matchers: str) -> str:
    """Per-second rate of a counter over Grafana's ``$__rate_interval``."""
    return f"rate({series(metric, *matchers)}[$__rate_interval])"


def sum_rate(metric: str, by: str, *matchers: str) -> str:
    """``sum by (<by>) (rate(...))``: the counter's rate per label set of interest."""
    return f"sum by ({by}) ({rate(metric, *matchers)})"


def per_series_events(selector: str, interval: str = "$__interval") -> str:
    """Events of each series in the ``interval`` ending now: exact, a birth at 1 and a reset included."""
    return f"({selector} - {selector} offset {interval}) >= 0 or {selector}"


def events(metric: str, by: str, *matchers: str, hide_zero: bool = True) -> str:
    """Events per ``$__interval`` of a counter, summed ``by`` labels: one bar per interval.

    With ``hide_zero`` intervals without an event return no sample, so a zero-initialised
    label set that never counted leaves no series (and no legend entry) at all; the sum of
    the bars is the same.
    """
    expr = f"sum by ({by}) ({per_series_events(series(metric, *matchers))})"
    return f"{expr} > 0" if hide_zero else expr


def events_total(metric: str, by: str, *matchers: str) -> str:
    """Events of a counter over the dashboard range, exact: the bars of :func:`events` summed by a subquery.

    Unlike an instant ``c - c offset $__range`` it keeps runs that ended (went stale) inside
    the range and counts across counter resets.
    """
    bars = f"sum by ({by}) ({per_series_events(series(metric, *matchers))})"
    return f"sum by ({by}) (sum_over_time(({bars})[$__range:$__interval]))"


def finite(expr: str) -> str:
    """Drop NaN (unknown) and +/-Inf (not enforced) samples: comparisons with NaN are false."""
    return f"{expr} > -Inf < +Inf"


def headroom_share(headroom: str, limit: str) -> str:
    """Headroom as a share of its limit, per limit: only limits that are known, enforced and above 0."""
    return f"({finite(headroom)})\n/\n({limit} > 0 < +Inf)"


def quantile(q: float, histogram: str, by: str = "instance", matchers: tuple[str, ...] = ()) -> str:
    """``histogram_quantile`` of a classic histogram, per ``by``."""
    return f"histogram_quantile({q}, sum by ({by}, le) ({rate(histogram + '_bucket', *matchers)}))"


def with_run(expr: str, run_info: str | None = None) -> str:
    """``expr`` with the ``run_id``, ``job_id`` and ``host`` of the run behind each series.

    ``expr`` must keep the ``job`` and ``instance`` labels. The join is made where the
    instance has exactly one run at that moment (a scraped process); elsewhere, on a
    Pushgateway whose instance holds several jobs of a host or before a run has published its
    info, the series is kept as it is (pushed series carry ``job_id`` already) rather than
    lost or duplicated.
    """
    info = run_info or series(RUN_INFO)
    one_run = f"({info} and on (job, instance) (count by (job, instance) ({info}) == 1))"
    joined = f"({expr})\n* on (job, instance) group_left ({RUN_LABELS})\n{one_run}"
    return f"{joined}\nor\n(({expr}) unless on (job, instance) {one_run})"
