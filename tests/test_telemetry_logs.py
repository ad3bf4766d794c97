"""Structured logs: capture_logs, JSON lines with timestamp/level/run_id/trace ids, stdlib routing."""

from __future__ import annotations

import io
import json
import logging
from datetime import datetime, timedelta

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from recorder_events import batch_done, worker_span
from structlog.testing import capture_logs

from templ_pipeline import telemetry
from templ_pipeline.core.events import (
    ExecutorKind,
    Fallback,
    FallbackCause,
    FallbackReason,
    QueryFailureReason,
    QueryFinished,
    QueryStatus,
    ReductionReason,
    SelectBestFinished,
    SelectBestStarted,
    TaskType,
    WorkersReduced,
)
from templ_pipeline.telemetry.logs import get_logger
from templ_pipeline.telemetry.recorder import Recorder

pytestmark = pytest.mark.fast

PROCESS, THREAD, SEQUENTIAL = ExecutorKind.PROCESS, ExecutorKind.THREAD, ExecutorKind.SEQUENTIAL


@pytest.fixture
def exporter():
    exp = InMemorySpanExporter()
    telemetry.testing.reset()
    telemetry.tracing.configure_tracing(exp, synchronous=True)
    yield exp
    telemetry.testing.reset()


def _json_lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def _ids(span) -> tuple[str, str]:
    return format(span.context.trace_id, "032x"), format(span.context.span_id, "016x")


def test_capture_logs_sees_fallback_with_trace_id(exporter):
    telemetry.logs.configure_logging(fmt="json", stream=io.StringIO(), run_id="cap")
    rec = Recorder()
    with capture_logs() as logs:
        rec(SelectBestStarted(10, 2))
        rec(Fallback(PROCESS, THREAD, FallbackReason.PROCESS_START_FAILED, FallbackCause.RLIMIT_NPROC, "EAGAIN"))
        rec(batch_done(3, 10, THREAD, span=worker_span()))
        rec(SelectBestFinished(10, 2, 2, THREAD, 10, {}, 0.1))
    (fb,) = [e for e in logs if e["event"] == "executor.fallback"]
    assert fb["log_level"] == "warning"
    assert fb["reason"] == "process_start_failed" and fb["cause"] == "rlimit_nproc" and fb["detail"] == "EAGAIN"
    spans = {span.name: span for span in exporter.get_finished_spans()}
    assert (fb["trace_id"], fb["span_id"]) == _ids(spans["select_best"])
    (done,) = [e for e in logs if e["event"] == "select_best.batch_done"]
    assert done["index"] == 3 and done["size"] == 10 and done["executor_kind"] == "thread"
    assert (done["trace_id"], done["span_id"]) == _ids(spans["select_best.batch"])  # the span its worker timed
    assert done["trace_id"] == fb["trace_id"] and done["duration_seconds"] >= 0


def test_a_batch_without_a_worker_span_is_given_one_ending_as_it_arrives(exporter):
    telemetry.logs.configure_logging(fmt="json", stream=io.StringIO(), run_id="cap")
    rec = Recorder()
    with capture_logs() as logs:
        rec(batch_done(0, 5, PROCESS, seconds=0.25))
    (span,) = exporter.get_finished_spans()
    assert span.name == "select_best.batch" and span.parent is None
    assert span.end_time - span.start_time == 250_000_000  # its worker's time, ending now
    (done,) = [e for e in logs if e["event"] == "select_best.batch_done"]
    assert (done["trace_id"], done["span_id"]) == _ids(span) and done["duration_seconds"] == 0.25


def test_capture_logs_sees_reduction_and_select_best_done(exporter):
    telemetry.logs.configure_logging(fmt="json", stream=io.StringIO())
    rec = Recorder()
    with capture_logs() as logs:
        rec(SelectBestStarted(8, 4))
        rec(WorkersReduced(TaskType.SCORING, 4, 1, ReductionReason.THREADS_MAX, "threads-max 500", headroom=1))
        rec(SelectBestFinished(8, 4, 1, SEQUENTIAL, 6, {"invalid_molecule": 2}, 0.1))
    red = next(e for e in logs if e["event"] == "executor.workers_reduced")
    reduced = (red["workers_requested"], red["workers_granted"], red["reason"], red["headroom"])
    assert reduced == (4, 1, "threads_max", 1)
    assert red["log_level"] == "warning" and len(red["trace_id"]) == 32
    done = next(e for e in logs if e["event"] == "select_best.done")
    assert done["scored"] == 6 and done["failed"] == 2 and done["failed_by_reason"] == {"invalid_molecule": 2}
    assert done["outcome"] == "ok" and done["span_id"] == red["span_id"]


def test_fallback_outside_span_has_no_trace_id(exporter):
    telemetry.logs.configure_logging(fmt="json", stream=io.StringIO())
    with capture_logs() as logs:
        Recorder()(Fallback(THREAD, SEQUENTIAL, FallbackReason.THREAD_START_FAILED, FallbackCause.STACK_MEMORY))
    assert logs[0]["event"] == "executor.fallback" and "trace_id" not in logs[0]


