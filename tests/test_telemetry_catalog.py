"""The telemetry catalog is well-formed: Prometheus naming, bounded labels, documented specs."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from telemetry import catalog as c

SNAKE = re.compile(r"^[a-z][a-z0-9_]*[a-z0-9]$")
CONTRACT_METRICS = {
    "templ_threads_active": "gauge",
    "templ_thread_limit": "gauge",
    "templ_thread_headroom": "gauge",
    "process_threads": "gauge",
    "templ_pids_cgroup_refused_forks_total": "counter",
    "templ_pids_cgroup_peak_tasks": "gauge",
    "templ_executor_workers_requested": "gauge",
    "templ_executor_workers_granted": "gauge",
    "templ_executor_worker_reductions_total": "counter",
    "templ_executor_fallbacks_total": "counter",
    "templ_select_best_batches_total": "counter",
    "templ_select_best_batch_duration_seconds": "histogram",
    "templ_conformers_scored_total": "counter",
    "templ_conformers_failed_total": "counter",
    "templ_select_best_calls_total": "counter",
    "templ_select_best_duration_seconds": "histogram",
    "templ_executor_pool_restarts_total": "counter",
    "templ_executor_batch_resubmissions_total": "counter",
    "templ_telemetry_degraded_total": "counter",
    "templ_build_info": "gauge",
}
CONTRACT_SHORTS = {
    "threads_active", "process_threads", "thread_limit", "thread_headroom", "pids_refused_forks", "pids_peak_tasks",
    "workers_requested", "workers_granted",
    "worker_reductions", "fallbacks", "batches", "batch_duration", "conformers_scored", "conformers_failed",
    "select_best_calls", "select_best_duration", "pool_restarts", "batch_resubmissions", "telemetry_degraded",
    "build_info",
}


def test_contract_metrics_present_with_kinds():
    assert {m.name: m.kind for m in c.METRICS} == CONTRACT_METRICS
    assert {m.short for m in c.METRICS} == CONTRACT_SHORTS
    assert len({m.short for m in c.METRICS}) == len(c.METRICS)


def test_metric_names_follow_prometheus_conventions():
    for m in c.METRICS:
        assert m.name.startswith("templ_") or m.name in c.STANDARD_NAMES, m.name
        assert SNAKE.match(m.name), m.name
        assert m.help.strip(), m.name
        if m.kind == "counter":
            assert m.name.endswith("_total"), m.name
            assert m.client_name + "_total" == m.name
        else:
            assert not m.name.endswith("_total"), m.name
            assert m.client_name == m.name
        if "duration" in m.name or m.kind == "histogram":
            assert m.name.endswith("_seconds") and m.unit == "seconds", m.name
        if m.unit:
            base = m.name[: -len("_total")] if m.kind == "counter" else m.name
            assert base.endswith("_" + m.unit), m.name
        if m.kind == "histogram":
            assert m.buckets and list(m.buckets) == sorted(m.buckets), m.name
        else:
            assert m.buckets is None


def test_batch_buckets_cover_expected_batch_times():
    buckets = c.METRICS_BY_SHORT["batch_duration"].buckets
    # 5 conformers x 2 ms .. 50 conformers x 10 ms, with headroom either side
    assert buckets[0] <= 0.005 and buckets[-1] >= 10.0
    assert sum(1 for b in buckets if 0.01 <= b <= 0.5) >= 4


def test_labels_are_snake_case_and_bounded():
    for m in c.METRICS:
        for label in m.labels:
            assert SNAKE.match(label) and not label.startswith("__") and label not in ("le", "quantile"), label
            if label in c.FREE_LABELS:
                assert label not in m.label_values
                continue
            values = m.label_values[label]
            assert values and len(values) == len(set(values)), (m.name, label)
            assert c.OTHER in values or c.UNKNOWN in values, (m.name, label)
            assert all(SNAKE.match(v) for v in values), (m.name, label)
        assert set(m.label_values) <= set(m.labels), m.name


def test_contract_label_sets():
    assert c.FALLBACK_REASONS == ("thread_start_failed", "process_start_failed", "broken_pool", "manager_unavailable",
                                  "daemon_process", "no_headroom", "submit_failed", "scheduler_unreachable")
    assert c.FALLBACK_CAUSES == ("pids_cgroup", "rlimit_nproc", "threads_max", "pid_max", "stack_memory", "seccomp",
                                 "unknown", "none")
    assert c.EXECUTOR_KINDS == ("process", "thread", "sequential", "dask")
    assert c.FAILURE_REASONS == ("no_coordinates", "sanitization_failed", "alignment_failed", "invalid_molecule")
    assert c.LIMIT_NAMES == ("pids_cgroup", "rlimit_nproc", "threads_max", "pid_max", "stack_memory")
    assert c.REDUCTION_REASONS == c.LIMIT_NAMES + ("manager_unavailable", "manager_failed", "reserved_by_others",
                                                   "seccomp")
    fb = c.METRICS_BY_SHORT["fallbacks"].label_values
    assert set(fb["reason"]) == set(c.FALLBACK_REASONS) | {c.OTHER}
    assert fb["cause"] == c.FALLBACK_CAUSES  # "unknown" is already the catch-all
    assert c.METRICS_BY_SHORT["worker_reductions"].label_values["reason"][:-1] == c.REDUCTION_REASONS


@given(st.text(max_size=30))
def test_normalize_label_is_always_bounded(value):
    for m in c.METRICS:
        for allowed in m.label_values.values():
            out = c.normalize_label(value, allowed)
            assert out in allowed
            assert out == value or value not in allowed


def test_spans_and_log_events_documented():
    assert {s.name for s in c.SPANS} == {"select_best", "select_best.batch", "conformers.generate"}
    for s in c.SPANS:
        assert s.help.strip()
        # our own attributes are namespaced; the rest are OpenTelemetry semantic conventions
        assert all(a.startswith("templ.") or a in c.SEMCONV_ATTRIBUTES for a in s.attributes)
        assert set(s.events) <= set(c.SPAN_EVENT_ATTRIBUTES) | {"exception"}
    for attrs in c.SPAN_EVENT_ATTRIBUTES.values():
        assert all(a.startswith("templ.") for a in attrs)
    names = [e.name for e in c.LOG_EVENTS]
    assert len(names) == len(set(names))
    for e in c.LOG_EVENTS:
        assert e.level in ("debug", "info", "warning", "error", "critical")
        assert e.help.strip() and e.fields
        assert re.match(r"^[a-z_]+\.[a-z_]+$", e.name)
    for needed in ("executor.workers_reduced", "executor.fallback", "executor.created", "select_best.batch_done",
                   "select_best.done", "telemetry.degraded"):
        assert needed in c.LOG_EVENTS_BY_NAME
