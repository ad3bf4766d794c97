"""Prometheus metrics built from :data:`telemetry.catalog.METRICS` on a private registry."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from templ_pipeline import __version__
from templ_pipeline.core.limits.cgroup import read_pids_peak
from templ_pipeline.core.limits.model import PIDS_CGROUP, Snapshot
from templ_pipeline.core.limits.procfs import parse_status, read_bytes
from templ_pipeline.telemetry import state
from templ_pipeline.telemetry.catalog import LIMIT_NAMES, METRICS, MetricSpec, normalize_label

__all__ = [
    "LimitsCollector",
    "TemplMetrics",
    "TemplRegistry",
    "count_threads",
    "get_metrics",
    "os_threads",
    "reset_metrics_for_tests",
]

_KIND_TO_CLASS = {"counter": Counter, "gauge": Gauge, "histogram": Histogram}

SnapshotSource = Callable[[], Snapshot | None]


def os_threads() -> int | None:
    """OS threads of this process: ``Threads:`` of /proc/self/status, None when it is unreadable."""
    return parse_status(read_bytes("/proc/self/status")).threads


def count_threads() -> int:
    """OS threads of this process (:func:`os_threads`), else ``threading.active_count()``."""
    threads = os_threads()
    return threading.active_count() if threads is None else threads


def thread_manager_snapshot() -> Snapshot | None:
    """The thread manager's limits snapshot (cached for its TTL, so a scrape costs at most one
    fresh read); None when the manager cannot be used, as telemetry works without it."""
    try:
        from templ_pipeline.core.thread_manager import get_thread_manager

        return get_thread_manager().snapshot()
    except Exception:
        return None


def _gauge_value(value: int | float | None, enforced: bool | None) -> float:
    """A limit or headroom as a sample: the number, +Inf when not enforced, NaN when unknown."""
    if value is not None:
        return float(value)
    return math.inf if enforced is False else math.nan


class RefusalCount:
    """Refused forks over every pids level this process has been in: a count that never goes down.

    The kernel's count of a level (pids.events ``max``) only rises while the cgroup lives,
    but the levels are those of the process's cgroup now: a process moved out of a tight
    cgroup (``templ stress``, a job step that moves its tasks) would see the sum drop back,
    and a query over the counter would take the drop for a restart and count the remaining
    levels' refusals again. So each level's last count is kept by its path, after the
    process has left it too; a level whose count went down is a new cgroup at the same path,
    and its predecessor's count is kept as retired.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()  # the scrape thread and a textfile or push collect at once
        self._levels: dict[str, int] = {}
        self._retired = 0

    def add(self, by_level: tuple[tuple[str, int], ...]) -> int | None:
        """Take this reading's per-level counts; the total, or None while no level was ever readable."""
        with self._lock:
            for path, count in by_level:
                last = self._levels.get(path)
                if last is not None and count < last:
                    self._retired += last
                self._levels[path] = count
            return self._retired + sum(self._levels.values()) if self._levels else None


class LimitsCollector:
    """The kernel limits of this process, read at each scrape from one limits snapshot.

    ``templ_thread_limit`` / ``templ_thread_headroom`` per limit: the number, +Inf when
    the limit is not enforced, NaN when unknown; names outside
    :data:`~telemetry.catalog.LIMIT_NAMES` become "other". They follow the host while the
    process lives (threads other jobs start, a cgroup's pids.max changed, the time after
    the last batch while ``--hold-metrics`` serves), not only the executor's own calls.
    ``templ_pids_cgroup_refused_forks_total`` is the ``max`` count of pids.events summed over
    every pids level this process has been seen in (:class:`RefusalCount`), which only the
    kernel raises, hence a counter. ``templ_pids_cgroup_peak_tasks`` is the pids.peak of the level
    whose pids.max the pids_cgroup limit reports. Unknown pids values have no sample.

    ``snapshot`` defaults to the thread manager's, cached for its TTL (0.5 s), so a scrape
    costs at most one fresh read (under 200 µs) and follows the process into another
    cgroup after ``reset_thread_manager()``.
    """

    def __init__(self, limit: MetricSpec, headroom: MetricSpec, refused: MetricSpec, peak: MetricSpec,
                 snapshot: SnapshotSource = thread_manager_snapshot) -> None:
        self._limit, self._headroom, self._refused, self._peak = limit, headroom, refused, peak
        self._snapshot = snapshot
        self._refusals = RefusalCount()

    def describe(self) -> list[Metric]:
        """The four families without samples: registering reads nothing."""
        return self._families(None)

    def collect(self) -> list[Metric]:
        return self._families(self._snapshot())

    def _families(self, snap: Snapshot | None) -> list[Metric]:
        limit = GaugeMetricFamily(self._limit.name, self._limit.help, labels=self._limit.labels)
        headroom = GaugeMetricFamily(self._headroom.name, self._headroom.help, labels=self._headroom.labels)
        refused = CounterMetricFamily(self._refused.client_name, self._refused.help)
        peak = GaugeMetricFamily(self._peak.name, self._peak.help)
        if snap is not None:
            for item in snap.limits:
                name = normalize_label(item.name, LIMIT_NAMES)
                limit.add_metric([name], _gauge_value(item.limit, item.enforced))
                headroom.add_metric([name], _gauge_value(item.headroom, item.enforced))
            if (count := self._refusals.add(snap.pids_refusals_by_level)) is not None:
                refused.add_metric([], count)
            if (tasks := read_pids_peak(snap.limit(PIDS_CGROUP).source)) is not None:
                peak.add_metric([], tasks)
        return [limit, headroom, refused, peak]