def _assert_utc_iso(ts: str) -> None:
    assert ts.endswith("Z") or ts.endswith("+00:00"), ts
    parsed = datetime.fromisoformat(ts)
    assert parsed.utcoffset() == timedelta(0)


def test_json_output_fields(exporter):
    stream = io.StringIO()
    telemetry.logs.configure_logging(level="INFO", fmt="json", stream=stream, run_id="run-42")
    log = get_logger("templ_pipeline.scoring")
    log.info("outside", k=1)
    with telemetry.tracing.get_tracer().start_as_current_span("work") as span:
        log.warning("inside", conformers=5)
        logging.getLogger("templ_pipeline.core.executor").info("stdlib inside %d", 7)
    logging.getLogger("some.dep").warning("x")
    lines = _json_lines(stream)
    by_event = {line["event"]: line for line in lines}
    assert set(by_event) == {"outside", "inside", "stdlib inside 7", "x"}
    for line in lines:
        _assert_utc_iso(line["timestamp"])
        assert line["run_id"] == "run-42"
        assert {"timestamp", "level", "event", "logger"} <= set(line)
    assert list(lines[0])[:4] == ["timestamp", "level", "logger", "event"]
    tid, sid = format(span.get_span_context().trace_id, "032x"), format(span.get_span_context().span_id, "016x")
    inside = by_event["inside"]
    assert inside["level"] == "warning" and inside["logger"] == "templ_pipeline.scoring" and inside["conformers"] == 5
    assert (inside["trace_id"], inside["span_id"]) == (tid, sid)
    std = by_event["stdlib inside 7"]
    assert std["logger"] == "templ_pipeline.core.executor" and std["level"] == "info"
    assert (std["trace_id"], std["span_id"]) == (tid, sid)
    dep = by_event["x"]
    assert dep["logger"] == "some.dep" and dep["level"] == "warning" and "trace_id" not in dep
    assert "trace_id" not in by_event["outside"]


def test_level_filter_and_exceptions(exporter):
    stream = io.StringIO()
    telemetry.logs.configure_logging(level="WARNING", fmt="json", stream=stream, run_id="r")
    Recorder()(batch_done(0, 5, THREAD))  # batch_done is debug: filtered
    try:
        raise ValueError("bad mol")
    except ValueError:
        get_logger("templ_pipeline.io").exception("load.failed")
    lines = _json_lines(stream)
    assert [line["event"] for line in lines] == ["load.failed"]
    assert lines[0]["level"] == "error"
    assert "ValueError" in json.dumps(lines[0]["exception"])


def test_configure_twice_replaces_handler(exporter):
    first, second = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    n_handlers = len(root.handlers)
    telemetry.logs.configure_logging(fmt="json", stream=first, run_id="a")
    telemetry.logs.configure_logging(fmt="json", stream=second, run_id="b")
    assert len(root.handlers) == n_handlers + 1
    logging.getLogger("dep").warning("once")
    get_logger("t").warning("twice")
    assert first.getvalue() == ""
    lines = _json_lines(second)
    assert [line["event"] for line in lines] == ["once", "twice"] and all(line["run_id"] == "b" for line in lines)


def test_auto_format_and_console(exporter):
    stream = io.StringIO()  # not a TTY -> JSON
    telemetry.logs.configure_logging(fmt="auto", stream=stream)
    get_logger("t").warning("auto.json")
    assert json.loads(stream.getvalue())["event"] == "auto.json"
    assert len(telemetry.get_run_id()) == 12  # generated when not given
    console = io.StringIO()
    telemetry.logs.configure_logging(fmt="console", stream=console, run_id="c1")
    get_logger("t").warning("console.event", a=1)
    out = console.getvalue()
    assert "console.event" in out and "a=1" in out and not out.lstrip().startswith("{")
    assert "run_id" not in out and "2026" not in out  # correlation keys are the JSON's, not a person's


def test_a_console_line_of_a_failed_query_is_one_line_of_its_own_fields(exporter):
    from templ_pipeline.telemetry.catalog import CONSOLE_FIELDS

    console = io.StringIO()
    telemetry.logs.configure_logging(fmt="console", stream=console, run_id="c2", console_fields=CONSOLE_FIELDS)
    with telemetry.tracing.get_tracer().start_as_current_span("query"):
        Recorder()(QueryFinished("broken", PROCESS, QueryStatus.FAILED, QueryFailureReason.INVALID_SMILES, 0.01, 4, 0,
                                 0, 0, 1, "cannot parse SMILES 'C1CC('"))
    (line,) = console.getvalue().splitlines()
    assert line.index("query_id=broken") < line.index("reason=invalid_smiles") < line.index("detail=")
    assert "trace_id" not in line and "in_flight" not in line and "duration_seconds" not in line


def test_without_a_stream_lines_go_to_stderr_as_it_is_at_each_line(exporter, monkeypatch):
    telemetry.logs.configure_logging(fmt="json", run_id="now")
    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr("sys.stderr", first)
    get_logger("t").warning("one")
    monkeypatch.setattr("sys.stderr", second)  # what a progress display does while it runs
    get_logger("t").warning("two")
    assert [line["event"] for line in _json_lines(first)] == ["one"]
    assert [line["event"] for line in _json_lines(second)] == ["two"]
