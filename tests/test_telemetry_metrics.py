"""Prometheus metrics: exposition, values after events, thread gauges, exemplars."""

from __future__ import annotations

import math
import subprocess
import sys
import threading

import pytest
from cgroup_fixtures import child_pids_cgroup  # noqa: F401 - the fixture
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from recorder_events import batch_done, worker_span

from templ_pipeline import telemetry
from templ_pipeline.core.events import (
    ExecutorKind,
    Fallback,
    FallbackCause,
    FallbackReason,
    PoolRestarted,
    ReductionReason,
    SelectBestFinished,
    SelectBestStarted,
    TaskType,
    WorkersGranted,
    WorkersReduced,
)
from templ_pipeline.core.limits.model import Limit, Snapshot, StackInfo
from templ_pipeline.telemetry import catalog
from templ_pipeline.telemetry.metrics import TemplMetrics, count_threads
from templ_pipeline.telemetry.recorder import Recorder

pytestmark = pytest.mark.fast

PROCESS, THREAD, SEQUENTIAL = ExecutorKind.PROCESS, ExecutorKind.THREAD, ExecutorKind.SEQUENTIAL


@pytest.fixture
def tel(tel_json):
    return tel_json


def test_exposition_contains_every_catalog_metric(tel):
    text = generate_latest(tel.registry).decode()
    for spec in catalog.METRICS:
        assert f"# TYPE {spec.name} {spec.kind}" in text, spec.name
    # process and platform collectors live on the same registry
    assert "process_cpu_seconds_total" in text
    assert "python_info" in text
    build = [s for fam in tel.registry.collect() for s in fam.samples if s.name == "templ_build_info"]
    assert len(build) == 1 and build[0].value == 1.0 and build[0].labels["version"]


def test_short_names_resolve_to_catalog_collectors(tel):
    for spec in catalog.METRICS:
        assert getattr(tel.metrics, spec.short) is tel.metrics.by_name(spec.name)


def test_singleton_and_reset():
    a = telemetry.get_metrics()
    assert telemetry.get_metrics() is a
    b = telemetry.testing.reset_metrics()
    assert b is not a and telemetry.get_metrics() is b and b.registry is not a.registry


def test_small_label_sets_initialized_to_zero(tel):
    r = tel.registry
    for kind in catalog.EXECUTOR_KINDS:
        assert r.get_sample_value("templ_select_best_batches_total", {"executor_kind": kind}) == 0.0
    for reason in catalog.FAILURE_REASONS:
        assert r.get_sample_value("templ_conformers_failed_total", {"reason": reason}) == 0.0
    assert r.get_sample_value("templ_select_best_calls_total", {"outcome": "error"}) == 0.0
    # the catch-all only appears once used
    assert r.get_sample_value("templ_select_best_batches_total", {"executor_kind": "other"}) is None


def test_sample_values_after_events(tel):
    r = tel.registry
    rec = Recorder()
    rec(WorkersGranted(TaskType.SCORING, 8, 8))
    rec(SelectBestStarted(30, 8))
    rec(WorkersReduced(TaskType.CONFORMERS, 8, 3, ReductionReason.PIDS_CGROUP, "pids.max=40", headroom=3))
    rec(batch_done(0, 10, failed=1))
    rec(Fallback(PROCESS, THREAD, FallbackReason.PROCESS_START_FAILED, FallbackCause.RLIMIT_NPROC))
    rec(batch_done(1, 10, THREAD, failed=1))
    rec(batch_done(2, 10, failed=1))
    rec(SelectBestFinished(30, 8, 3, THREAD, 27, {"no_coordinates": 2, "alignment_failed": 1}, 0.2))
    rec(PoolRestarted(PROCESS, FallbackReason.BROKEN_POOL, "worker died"))

    assert r.get_sample_value("templ_executor_workers_requested", {"task_type": "scoring"}) == 8
    assert r.get_sample_value("templ_executor_workers_requested", {"task_type": "conformers"}) == 8
    assert r.get_sample_value("templ_executor_workers_granted", {"task_type": "conformers"}) == 3
    assert r.get_sample_value("templ_executor_worker_reductions_total",
                              {"task_type": "conformers", "reason": "pids_cgroup"}) == 1
    assert r.get_sample_value("templ_executor_fallbacks_total", {
        "from_kind": "process", "to_kind": "thread", "reason": "process_start_failed", "cause": "rlimit_nproc"}) == 1
    # each batch is labelled with the kind that ran it
    assert r.get_sample_value("templ_select_best_batches_total", {"executor_kind": "process"}) == 2
    assert r.get_sample_value("templ_select_best_batches_total", {"executor_kind": "thread"}) == 1
    assert r.get_sample_value("templ_select_best_batch_duration_seconds_count", {"executor_kind": "process"}) == 2
    assert r.get_sample_value("templ_conformers_scored_total") == 27
    assert r.get_sample_value("templ_conformers_failed_total", {"reason": "no_coordinates"}) == 2
    assert r.get_sample_value("templ_conformers_failed_total", {"reason": "alignment_failed"}) == 1
    assert r.get_sample_value("templ_select_best_calls_total", {"outcome": "ok"}) == 1
    assert r.get_sample_value("templ_select_best_duration_seconds_count") == 1
    assert r.get_sample_value("templ_executor_pool_restarts_total", {"executor_kind": "process"}) == 1


