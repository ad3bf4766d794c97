"""Prometheus metrics built from :data:`telemetry.catalog.METRICS` on a private registry."""

from __future__ import annotations

import itertools
import math
import threading
from importlib import metadata
from typing import Any, Iterable, Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

from telemetry.catalog import LIMIT_NAMES, METRICS, OTHER, MetricSpec, normalize_label

__all__ = [
    "TemplMetrics",
    "count_threads",
    "get_metrics",
    "reset_metrics_for_tests",
    "update_thread_gauges",
]

_KIND_TO_CLASS = {"counter": Counter, "gauge": Gauge, "histogram": Histogram}


def count_threads() -> int:
    """OS threads of this process: ``Threads:`` from /proc/self/status, else ``threading.active_count()``."""
    try:
        with open("/proc/self/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"Threads:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return threading.active_count()


def _version() -> str:
    try:
        return metadata.version("templ-pipeline")
    except metadata.PackageNotFoundError:
        return "unknown"


class TemplMetrics:
    """All TEMPL collectors, created by looping over the catalog.

    Collectors are reachable by their catalog short name (``m.fallbacks``,
    ``m.batch_duration``...) and by exposition name via :meth:`by_name`.
    """

    registry: CollectorRegistry
    # Typed attributes for editors; they are set dynamically from the catalog.
    threads_active: Gauge
    thread_limit: Gauge
    thread_headroom: Gauge
    workers_requested: Gauge
    workers_granted: Gauge
    worker_reductions: Counter
    fallbacks: Counter
    batches: Counter
    batch_duration: Histogram
    conformers_scored: Counter
    conformers_failed: Counter
    select_best_calls: Counter
    select_best_duration: Histogram
    pool_restarts: Counter
    batch_resubmissions: Counter
    telemetry_degraded: Counter
    build_info: Gauge

    def __init__(self, registry: CollectorRegistry | None = None, *, process_collectors: bool = True) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        if process_collectors:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
        self._by_name: dict[str, Any] = {}
        for spec in METRICS:
            collector = self._build(spec)
            setattr(self, spec.short, collector)
            self._by_name[spec.name] = collector
        self.threads_active.set_function(count_threads)
        self.build_info.labels(version=_version()).set(1)

    def _build(self, spec: MetricSpec) -> Any:
        cls = _KIND_TO_CLASS[spec.kind]
        kwargs: dict[str, Any] = {"registry": self.registry}
        if spec.unit:
            kwargs["unit"] = spec.unit
        if spec.buckets is not None:
            kwargs["buckets"] = spec.buckets
        collector = cls(spec.client_name, spec.help, spec.labels, **kwargs)
        if spec.initialize and spec.labels:
            # every declared value except the catch-all, which appears only when used
            value_sets = [tuple(v for v in spec.label_values[label] if v != OTHER) for label in spec.labels]
            for combo in itertools.product(*value_sets):
                collector.labels(*combo)
        return collector

    def by_name(self, name: str) -> Any:
        """Collector for a catalog (exposition) name such as ``templ_executor_fallbacks_total``."""
        return self._by_name[name]


_lock = threading.Lock()
_metrics: TemplMetrics | None = None


def get_metrics() -> TemplMetrics:
    """The process-wide :class:`TemplMetrics` (created on first use)."""
    global _metrics
    m = _metrics
    if m is None:
        with _lock:
            if _metrics is None:
                _metrics = TemplMetrics()
            m = _metrics
    return m


def reset_metrics_for_tests() -> TemplMetrics:
    """Replace the singleton with a fresh instance on a new registry and return it."""
    global _metrics
    with _lock:
        _metrics = TemplMetrics()
        return _metrics


class _Limit(Protocol):
    name: str
    limit: int | float | None
    headroom: int | float | None


class _Snapshot(Protocol):
    threads: int
    limits: Iterable[_Limit]


def _gauge_value(value: int | float | None, enforced: bool | None) -> float:
    if value is not None:
        return float(value)
    return math.inf if enforced is False else math.nan


def update_thread_gauges(snapshot: _Snapshot, metrics: TemplMetrics | None = None) -> None:
    """Set ``templ_thread_limit``/``templ_thread_headroom`` from a thread-limit snapshot.

    A ``None`` limit/headroom is exported as +Inf when the item says
    ``enforced is False`` (unlimited / not enforced) and as NaN otherwise
    (unknown): the series exists but comparisons such as ``headroom < 16`` are
    false. ``templ_threads_active`` is not taken from the snapshot: it is read
    live from /proc at scrape time, so ``snapshot.threads`` is ignored. Limit
    names outside :data:`~telemetry.catalog.LIMIT_NAMES` become "other".
    """
    m = metrics or get_metrics()
    for item in snapshot.limits:
        name = normalize_label(item.name, LIMIT_NAMES)
        enforced = getattr(item, "enforced", None)
        m.thread_limit.labels(limit=name).set(_gauge_value(item.limit, enforced))
        m.thread_headroom.labels(limit=name).set(_gauge_value(item.headroom, enforced))

