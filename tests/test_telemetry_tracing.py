"""OpenTelemetry spans: select_best parent, batch children, executor span events, errors."""

from __future__ import annotations

import json
import threading

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from recorder_events import WORKER_PID, batch_done, worker_span
from templ_runs import run_templ

from templ_pipeline import telemetry
from templ_pipeline.core.conformers import generate_conformers
from templ_pipeline.core.events import (
    ExecutorCreated,
    ExecutorKind,
    Fallback,
    FallbackCause,
    FallbackReason,
    ReductionReason,
    SelectBestFinished,
    SelectBestStarted,
    TaskType,
    WorkersReduced,
)
from templ_pipeline.core.scoring import select_best_with_report
from templ_pipeline.telemetry import catalog as c
from templ_pipeline.telemetry.recorder import Recorder

pytestmark = pytest.mark.fast

PROCESS, SEQUENTIAL = ExecutorKind.PROCESS, ExecutorKind.SEQUENTIAL


@pytest.fixture
def tel(tel_json):
    return tel_json


def _processors(provider):
    return list(provider._active_span_processor._span_processors)  # SDK internals, read-only


def _run_select_best() -> None:
    """A call on 4 requested workers granted 2: one batch in a worker process, then a refused start, and the
    second batch in this process; each batch timed under the call's span, as the workers do."""
    rec = Recorder()
    rec(SelectBestStarted(20, 4))
    rec(ExecutorCreated(PROCESS, 4, TaskType.SCORING, reused=False))
    rec(WorkersReduced(TaskType.SCORING, 4, 2, ReductionReason.RLIMIT_NPROC, "nproc 30/32", headroom=2))
    rec(batch_done(0, 10, span=worker_span()))
    rec(Fallback(PROCESS, SEQUENTIAL, FallbackReason.PROCESS_START_FAILED, FallbackCause.PIDS_CGROUP,
                 "pids.current=64/64", RuntimeError("can't start new thread")))
    rec(batch_done(1, 10, SEQUENTIAL, failed=2, span=worker_span()))
    rec(SelectBestFinished(20, 4, 2, SEQUENTIAL, 18, {"sanitization_failed": 2}, 0.3))


def test_parent_and_child_spans_with_attributes(tel):
    _run_select_best()
    spans = tel.exporter.get_finished_spans()
    parent = [s for s in spans if s.name == "select_best"]
    batches = sorted((s for s in spans if s.name == c.SPAN_BATCH), key=lambda s: s.attributes[c.ATTR_BATCH_INDEX])
    assert len(parent) == 1 and len(batches) == 2
    parent = parent[0]
    for b in batches:
        assert b.parent is not None and b.parent.span_id == parent.context.span_id
        assert b.context.trace_id == parent.context.trace_id
        assert b.attributes[c.ATTR_BATCH_SIZE] == 10 and b.attributes[c.ATTR_PROCESS_PID] == WORKER_PID
        assert set(b.attributes) <= set(c.SPANS_BY_NAME[c.SPAN_BATCH].attributes)
    assert batches[0].attributes[c.ATTR_EXECUTOR_KIND] == "process"
    assert batches[1].attributes[c.ATTR_EXECUTOR_KIND] == "sequential"
    assert batches[1].attributes[c.ATTR_BATCH_SCORED] == 8 and batches[1].attributes[c.ATTR_BATCH_FAILED] == 2
    pa = parent.attributes
    assert set(pa) <= set(c.SPANS_BY_NAME[c.SPAN_SELECT_BEST].attributes)
    assert pa[c.ATTR_N_CONFORMERS] == 20 and pa[c.ATTR_WORKERS_REQUESTED] == 4 and pa[c.ATTR_WORKERS_GRANTED] == 2
    assert pa[c.ATTR_SCORED] == 18 and pa[c.ATTR_FAILED] == 2 and pa[c.ATTR_EXECUTOR_KIND] == "sequential"
    assert pa[c.ATTR_OUTCOME] == "ok"
    assert parent.status.status_code is not StatusCode.ERROR
    assert parent.resource.attributes["service.name"] == "templ"
    assert parent.resource.attributes["templ.run_id"] == "test-run"
    assert not trace.get_current_span().is_recording()  # the call's end detached its span


def test_executor_events_are_span_events_of_the_call(tel):
    _run_select_best()
    spans = {(s.name, s.attributes.get(c.ATTR_BATCH_INDEX)): s for s in tel.exporter.get_finished_spans()}
    parent = spans[("select_best", None)]
    assert [e.name for e in parent.events] == ["executor.created", "executor.workers_reduced", "executor.fallback",
                                               "exception"]
    parent_events = {e.name: e for e in parent.events}
    created = parent_events["executor.created"].attributes
    assert created[c.ATTR_EXECUTOR_KIND] == "process" and created[c.ATTR_WORKERS] == 4
    assert created[c.ATTR_REUSED] is False
    reduced = parent_events["executor.workers_reduced"].attributes
    assert reduced[c.ATTR_REASON] == "rlimit_nproc" and reduced[c.ATTR_WORKERS_GRANTED] == 2
    assert reduced[c.ATTR_HEADROOM] == 2 and reduced[c.ATTR_DETAIL] == "nproc 30/32"
    assert dict(parent_events["executor.fallback"].attributes) == {
        c.ATTR_FROM_KIND: "process", c.ATTR_TO_KIND: "sequential", c.ATTR_REASON: "process_start_failed",
        c.ATTR_CAUSE: "pids_cgroup", c.ATTR_DETAIL: "pids.current=64/64",
    }
    exc = parent_events["exception"].attributes
    assert exc["exception.type"] == "RuntimeError" and "can't start new thread" in exc["exception.message"]
    assert exc[c.ATTR_REASON] == "process_start_failed" and exc[c.ATTR_CAUSE] == "pids_cgroup"
    # a recovered fallback is not an error
    assert parent.status.status_code is not StatusCode.ERROR
    # a batch span was timed in its worker: the events of the call are the parent's, never a batch's
    assert not spans[("select_best.batch", 0)].events and not spans[("select_best.batch", 1)].events
    for name, attrs in c.SPAN_EVENT_ATTRIBUTES.items():
        for span in spans.values():
            for e in span.events:
                if e.name == name:
                    assert set(e.attributes) <= set(attrs)


