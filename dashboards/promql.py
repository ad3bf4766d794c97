"""PromQL fragments shared by the dashboard panels: the job/instance selector and rates."""

from __future__ import annotations

#: Every dashboard query is scoped to the chosen job and instance(s).
SELECTOR = 'job="$job", instance=~"$instance"'


def series(metric: str, *matchers: str) -> str:
    """``metric{job="$job", instance=~"$instance", <matchers>}``."""
    return f"{metric}{{{', '.join((SELECTOR, *matchers))}}}"


def rate(metric: str, *matchers: str) -> str:
    """Per-second rate of a counter over Grafana's ``$__rate_interval``."""
    return f"rate({series(metric, *matchers)}[$__rate_interval])"


def sum_rate(metric: str, by: str, *matchers: str) -> str:
    """``sum by (<by>) (rate(...))``: the counter's rate per label set of interest."""
    return f"sum by ({by}) ({rate(metric, *matchers)})"


def finite(expr: str) -> str:
    """Drop NaN (unknown) and +/-Inf (not enforced) samples: comparisons with NaN are false."""
    return f"{expr} > -Inf < +Inf"


def quantile(q: float, histogram: str, by: str = "instance", matchers: tuple[str, ...] = ()) -> str:
    """``histogram_quantile`` of a classic histogram, per ``by``."""
    return f"histogram_quantile({q}, sum by ({by}, le) ({rate(histogram + '_bucket', *matchers)}))"
