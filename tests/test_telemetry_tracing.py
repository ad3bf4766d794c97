"""OpenTelemetry spans: select_best parent, batch children, executor span events, errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from templ_pipeline import telemetry
from templ_pipeline.telemetry import catalog as c


@pytest.fixture
def tel(tel_json):
    return tel_json


def _processors(provider):
    return list(provider._active_span_processor._span_processors)  # SDK internals, read-only


def _run_select_best():
    with telemetry.select_best_span(n_conformers=20, workers_requested=4) as call:
        telemetry.events.record_executor_created("process", 4, "scoring", reused=False)
        telemetry.events.record_worker_reduction("scoring", 4, 2, "rlimit_nproc", "nproc 30/32", headroom=2)
        call.workers_granted = 2
        with telemetry.batch_span(0, 10, "process") as b:
            b.scored = 10
        with telemetry.batch_span(1, 10, "process") as b:
            err = RuntimeError("can't start new thread")
            telemetry.events.record_fallback("process", "sequential", "process_start_failed", "pids_cgroup",
                                      detail="pids.current=64/64", error=err)
            b.executor_kind = "sequential"
            b.scored, b.failed = 8, 2
        call.executor_kind = "sequential"
        call.scored = 18
        call.fail("sanitization_failed", 2)


def test_parent_and_child_spans_with_attributes(tel):
    _run_select_best()
    spans = tel.exporter.get_finished_spans()
    parent = [s for s in spans if s.name == "select_best"]
    batches = sorted((s for s in spans if s.name == "select_best.batch"), key=lambda s: s.attributes[c.ATTR_BATCH_INDEX])
    assert len(parent) == 1 and len(batches) == 2
    parent = parent[0]
    for b in batches:
        assert b.parent is not None and b.parent.span_id == parent.context.span_id
        assert b.context.trace_id == parent.context.trace_id
        assert b.attributes[c.ATTR_BATCH_SIZE] == 10
        assert set(b.attributes) <= set(c.SPANS[1].attributes)
    assert batches[0].attributes[c.ATTR_EXECUTOR_KIND] == "process"
    assert batches[1].attributes[c.ATTR_EXECUTOR_KIND] == "sequential"  # final kind wins
    assert batches[1].attributes[c.ATTR_BATCH_SCORED] == 8 and batches[1].attributes[c.ATTR_BATCH_FAILED] == 2
    pa = parent.attributes
    assert set(pa) <= set(c.SPANS[0].attributes)
    assert pa[c.ATTR_N_CONFORMERS] == 20 and pa[c.ATTR_WORKERS_REQUESTED] == 4 and pa[c.ATTR_WORKERS_GRANTED] == 2
    assert pa[c.ATTR_SCORED] == 18 and pa[c.ATTR_FAILED] == 2 and pa[c.ATTR_EXECUTOR_KIND] == "sequential"
    assert pa[c.ATTR_OUTCOME] == "ok"
    assert parent.status.status_code is not StatusCode.ERROR
    assert parent.resource.attributes["service.name"] == "templ"
    assert parent.resource.attributes["templ.run_id"] == "test-run"


def test_executor_span_events(tel):
    _run_select_best()
    spans = {(s.name, s.attributes.get(c.ATTR_BATCH_INDEX)): s for s in tel.exporter.get_finished_spans()}
    parent_events = {e.name: e for e in spans[("select_best", None)].events}
    created = parent_events["executor.created"].attributes
    assert created[c.ATTR_EXECUTOR_KIND] == "process" and created[c.ATTR_WORKERS] == 4
    assert created[c.ATTR_REUSED] is False
    reduced = parent_events["executor.workers_reduced"].attributes
    assert reduced[c.ATTR_REASON] == "rlimit_nproc" and reduced[c.ATTR_WORKERS_GRANTED] == 2
    assert reduced[c.ATTR_HEADROOM] == 2 and reduced[c.ATTR_DETAIL] == "nproc 30/32"

    batch1 = spans[("select_best.batch", 1)]
    names = [e.name for e in batch1.events]
    assert names == ["executor.fallback", "exception"]
    fb = batch1.events[0].attributes
    assert dict(fb) == {
        c.ATTR_FROM_KIND: "process", c.ATTR_TO_KIND: "sequential", c.ATTR_REASON: "process_start_failed",
        c.ATTR_CAUSE: "pids_cgroup", c.ATTR_DETAIL: "pids.current=64/64",
    }
    exc = batch1.events[1].attributes
    assert exc["exception.type"] == "RuntimeError" and "can't start new thread" in exc["exception.message"]
    # a recovered fallback is not an error
    assert batch1.status.status_code is not StatusCode.ERROR
    for name, attrs in c.SPAN_EVENT_ATTRIBUTES.items():
        for span in spans.values():
            for e in span.events:
                if e.name == name:
                    assert set(e.attributes) <= set(attrs)


def test_exception_recorded_and_reraised(tel):
    with pytest.raises(KeyError):
        with telemetry.select_best_span(5, 1) as call:
            call.executor_kind = "thread"
            with telemetry.batch_span(0, 5, "thread"):
                raise KeyError("mol-7")
    spans = {s.name: s for s in tel.exporter.get_finished_spans()}
    for name in ("select_best", "select_best.batch"):
        span = spans[name]
        assert span.status.status_code is StatusCode.ERROR
        assert "KeyError" in span.status.description
        ev = [e for e in span.events if e.name == "exception"]
        assert len(ev) == 1 and ev[0].attributes["exception.type"] == "KeyError"
    assert spans["select_best"].attributes[c.ATTR_OUTCOME] == "error"
    assert not trace.get_current_span().is_recording()  # context restored


def test_current_trace_ids(tel):
    assert telemetry.current_trace_ids() is None
    with telemetry.batch_span(0, 1, "sequential"):
        ids = telemetry.current_trace_ids()
        assert ids is not None
        tid, sid = ids
        assert len(tid) == 32 and len(sid) == 16 and int(tid, 16) and int(sid, 16)
    (span,) = tel.exporter.get_finished_spans()
    assert (format(span.context.trace_id, "032x"), format(span.context.span_id, "016x")) == ids


def test_disabled_tracing_is_noop():
    exporter = InMemorySpanExporter()
    try:
        assert telemetry.tracing.configure_tracing(exporter, enabled=False) is None
        assert isinstance(telemetry.tracing.get_tracer(), trace.NoOpTracer)
        with telemetry.tracing.get_tracer().start_as_current_span("x") as span:
            assert not span.is_recording()
            assert telemetry.current_trace_ids() is None
        assert exporter.get_finished_spans() == ()
    finally:
        telemetry.testing.reset()


def test_disabled_context_gives_noop_tracer(tel):
    with telemetry.disabled():
        assert isinstance(telemetry.tracing.get_tracer(), trace.NoOpTracer)
    assert not isinstance(telemetry.tracing.get_tracer(), trace.NoOpTracer)


def test_reconfigure_and_batch_processor(tel):
    first = InMemorySpanExporter()
    second = InMemorySpanExporter()
    p1 = telemetry.tracing.configure_tracing(first)  # default: BatchSpanProcessor
    assert isinstance(_processors(p1)[0], BatchSpanProcessor)
    with telemetry.tracing.get_tracer().start_as_current_span("one"):
        pass
    p2 = telemetry.tracing.configure_tracing(second, synchronous=True)  # shuts p1 down, flushing "one"
    assert isinstance(_processors(p2)[0], SimpleSpanProcessor)
    assert [s.name for s in first.get_finished_spans()] == ["one"]
    with telemetry.tracing.get_tracer().start_as_current_span("two"):
        pass
    assert [s.name for s in second.get_finished_spans()] == ["two"]
    assert not tel.registry.get_sample_value(  # pre-created at 0, or absent
        "templ_telemetry_degraded_total", {"component": "span_processor", "reason": "thread_start_failed"})


def test_no_headroom_uses_synchronous_export(tel):
    exporter = InMemorySpanExporter()
    provider = telemetry.tracing.configure_tracing(exporter, headroom=0)
    assert isinstance(_processors(provider)[0], SimpleSpanProcessor)
    with telemetry.tracing.get_tracer().start_as_current_span("sync"):
        pass
    assert len(exporter.get_finished_spans()) == 1  # exported immediately
    assert tel.registry.get_sample_value(
        "templ_telemetry_degraded_total", {"component": "span_processor", "reason": "no_headroom"}) == 1
    assert tel.stream.getvalue().count('"event": "telemetry.degraded"') == 1


def _exported_spans(path) -> list[dict]:
    return [span for line in path.read_text().splitlines() for resource in json.loads(line)["resourceSpans"]
            for scope in resource["scopeSpans"] for span in scope["spans"]]


def test_one_select_best_run_is_one_trace_under_its_command_span(template_sdf, tmp_path):
    traces = tmp_path / "traces.jsonl"
    done = subprocess.run([sys.executable, "-m", "templ_pipeline.cli", "select-best", "-t", str(template_sdf),
                           "-q", "O=C(Nc1cccnc1)c1ccc(F)cc1OC", "-n", "8", "-w", "2", "-o", str(tmp_path / "o.sdf"),
                           "--no-metrics-server", "--traces-file", str(traces)],
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    spans = _exported_spans(traces)
    (root,) = [span for span in spans if "parentSpanId" not in span or not span["parentSpanId"]]
    assert root["name"] == "templ.select_best"
    assert {span["traceId"] for span in spans} == {root["traceId"]}
    by_id = {span["spanId"]: span for span in spans}
    parents = {span["name"]: by_id[span["parentSpanId"]]["name"] for span in spans if span is not root}
    assert parents == {"templates.choose": "templ.select_best", "conformers.generate": "templ.select_best",
                       "select_best": "templ.select_best", "select_best.batch": "select_best"}
    assert {a["key"]: a["value"]["stringValue"] for a in root["attributes"]} == {c.ATTR_OUTCOME: "ok"}
