"""The telemetry catalog is well-formed: Prometheus naming, bounded labels, documented specs."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, strategies as st

from templ_pipeline.telemetry import catalog as c

pytestmark = pytest.mark.fast

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
    "templ_campaign_queries_total": "counter",
    "templ_campaign_queries_in_flight": "gauge",
    "templ_campaign_queries_expected": "gauge",
    "templ_campaign_queries_skipped": "gauge",
    "templ_campaign_query_duration_seconds": "histogram",
    "templ_campaign_worker_replacements_total": "counter",
    "templ_campaign_query_resubmissions_total": "counter",
    "templ_campaign_queries_short_of_conformers_total": "counter",
    "templ_query_preparations_total": "counter",
    "templ_poses_total": "counter",
    "templ_template_selection_duration_seconds": "histogram",
    "templ_telemetry_degraded_total": "counter",
    "templ_start_refusals_total": "counter",
    "templ_run_info": "gauge",
    "templ_run_start_time_seconds": "gauge",
    "templ_conformer_generations_total": "counter",
    "templ_conformer_generations_in_progress": "gauge",
    "templ_push_interval_seconds": "gauge",
    "templ_last_success_timestamp_seconds": "gauge",
    "templ_last_failure_timestamp_seconds": "gauge",
    "templ_build_info": "gauge",
}
CONTRACT_SHORTS = {
    "threads_active", "process_threads", "thread_limit", "thread_headroom", "pids_refused_forks", "pids_peak_tasks",
    "workers_requested", "workers_granted",
    "worker_reductions", "fallbacks", "batches", "batch_duration", "conformers_scored", "conformers_failed",
    "select_best_calls", "select_best_duration", "pool_restarts", "batch_resubmissions", "telemetry_degraded",
    "build_info", "campaign_queries", "campaign_in_flight", "campaign_expected", "campaign_skipped",
    "campaign_query_duration", "campaign_worker_replacements", "campaign_query_resubmissions", "campaign_shortfalls",
    "query_preparations", "poses", "template_selection_duration", "last_success",
    "last_failure", "start_refusals", "run_info", "run_start", "push_interval",
    "conformer_generations", "conformer_generations_in_progress",
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
                                  "daemon_process", "no_headroom", "submit_failed", "scheduler_unreachable",
                                  "scheduler_lost", "no_workers")
    assert c.FALLBACK_CAUSES == ("pids_cgroup", "rlimit_nproc", "threads_max", "pid_max", "stack_memory", "seccomp",
                                 "unknown", "none")
    assert c.EXECUTOR_KINDS == ("process", "thread", "sequential", "dask")
    assert c.FAILURE_REASONS == ("no_coordinates", "sanitization_failed", "alignment_failed", "invalid_molecule")
    assert c.LIMIT_NAMES == ("pids_cgroup", "rlimit_nproc", "threads_max", "pid_max", "stack_memory")
    assert c.REDUCTION_REASONS == c.LIMIT_NAMES + ("manager_unavailable", "manager_failed", "reserved_by_others",
                                                   "seccomp", "cpu_limit", "small_work", "pool_starting")
    assert c.TASK_TYPES == ("scoring", "conformers", "screening")
    assert c.QUERY_STATUSES == ("ok", "failed")
    assert c.QUERY_REASONS == ("invalid_smiles", "invalid_record", "unsupported_element", "too_small",
                               "embedding_failed", "no_conformer_scored", "timeout", "worker_lost", "error", "none")
    assert c.REPLACEMENT_REASONS == ("timeout", "worker_lost", "recycled")
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


def test_every_command_with_telemetry_has_its_root_span():
    import typer

    from templ_pipeline.cli import app

    commands = typer.main.get_command(app).commands
    traced = {name for name, command in commands.items()
              if any(param.name == "traces_file" for param in command.params)}
    assert traced == set(c.TRACED_COMMANDS)


def test_spans_and_log_events_documented():
    assert {s.name for s in c.SPANS} == {"select_best", "select_best.batch", "conformers.generate",
                                         "screen.campaign", "screen.query", "screen.score", "templates.choose",
                                         "templ.select_best", "templ.screen", "templ.demo", "templ.stress"}
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
        assert e.level in c.LOG_LEVELS
        assert e.help.strip() and e.fields
        assert re.match(r"^[a-z_]+\.[a-z_]+$", e.name)
    for needed in ("executor.workers_reduced", "executor.fallback", "executor.created", "select_best.batch_done",
                   "select_best.done", "telemetry.degraded"):
        assert needed in c.LOG_EVENTS_BY_NAME


def test_event_specs_name_metrics_whose_labels_are_their_label_fields():
    for event in c.EVENT_SPECS:
        label_fields = {f.name: f for f in event.fields if f.label}
        fields = {f.name for f in event.fields}
        assert len(fields) == len(event.fields), event.name
        for short in event.metrics:
            assert short in c.METRICS_BY_SHORT, (event.name, short)
        if event.counter is not None:
            counter = c.METRICS_BY_SHORT[event.counter]
            assert counter.kind == "counter" and set(counter.labels) == set(label_fields), event.name
            for label, f in label_fields.items():
                assert counter.label_values[label] == f.values, (event.name, label)
        for name, short in event.gauges:
            spec = c.METRICS_BY_SHORT[short]
            assert name in fields and spec.kind == "gauge", (event.name, short)
            assert set(spec.labels) <= set(label_fields), (event.name, short)
        if event.histogram is not None:
            name, short = event.histogram
            spec = c.METRICS_BY_SHORT[short]
            assert name in fields and spec.kind == "histogram", event.name
            assert all(spec.label_values[label] == label_fields[label].values for label in spec.labels), event.name
        for name, short in event.flags:
            assert name in fields and c.METRICS_BY_SHORT[short].kind == "counter", event.name
            assert not c.METRICS_BY_SHORT[short].labels, event.name
        for name, short, label in event.tallies:  # one count per value of a field of several bounded values
            spec, f = c.METRICS_BY_SHORT[short], next(f for f in event.fields if f.name == name)
            assert spec.kind == "counter" and spec.labels == (label,) and spec.label_values[label] == f.values
        assert all(c.METRICS_BY_SHORT[short].kind == "gauge" for short in event.resets), event.name
        for name, value, level in event.levels_by_value:
            f = next(f for f in event.fields if f.name == name)
            assert f.values is not None and value in f.values and level in c.LOG_LEVELS, event.name
        assert event.level in c.LOG_LEVELS and event.logger.startswith("templ."), event.name


#: Events read by others than telemetry (the selection report, the CLI's progress), or rendered by code of
#: their own (a batch's span was timed in its worker).
NOT_RECORDED = {"LimitsObserved", "CallDone", "ConformersEmbedded"}
BESPOKE = {"BatchDone"}
#: Fields that are not values to show: the trace carrier a recorder fills, the stages that become spans of
#: their own (``STAGE_SPECS``), the exception of an event with ``has_error``.
NOT_SHOWN = {"carrier", "stages", "error"}


def test_every_event_class_has_one_spec_that_shows_every_field():
    import typing

    from templ_pipeline.core import events as ev

    classes = typing.get_args(ev.ExecutorEvent)
    recorded = [cls for cls in classes if cls.__name__ not in NOT_RECORDED | BESPOKE]
    assert set(recorded) == set(c.EVENT_SPECS_BY_TYPE)
    assert len(c.EVENT_SPECS_BY_TYPE) == len([spec for spec in c.EVENT_SPECS if spec.event is not None])
    for cls, spec in c.EVENT_SPECS_BY_TYPE.items():
        read = {f.source or f.name for f in spec.fields}
        missing = set(cls.__dataclass_fields__) - read - NOT_SHOWN
        assert missing == set(), (spec.name, missing)
        if "error" in cls.__dataclass_fields__ and spec.has_error:
            assert spec.level in c.LOG_LEVELS
    for stage in c.STAGE_SPECS:
        read = {f.source or f.name for f in stage.fields} | {"span"}
        assert set(stage.event.__dataclass_fields__) == read, stage.name
    assert {stage.event for stage in c.STAGE_SPECS} == set(typing.get_args(ev.StageTiming))


def test_the_spans_events_open_and_close_are_declared_spans():
    for spec in c.EVENT_SPECS:
        if spec.span_event:
            assert not spec.span, spec.name
        elif spec.span_role:
            assert spec.span in c.SPANS_BY_NAME, spec.name
    opened = {spec.span for spec in c.EVENT_SPECS if spec.span_role in ("opens", "opens_detached")}
    closed = {spec.span for spec in c.EVENT_SPECS if spec.span_role in ("closes", "closes_detached")}
    assert opened == closed


def test_query_outcomes_are_the_pairs_that_can_occur():
    spec = c.METRICS_BY_SHORT["campaign_queries"]
    assert spec.initial_label_values() == c.QUERY_OUTCOMES
    assert {status for status, _reason in c.QUERY_OUTCOMES} == set(c.QUERY_STATUSES)
    assert {reason for _status, reason in c.QUERY_OUTCOMES} == set(c.QUERY_REASONS)
    buckets = c.METRICS_BY_SHORT["campaign_query_duration"].buckets
    assert buckets[0] <= 0.1 and buckets[-1] >= 30 * 60  # 0.1 s .. 30 min queries


def test_every_bounded_counter_starts_at_zero():
    """Counters with bounded labels pre-create their series, so increase() sees the first event."""
    # test_telemetry_guard.py still asserts that an unused degraded series is absent (None, not 0)
    not_yet = {"templ_telemetry_degraded_total"}
    for m in c.METRICS:
        if m.kind == "counter" and m.labels and not set(m.labels) & set(c.FREE_LABELS) and m.name not in not_yet:
            assert m.initialize and m.initial_label_values(), m.name


def test_initial_combinations_use_declared_values_only():
    for m in c.METRICS:
        combos = m.initial_label_values()
        assert len(set(combos)) == len(combos), m.name
        for combo in combos:
            assert len(combo) == len(m.labels), m.name
            for label, value in zip(m.labels, combo, strict=True):
                assert value in m.label_values[label] and value != c.OTHER, (m.name, label, value)
        if m.combinations is not None and len(m.combinations) > 20:  # too many to list in the docs
            assert m.combinations_rule, f"{m.name}: say how its {len(m.combinations)} combinations are chosen"


def test_fallback_combinations_are_steps_down_the_ladder():
    ladder = ("dask", "process", "thread", "sequential")
    spec = c.METRICS_BY_SHORT["fallbacks"]
    combos = spec.initial_label_values()
    assert combos == c.FALLBACK_COMBINATIONS
    for from_kind, to_kind, reason, cause in combos:
        assert ladder.index(to_kind) >= ladder.index(from_kind), (from_kind, to_kind)
        start = reason in ("process_start_failed", "thread_start_failed")
        assert (cause != "none") == start or reason == "no_headroom", (reason, cause)
    # the first fallback a pids cgroup causes is counted from 0
    assert ("process", "process", "process_start_failed", "pids_cgroup") in combos
    # no rung is a thread pool: only embedding threads step from thread, and nothing steps to thread from another kind
    assert all(to_kind != "thread" or from_kind == "thread" for from_kind, to_kind, _r, _c in combos)
    assert len(combos) < 100  # not the 1296 of the full product