#: Metric families whose client objects add a ``<name>_created`` sample (the creation time).
_CREATED_TYPES = frozenset({"counter", "histogram", "summary"})


def _without_created(metrics: Iterable[Metric]) -> Iterator[Metric]:
    for metric in metrics:
        if metric.type in _CREATED_TYPES:
            created = metric.name + "_created"
            metric.samples = [sample for sample in metric.samples if sample.name != created]
        yield metric


class _RestrictedView:
    """A ``?name[]=`` restricted registry of :class:`TemplRegistry`, without ``_created`` samples too."""

    def __init__(self, restricted: Any) -> None:
        self._restricted = restricted

    def collect(self) -> Iterator[Metric]:
        return _without_created(self._restricted.collect())


class TemplRegistry(CollectorRegistry):
    """TEMPL's registry: its exposition has no ``<counter>_created`` / ``<histogram>_created`` series.

    Those series double the counter samples, and a textfile or a Pushgateway group would keep
    the creation time of a process long gone. prometheus-client's own switch
    (``disable_created_metrics()``, ``PROMETHEUS_DISABLE_CREATED_SERIES``) is one global for the
    process: set on import it would also change the metrics of an application that imports
    TEMPL as a library. The registry drops them from its own families instead (each collect
    builds fresh families, so nothing shared is changed).
    """

    def collect(self) -> Iterator[Metric]:
        return _without_created(super().collect())

    def restricted_registry(self, names: Iterable[str]) -> Any:
        return _RestrictedView(super().restricted_registry(names))


class TemplMetrics:
    """All TEMPL collectors, created by looping over the catalog.

    Collectors are reachable by their catalog short name (``m.fallbacks``,
    ``m.batch_duration``...) and by exposition name via :meth:`by_name`.
    """

    registry: CollectorRegistry
    # Typed attributes for editors; they are set dynamically from the catalog.
    threads_active: Gauge
    process_threads: Gauge
    thread_limit: LimitsCollector
    thread_headroom: LimitsCollector
    pids_refused_forks: LimitsCollector
    pids_peak_tasks: LimitsCollector
    workers_requested: Gauge
    workers_granted: Gauge
    worker_reductions: Counter
    fallbacks: Counter
    batches: Counter
    batch_duration: Histogram
    conformers_scored: Counter
    conformers_failed: Counter
    conformer_generations: Counter
    conformer_generations_in_progress: Gauge
    select_best_calls: Counter
    select_best_duration: Histogram
    pool_restarts: Counter
    batch_resubmissions: Counter
    campaign_queries: Counter
    campaign_in_flight: Gauge
    campaign_expected: Gauge
    campaign_skipped: Gauge
    campaign_query_duration: Histogram
    campaign_worker_replacements: Counter
    campaign_query_resubmissions: Counter
    campaign_shortfalls: Counter
    telemetry_degraded: Counter
    start_refusals: Counter
    run_info: Gauge
    run_start: Gauge
    push_interval: Gauge
    last_success: Gauge
    last_failure: Gauge
    build_info: Gauge

    def __init__(self, registry: CollectorRegistry | None = None, *, process_collectors: bool = True,
                 snapshot: SnapshotSource = thread_manager_snapshot) -> None:
        """``snapshot`` gives the limits the scrape-time limit metrics read (tests pass their own)."""
        self.registry = registry if registry is not None else TemplRegistry(auto_describe=True)
        if process_collectors:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
        self._by_name: dict[str, Any] = {}
        scraped = {spec.short: spec for spec in METRICS if spec.scraped}
        limits = LimitsCollector(scraped.pop("thread_limit"), scraped.pop("thread_headroom"),
                                 scraped.pop("pids_refused_forks"), scraped.pop("pids_peak_tasks"), snapshot=snapshot)
        if scraped:
            raise ValueError(f"no scrape-time collector reads {sorted(scraped)}")
        for spec in METRICS:
            collector = limits if spec.scraped else self._build(spec)
            setattr(self, spec.short, collector)
            self._by_name[spec.name] = collector
        self.registry.register(limits)
        self.threads_active.set_function(count_threads)
        self.process_threads.set_function(lambda: math.nan if (threads := os_threads()) is None else threads)
        self.build_info.labels(version=__version__).set(1)  # pyproject's version is read from there too

    def _build(self, spec: MetricSpec) -> Any:
        cls = _KIND_TO_CLASS[spec.kind]
        kwargs: dict[str, Any] = {"registry": self.registry}
        if spec.unit:
            kwargs["unit"] = spec.unit
        if spec.buckets is not None:
            kwargs["buckets"] = spec.buckets
        collector = cls(spec.client_name, spec.help, spec.labels, **kwargs)
        for combo in spec.initial_label_values():
            collector.labels(*combo)
        if spec.nan_until_set:
            collector.set(math.nan)
        return collector

    def by_name(self, name: str) -> Any:
        """Collector for a catalog (exposition) name such as ``templ_executor_fallbacks_total``."""
        return self._by_name[name]


def get_metrics() -> TemplMetrics:
    """The :class:`TemplMetrics` of the process's telemetry state (``telemetry.state``), made on first use."""
    current = state.current()
    metrics = current.metrics
    if metrics is None:
        with current.lock:
            if current.metrics is None:
                current.metrics = TemplMetrics()
            metrics = current.metrics
    return metrics


def reset_metrics_for_tests() -> TemplMetrics:
    """Give the telemetry state fresh metrics on a new registry and return them."""
    current = state.current()
    with current.lock:
        current.metrics = TemplMetrics()
        return current.metrics
