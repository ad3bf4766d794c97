"""Names the dashboard and the alert rules take from :mod:`telemetry.catalog`.

A metric is named by its short name (its attribute on ``TemplMetrics``) and gets its
exposition name from the catalog. A label value, log event or span attribute that a text
or a query names one by one is looked up in the catalog's bounded sets when the generator
runs: a value the catalog no longer has stops ``make dashboards`` instead of leaving a
query that matches nothing or a runbook about a reason that cannot occur.
"""

from __future__ import annotations

from collections.abc import Iterable

from templ_pipeline.telemetry import catalog

JOB = "templ"
"""The scrape job (prometheus.yml) that the alert rules select and the dashboard opens on."""


def metric(short: str) -> str:
    """Exposition name of the catalog metric ``short`` (``"thread_headroom"`` -> ``templ_thread_headroom``)."""
    return catalog.METRICS_BY_SHORT[short].name


def value(name: str, allowed: Iterable[str]) -> str:
    """``name``, once it is checked to be one of ``allowed`` (a bounded label value set of the catalog)."""
    allowed = tuple(allowed)
    if name not in allowed:
        raise ValueError(f"{name!r} is not one of {allowed}")
    return name


def event(name: str) -> str:
    """``name``, once it is checked to be a log event of the catalog."""
    return value(name, catalog.LOG_EVENTS_BY_NAME)


def listing(values: Iterable[str], sep: str = ", ") -> str:
    """Values for a text: ``"a, b, c"``."""
    return sep.join(values)


SEQUENTIAL = value("sequential", catalog.EXECUTOR_KINDS)
NO_CAUSE = value("none", catalog.FALLBACK_CAUSES)
#: Reduction reasons that say the thread manager could not answer.
MANAGER_REASONS: tuple[str, ...] = tuple(value(r, catalog.REDUCTION_REASONS)
                                         for r in ("manager_unavailable", "manager_failed"))
#: Reduction reasons that are neither a kernel limit nor a manager that could not answer, and what they mean.
OTHER_REDUCTIONS: dict[str, str] = {
    reason: meaning for reason, meaning in (
        ("reserved_by_others", "other jobs sharing the limit had reserved its headroom (the node-local ledger)"),
        ("seccomp", "a seccomp profile lets no thread start"),
        ("cpu_limit", "fewer CPUs than workers for CPU-bound work (affinity or the cgroup CPU quota)"),
        ("small_work", "too little work to repay starting the workers"),
        ("pool_starting", "the pool was starting in the background, so the call ran in the caller"),
    ) if reason in catalog.REDUCTION_REASONS
}
FAILED = value("failed", catalog.QUERY_STATUSES)
OK = value("ok", catalog.QUERY_STATUSES)
SCREENING = value("screening", catalog.TASK_TYPES)