def test_error_outcome_counted(tel):
    rec = Recorder()
    rec(SelectBestStarted(5, 1))
    rec(batch_done(0, 5, SEQUENTIAL))
    rec(SelectBestFinished(5, 1, 1, SEQUENTIAL, 5, {}, 0.1, ValueError("boom")))
    r = tel.registry
    assert r.get_sample_value("templ_select_best_calls_total", {"outcome": "error"}) == 1
    assert r.get_sample_value("templ_select_best_calls_total", {"outcome": "ok"}) == 0
    assert r.get_sample_value("templ_select_best_batches_total", {"executor_kind": "sequential"}) == 1


def test_unknown_label_values_are_folded(tel):
    r = tel.registry
    rec = Recorder()
    rec(Fallback("gpu", "thread", "cosmic_ray", "solar_flare"))  # type: ignore[arg-type]
    rec(WorkersReduced("mystery_task", 4, 1, "moon_phase"))  # type: ignore[arg-type]
    rec(SelectBestStarted(3, 1))
    rec(SelectBestFinished(3, 1, 1, None, 0, {"not_a_reason": 3}, 0.01))
    assert r.get_sample_value("templ_executor_fallbacks_total", {
        "from_kind": "other", "to_kind": "thread", "reason": "other", "cause": "unknown"}) == 1
    assert r.get_sample_value("templ_executor_worker_reductions_total",
                              {"task_type": "other", "reason": "other"}) == 1
    assert r.get_sample_value("templ_conformers_failed_total", {"reason": "other"}) == 3
    # the raw value survives in the log line
    assert '"reason_raw": "cosmic_ray"' in tel.stream.getvalue()
    assert '"cause_raw": "solar_flare"' in tel.stream.getvalue()


def _limit(name: str, limit: int | None, headroom: int | None, enforced: bool | None) -> Limit:
    used = None if limit is None or headroom is None else limit - headroom
    return Limit(name, limit, used, headroom, enforced, source="test")


def _snapshot(limits: tuple[Limit, ...], *by_level: tuple[str, int]) -> Snapshot:
    refusals = sum(count for _path, count in by_level) if by_level else None
    return Snapshot(0.0, 5, 1000, limits, StackInfo(8 << 20, 8 << 20, -1, None, None), refusals, by_level)