def test_an_exception_escaping_a_real_call_marks_its_span_and_is_reraised(tel, query_confs, template):
    def broken(result):
        raise KeyError("mol-7")

    with pytest.raises(KeyError):
        select_best_with_report(query_confs, template, n_workers=1, on_batch=broken)
    spans = {s.name: s for s in tel.exporter.get_finished_spans()}
    span = spans["select_best"]
    assert span.status.status_code is StatusCode.ERROR and "KeyError" in span.status.description
    ev = [e for e in span.events if e.name == "exception"]
    assert len(ev) == 1 and ev[0].attributes["exception.type"] == "KeyError"
    assert span.attributes[c.ATTR_OUTCOME] == "error"
    batch = spans["select_best.batch"]  # the batch itself was scored: the error escaped after it
    assert batch.parent.span_id == span.context.span_id and batch.status.status_code is not StatusCode.ERROR
    assert not trace.get_current_span().is_recording()  # context restored
    failed = [json.loads(line) for line in tel.stream.getvalue().splitlines() if '"select_best.failed"' in line]
    assert [(line["level"], line["error_type"]) for line in failed] == [("error", "KeyError")]


def test_a_real_call_is_one_span_with_its_batches_timed_below_it(tel, query_confs, template):
    selection = select_best_with_report(query_confs, template, n_workers=1)
    spans = tel.exporter.get_finished_spans()
    (call,) = [s for s in spans if s.name == c.SPAN_SELECT_BEST]
    batches = [s for s in spans if s.name == c.SPAN_BATCH]
    assert len(batches) == selection.report.n_batches >= 1
    assert all(b.parent.span_id == call.context.span_id and b.context.trace_id == call.context.trace_id
               for b in batches)
    assert sum(b.attributes[c.ATTR_BATCH_SCORED] for b in batches) == call.attributes[c.ATTR_SCORED] == 24
    assert all(set(s.attributes) <= set(c.SPANS_BY_NAME[s.name].attributes) for s in spans)
    assert call.attributes[c.ATTR_OUTCOME] == "ok"


def test_a_real_embedding_is_one_conformers_span_with_the_catalogs_attributes(tel):
    mol = generate_conformers("O=C(Nc1cccnc1)c1ccc(F)cc1OC", 6, seed=3, n_workers=1)
    (span,) = [s for s in tel.exporter.get_finished_spans() if s.name == c.SPAN_CONFORMERS]
    assert set(span.attributes) <= set(c.SPANS_BY_NAME[c.SPAN_CONFORMERS].attributes)
    assert span.attributes[c.ATTR_CONFORMERS_REQUESTED] == 6
    assert span.attributes[c.ATTR_CONFORMERS_GENERATED] == mol.GetNumConformers() >= 1
    assert span.attributes[c.ATTR_WORKERS_GRANTED] == 1 and span.attributes[c.ATTR_OUTCOME] == "ok"


def test_current_trace_ids(tel):
    assert telemetry.current_trace_ids() is None
    rec = Recorder()
    rec(SelectBestStarted(1, 1))
    ids = telemetry.current_trace_ids()
    rec(SelectBestFinished(1, 1, 1, SEQUENTIAL, 1, {}, 0.01))
    assert ids is not None
    tid, sid = ids
    assert len(tid) == 32 and len(sid) == 16 and int(tid, 16) and int(sid, 16)
    (span,) = tel.exporter.get_finished_spans()
    assert (format(span.context.trace_id, "032x"), format(span.context.span_id, "016x")) == ids
    assert telemetry.current_trace_ids() is None


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


@pytest.mark.slow
def test_one_select_best_run_is_one_trace_under_its_command_span(template_sdf, tmp_path):
    traces = tmp_path / "traces.jsonl"
    done = run_templ("select-best", "-t", template_sdf, "-q", "O=C(Nc1cccnc1)c1ccc(F)cc1OC", "-n", "8", "-w", "2",
                     "-o", tmp_path / "o.sdf", "--no-metrics-server", "--traces-file", traces)
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


def test_calls_in_two_threads_each_end_their_own_span(tel):
    rec, ids, order = Recorder(), {}, [threading.Event() for _ in range(3)]

    def call(n: int, opened: threading.Event | None, wait: threading.Event, done: threading.Event | None) -> None:
        rec(SelectBestStarted(n, 1))
        ids[n] = telemetry.current_trace_ids()
        if opened is not None:
            opened.set()
        wait.wait(10)
        rec(SelectBestFinished(n, 1, 1, SEQUENTIAL, n, {}, 0.01))
        if done is not None:
            done.set()

    first = threading.Thread(target=call, args=(10, order[0], order[1], order[2]))  # opens first, ends first
    second = threading.Thread(target=lambda: (order[0].wait(10), call(20, order[1], order[2], None)))
    for thread in (first, second):
        thread.start()
    for thread in (first, second):
        thread.join(30)
    spans = {format(s.context.span_id, "016x"): s for s in tel.exporter.get_finished_spans()}
    assert {n: spans[ids[n][1]].attributes[c.ATTR_N_CONFORMERS] for n in (10, 20)} == {10: 10, 20: 20}