def test_limits_are_read_at_each_scrape_and_thread_counts_live():
    current = {"snapshot": _snapshot((
        _limit("pids_cgroup", 64, 10, True),
        _limit("rlimit_nproc", None, None, False),  # unlimited
        _limit("threads_max", None, None, None),  # unknown
        _limit("pid_max", 4194304, None, False),  # not enforced: the number, but no headroom
        _limit("stack_memory", None, None, None),
    ), ("/job/pids.events", 3))}
    metrics = TemplMetrics(CollectorRegistry(), process_collectors=False, snapshot=lambda: current["snapshot"])
    r = metrics.registry
    assert r.get_sample_value("templ_thread_limit", {"limit": "pids_cgroup"}) == 64
    assert r.get_sample_value("templ_thread_headroom", {"limit": "pids_cgroup"}) == 10
    assert r.get_sample_value("templ_thread_limit", {"limit": "rlimit_nproc"}) == math.inf
    assert r.get_sample_value("templ_thread_headroom", {"limit": "rlimit_nproc"}) == math.inf
    assert math.isnan(r.get_sample_value("templ_thread_limit", {"limit": "threads_max"}))
    assert math.isnan(r.get_sample_value("templ_thread_headroom", {"limit": "threads_max"}))
    assert r.get_sample_value("templ_thread_limit", {"limit": "pid_max"}) == 4194304
    assert r.get_sample_value("templ_thread_headroom", {"limit": "pid_max"}) == math.inf  # not enforced
    assert math.isnan(r.get_sample_value("templ_thread_headroom", {"limit": "stack_memory"}))  # unknown
    assert r.get_sample_value("templ_pids_cgroup_refused_forks_total") == 3

    # the next scrape reads the next snapshot: no event of the executor is needed
    current["snapshot"] = _snapshot((_limit("pids_cgroup", 64, 2, True), _limit("bogus_limit", 1, 1, True)),
                                    ("/job/pids.events", 3), ("/job/tight/pids.events", 5))
    assert r.get_sample_value("templ_thread_headroom", {"limit": "pids_cgroup"}) == 2
    assert r.get_sample_value("templ_thread_limit", {"limit": "other"}) == 1
    assert r.get_sample_value("templ_thread_headroom", {"limit": "rlimit_nproc"}) is None
    assert r.get_sample_value("templ_pids_cgroup_refused_forks_total") == 8  # moved into a child cgroup
    # back out of the child: its refusals stay counted, so the counter never goes down
    current["snapshot"] = _snapshot((_limit("pids_cgroup", 64, 2, True),), ("/job/pids.events", 3))
    assert r.get_sample_value("templ_pids_cgroup_refused_forks_total") == 8
    # a new cgroup at the child's path starts at 0 again: its predecessor's count is kept
    current["snapshot"] = _snapshot((_limit("pids_cgroup", 64, 2, True),), ("/job/pids.events", 3),
                                    ("/job/tight/pids.events", 1))
    assert r.get_sample_value("templ_pids_cgroup_refused_forks_total") == 9
    current["snapshot"] = None  # the thread manager cannot be used: no limit samples, no error
    assert r.get_sample_value("templ_thread_headroom", {"limit": "pids_cgroup"}) is None


_THREADS_SCRIPT = """
import threading
from prometheus_client import CollectorRegistry
from templ_pipeline.core.thread_manager import ThreadResourceManager
from templ_pipeline.telemetry.metrics import TemplMetrics

manager = ThreadResourceManager(cache_ttl=0.0)
registry = TemplMetrics(CollectorRegistry(), process_collectors=False, snapshot=manager.snapshot).registry
def headroom():
    return registry.get_sample_value("templ_thread_headroom", {"limit": "pids_cgroup"})
before = headroom()
stop = threading.Event()
threads = [threading.Thread(target=stop.wait) for _ in range(50)]
for t in threads:
    t.start()
during = headroom()
stop.set()
for t in threads:
    t.join(60)
print(before, during)
"""


def test_headroom_follows_threads_started_without_any_executor_call(child_pids_cgroup):
    """Real kernel, a pids cgroup of one process: 50 threads it starts show in the next collection,
    with no executor call in between."""
    child_pids_cgroup.set_max(1000)
    done = subprocess.run(child_pids_cgroup.wrap([sys.executable, "-c", _THREADS_SCRIPT]), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    before, during = map(float, done.stdout.split())
    assert before - during == 50, (before, during)


def test_live_thread_count(tel):
    r = tel.registry
    before = r.get_sample_value("templ_threads_active")
    assert before == count_threads() >= 1
    assert r.get_sample_value("process_threads") == before  # the standard name, read the same way
    stop = threading.Event()
    t = threading.Thread(target=stop.wait)
    t.start()
    try:
        assert r.get_sample_value("templ_threads_active") == before + 1
        assert r.get_sample_value("process_threads") == before + 1
    finally:
        stop.set()
        t.join(60)


def test_openmetrics_exemplar_carries_batch_trace_id(tel):
    rec = Recorder()
    rec(SelectBestStarted(10, 2))
    rec(batch_done(0, 10, PROCESS, span=worker_span()))
    rec(SelectBestFinished(10, 2, 2, PROCESS, 10, {}, 0.05))
    spans = {s.name: s for s in tel.exporter.get_finished_spans()}
    batch_ctx = spans["select_best.batch"].context
    trace_id, span_id = format(batch_ctx.trace_id, "032x"), format(batch_ctx.span_id, "016x")

    text = generate_openmetrics(tel.registry).decode()
    assert trace_id in text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    hist = families["templ_select_best_batch_duration_seconds"]
    exemplars = [s.exemplar for s in hist.samples if s.exemplar is not None]
    assert exemplars, "no exemplar on the batch histogram"
    assert exemplars[0].labels == {"trace_id": trace_id, "span_id": span_id}
    assert 0 <= exemplars[0].value < 10
    call = families["templ_select_best_duration_seconds"]
    call_ex = [s.exemplar for s in call.samples if s.exemplar is not None]
    assert call_ex[0].labels["trace_id"] == trace_id
    assert call_ex[0].labels["span_id"] == format(spans["select_best"].context.span_id, "016x")


def test_disabled_skips_per_batch_work_but_keeps_safety_events(tel):
    r = tel.registry
    with telemetry.disabled():
        assert not telemetry.state.is_enabled()
        rec = Recorder()
        rec(SelectBestStarted(10, 2))
        rec(Fallback(PROCESS, SEQUENTIAL, FallbackReason.BROKEN_POOL))
        rec(batch_done(0, 10, SEQUENTIAL, failed=1, span=worker_span()))
        rec(SelectBestFinished(10, 2, 2, SEQUENTIAL, 9, {"no_coordinates": 1}, 0.05))
    assert telemetry.state.is_enabled()
    assert r.get_sample_value("templ_select_best_batches_total", {"executor_kind": "sequential"}) == 0
    assert r.get_sample_value("templ_conformers_scored_total") == 0
    assert r.get_sample_value("templ_executor_fallbacks_total", {
        "from_kind": "process", "to_kind": "sequential", "reason": "broken_pool", "cause": "none"}) == 1
    assert tel.exporter.get_finished_spans() == ()
    assert "select_best.batch_done" not in tel.stream.getvalue()
    assert "executor.fallback" in tel.stream.getvalue()


def test_a_refused_start_counts_by_kind_and_cause_from_zero(tel):
    r = tel.registry
    kinds, causes = catalog.START_KINDS, catalog.METRICS_BY_SHORT["start_refusals"].label_values["cause"]
    assert all(r.get_sample_value("templ_start_refusals_total", {"kind": k, "cause": c}) == 0
               for k in kinds for c in causes)  # every series is there before the first refusal
    rec = Recorder()
    rec(Fallback(THREAD, THREAD, FallbackReason.THREAD_START_FAILED, FallbackCause.PIDS_CGROUP))
    rec(Fallback(PROCESS, SEQUENTIAL, FallbackReason.PROCESS_START_FAILED, FallbackCause.RLIMIT_NPROC))
    rec(Fallback(PROCESS, SEQUENTIAL, FallbackReason.BROKEN_POOL))  # not a refused start
    counts = {(k, c): r.get_sample_value("templ_start_refusals_total", {"kind": k, "cause": c})
              for k in kinds for c in causes}
    assert {key: n for key, n in counts.items() if n} == {("thread", "pids_cgroup"): 1, ("process", "rlimit_nproc"): 1}
    degraded = catalog.METRICS_BY_SHORT["telemetry_degraded"]
    assert r.get_sample_value("templ_telemetry_degraded_total", {"component": "pushgateway",
                                                                 "reason": "push_failed"}) == 0
    assert len(degraded.initial_label_values()) == len(catalog.DEGRADED_COMPONENTS) * len(catalog.DEGRADED_REASONS)
