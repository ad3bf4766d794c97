"""A screening campaign's telemetry: its events as metrics and log lines, its campaign, query and worker spans."""

from __future__ import annotations

import io
import json
import math

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from templ_pipeline import telemetry
from templ_pipeline.core.events import (
    CampaignDone,
    CampaignStarted,
    ConformersTimed,
    ExecutorKind,
    QueryFailureReason,
    QueryFinished,
    QueryStarted,
    QueryStatus,
    ReplacementReason,
    ScoringTimed,
    StageTiming,
    WorkerReplaced,
)
from templ_pipeline.core.trace_context import start_worker_span
from templ_pipeline.telemetry import catalog as c
from templ_pipeline.telemetry.recorder import Recorder

pytestmark = pytest.mark.fast

PROCESS = ExecutorKind.PROCESS


def _finished(query_id: str, status: QueryStatus = QueryStatus.OK, reason: QueryFailureReason | None = None, *,
              seconds: float = 0.4, requested: int = 10, conformers: int = 10, in_flight: int = 0,
              detail: str = "", index: int = -1, stages: tuple[StageTiming, ...] = ()) -> QueryFinished:
    scored = conformers if status is QueryStatus.OK else 0
    return QueryFinished(query_id, PROCESS, status, reason, seconds, requested, conformers, scored, 0, in_flight,
                         detail, index, stages)


def _lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def _sample(registry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


@pytest.fixture
def tel_info():
    """Telemetry at the default INFO level: JSON lines in ``stream``, spans in memory."""
    from types import SimpleNamespace

    exporter, stream = InMemorySpanExporter(), io.StringIO()
    telemetry.testing.reset()
    telemetry.configure(span_exporter=exporter, synchronous=True, log_format="json", log_stream=stream,
                        run_id="test-run", log_level="INFO")
    metrics = telemetry.testing.reset_metrics()
    yield SimpleNamespace(exporter=exporter, stream=stream, registry=metrics.registry)
    telemetry.testing.reset()


# ---------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------
def test_known_label_values_start_at_zero_and_the_total_is_unknown(tel_json):
    r = tel_json.registry
    for status, reason in c.QUERY_OUTCOMES:
        assert _sample(r, "templ_campaign_queries_total", status=status, reason=reason) == 0
    assert len(c.QUERY_OUTCOMES) == 1 + len(c.QUERY_REASONS) - 1  # ok with none, failed with each other reason
    assert _sample(r, "templ_campaign_queries_total", status="ok", reason="timeout") is None  # cannot occur
    assert _sample(r, "templ_campaign_queries_total", status="failed", reason="none") is None
    for reason in c.REPLACEMENT_REASONS:
        assert _sample(r, "templ_campaign_worker_replacements_total", reason=reason) == 0
    for status in c.QUERY_STATUSES:
        assert _sample(r, "templ_campaign_query_duration_seconds_count", status=status) == 0
    assert _sample(r, "templ_campaign_queries_in_flight") == 0
    assert _sample(r, "templ_campaign_queries_skipped") == 0
    assert _sample(r, "templ_campaign_queries_short_of_conformers_total") == 0
    assert math.isnan(_sample(r, "templ_campaign_queries_expected"))


def test_events_become_metric_samples(tel_json):
    rec = Recorder()
    r = tel_json.registry
    rec(CampaignStarted(total=10, skipped=3, templates=2))
    assert _sample(r, "templ_campaign_queries_expected") == 10
    assert _sample(r, "templ_campaign_queries_skipped") == 3
    for index in range(4):
        rec(QueryStarted(index, in_flight=index + 1))
    assert _sample(r, "templ_campaign_queries_in_flight") == 4
    rec(_finished("q0", seconds=0.4, in_flight=3, index=0))
    rec(_finished("q1", conformers=6, seconds=2.0, in_flight=2, index=1))  # a shortfall
    rec(_finished("q2", QueryStatus.FAILED, QueryFailureReason.INVALID_SMILES, conformers=0, seconds=0.01, in_flight=1,
                  detail="SMILES Parse Error", index=2))
    rec(_finished("q3", QueryStatus.FAILED, QueryFailureReason.TIMEOUT, conformers=0, seconds=600, in_flight=0,
                  index=3))
    rec(WorkerReplaced(PROCESS, ReplacementReason.TIMEOUT, "query q3 ran over 600 s"))
    assert _sample(r, "templ_campaign_queries_in_flight") == 0
    assert _sample(r, "templ_campaign_queries_total", status="ok", reason="none") == 2
    assert _sample(r, "templ_campaign_queries_total", status="failed", reason="invalid_smiles") == 1
    assert _sample(r, "templ_campaign_queries_total", status="failed", reason="timeout") == 1
    assert _sample(r, "templ_campaign_queries_total", status="failed", reason="embedding_failed") == 0
    # a query with no conformer at all is a failure, not a shortfall
    assert _sample(r, "templ_campaign_queries_short_of_conformers_total") == 1
    assert _sample(r, "templ_campaign_query_duration_seconds_count", status="ok") == 2
    assert _sample(r, "templ_campaign_query_duration_seconds_sum", status="ok") == pytest.approx(2.4)
    assert _sample(r, "templ_campaign_query_duration_seconds_bucket", status="ok", le="0.5") == 1
    assert _sample(r, "templ_campaign_query_duration_seconds_bucket", status="failed", le="0.1") == 1
    assert _sample(r, "templ_campaign_query_duration_seconds_bucket", status="failed", le="300.0") == 1
    assert _sample(r, "templ_campaign_worker_replacements_total", reason="timeout") == 1
    rec(QueryStarted(4, in_flight=1))
    rec(CampaignDone(done=4, ok=2, failed=2, seconds=610.0, interrupted=True))
    assert _sample(r, "templ_campaign_queries_in_flight") == 0  # nothing runs once the campaign is done


def test_disabled_telemetry_still_counts_the_campaign(tel_json):
    rec = Recorder()
    with telemetry.disabled():
        rec(QueryStarted(0, 1))
        rec(_finished("q0", QueryStatus.FAILED, QueryFailureReason.WORKER_LOST, conformers=0, index=0))
    r = tel_json.registry
    assert _sample(r, "templ_campaign_queries_total", status="failed", reason="worker_lost") == 1
    assert any(e["event"] == c.EVENT_QUERY_FINISHED and e["level"] == "warning" for e in _lines(tel_json.stream))


def test_an_unknown_total_stays_nan(tel_json):
    rec = Recorder()
    rec(CampaignStarted(total=None, skipped=0, templates=1))
    assert math.isnan(_sample(tel_json.registry, "templ_campaign_queries_expected"))
    rec(CampaignDone(done=0, ok=0, failed=0, seconds=0.1, interrupted=False))


def test_unknown_values_are_folded_and_kept_in_the_log(tel_json):
    rec = Recorder()
    r = tel_json.registry
    rec(QueryFinished("q9", PROCESS, "exploded", "cosmic_ray", 1.0, 10, 10, 0, 0, 0))  # type: ignore[arg-type]
    rec(WorkerReplaced(PROCESS, "moon_phase", ""))  # type: ignore[arg-type]
    assert _sample(r, "templ_campaign_queries_total", status="other", reason="other") == 1
    assert _sample(r, "templ_campaign_query_duration_seconds_count", status="other") == 1
    assert _sample(r, "templ_campaign_worker_replacements_total", reason="other") == 1
    (finished,) = [e for e in _lines(tel_json.stream) if e["event"] == c.EVENT_QUERY_FINISHED]
    assert finished["status_raw"] == "exploded" and finished["reason_raw"] == "cosmic_ray"


# ---------------------------------------------------------------------------
# Log lines
# ---------------------------------------------------------------------------
def test_a_failed_query_is_a_warning_with_its_id_reason_and_detail(tel_info):
    rec = Recorder()
    rec(_finished("ZINC000123", QueryStatus.FAILED, QueryFailureReason.EMBEDDING_FAILED, conformers=0,
                  detail="ETKDG embedded 0 of 10 conformers"))
    (line,) = _lines(tel_info.stream)
    assert line["event"] == "campaign.query_finished" and line["level"] == "warning"
    assert line["logger"] == "templ.campaign"
    assert (line["query_id"], line["reason"], line["detail"]) == (
        "ZINC000123", "embedding_failed", "ETKDG embedded 0 of 10 conformers")
    assert line["status"] == "failed" and line["run_id"] == "test-run"
    assert set(line) - {"timestamp", "level", "logger", "event", "run_id"} <= set(
        c.LOG_EVENTS_BY_NAME[c.EVENT_QUERY_FINISHED].fields)


def test_ok_queries_log_at_debug(tel_json):
    rec = Recorder()
    rec(QueryStarted(0, 1))
    rec(_finished("q0", index=0))
    lines = _lines(tel_json.stream)
    assert [(e["event"], e["level"]) for e in lines] == [("campaign.query_started", "debug"),
                                                        ("campaign.query_finished", "debug")]
    assert lines[1]["reason"] == "none" and lines[1]["shortfall"] is False


def test_at_info_a_million_ok_queries_write_nothing_per_query(tel_info):
    rec = Recorder()
    rec(CampaignStarted(total=3, skipped=0, templates=1))
    for index in range(3):
        rec(QueryStarted(index, 1))
        rec(_finished(f"q{index}", index=index))
    rec(WorkerReplaced(PROCESS, ReplacementReason.WORKER_LOST, "worker 4242 exited with -9"))
    rec(CampaignDone(done=3, ok=3, failed=0, seconds=1.5, interrupted=False))
    events = [(e["event"], e["level"]) for e in _lines(tel_info.stream)]
    assert events == [("campaign.started", "info"), ("campaign.worker_replaced", "warning"),
                      ("campaign.done", "info")]


# ---------------------------------------------------------------------------
# Spans
# ---------------------------------------------------------------------------
def _stages(carrier: dict[str, str], pid: int = 4242) -> tuple[StageTiming, ...]:
    """What a worker sends back with its result: the stages it timed under the query's carrier."""
    generate = start_worker_span(carrier, pid).finish()
    score = start_worker_span(carrier, pid).finish()
    return (ConformersTimed(generate, isomer=0, requested=10, generated=10, threads=1),
            ScoringTimed(score, isomer=0, templates=1, scored=10, failed=0))


def test_query_spans_are_traces_of_their_own_linked_to_the_campaign_with_the_workers_spans_below(tel):
    rec = Recorder()
    rec(CampaignStarted(total=2, skipped=0, templates=1, workers_requested=4))
    first, second = QueryStarted(0, 1), QueryStarted(1, 2)
    rec(first)
    rec(second)
    for query in (first, second):
        (traceparent,) = query.carrier.values()
        assert list(query.carrier) == ["traceparent"] and traceparent.startswith("00-")
    stages = _stages(first.carrier)
    rec(_finished("bad-1", QueryStatus.FAILED, QueryFailureReason.INVALID_SMILES, conformers=0, in_flight=1,
                  index=1))  # queries overlap: the second ends first
    rec(_finished("q0", index=0, stages=stages))
    rec(WorkerReplaced(PROCESS, ReplacementReason.WORKER_LOST, "exit -9"))
    rec(CampaignDone(done=2, ok=1, failed=1, seconds=1.0, interrupted=False, workers_granted=2))

    spans = {s.name if s.name != c.SPAN_QUERY else (s.name, s.attributes[c.ATTR_QUERY_INDEX]): s
             for s in tel.exporter.get_finished_spans()}
    root = spans[c.SPAN_CAMPAIGN]
    assert root.parent is None
    assert dict(root.attributes) == {
        c.ATTR_CAMPAIGN_TOTAL: 2, c.ATTR_CAMPAIGN_SKIPPED: 0, c.ATTR_CAMPAIGN_TEMPLATES: 1, c.ATTR_WORKERS_REQUESTED: 4,
        c.ATTR_WORKERS_GRANTED: 2, c.ATTR_CAMPAIGN_DONE: 2, c.ATTR_CAMPAIGN_OK: 1, c.ATTR_CAMPAIGN_FAILED: 1,
        c.ATTR_CAMPAIGN_SECONDS: 1.0, c.ATTR_CAMPAIGN_INTERRUPTED: False}
    assert set(root.attributes) <= set(c.SPANS_BY_NAME[c.SPAN_CAMPAIGN].attributes)
    # its start and end are the span's own: only what happened during it is a span event
    assert [e.name for e in root.events] == [c.EVENT_WORKER_REPLACED]
    for event in root.events:
        assert set(event.attributes) <= set(c.SPAN_EVENT_ATTRIBUTES[event.name])

    ok, bad = spans[(c.SPAN_QUERY, 0)], spans[(c.SPAN_QUERY, 1)]
    for query in (ok, bad):
        assert query.parent is None and query.context.trace_id != root.context.trace_id
        assert [link.context for link in query.links] == [root.context]
        assert set(query.attributes) <= set(c.SPANS_BY_NAME[c.SPAN_QUERY].attributes)
    assert ok.attributes[c.ATTR_QUERY_STATUS] == "ok" and ok.attributes[c.ATTR_QUERY_REASON] == c.NO_REASON
    assert ok.status.status_code is StatusCode.UNSET
    assert bad.attributes[c.ATTR_QUERY_STATUS] == "failed"
    assert bad.attributes[c.ATTR_QUERY_REASON] == "invalid_smiles" and bad.attributes[c.ATTR_QUERY_ID] == "bad-1"
    assert bad.status.status_code is StatusCode.ERROR and bad.status.description == "invalid_smiles"

    for name in (c.SPAN_CONFORMERS, c.SPAN_SCREEN_SCORE):
        worker = spans[name]
        assert worker.parent.span_id == ok.context.span_id and worker.context.trace_id == ok.context.trace_id
        assert worker.attributes[c.ATTR_PROCESS_PID] == 4242 and worker.attributes[c.ATTR_QUERY_ISOMER] == 0
        assert set(worker.attributes) <= set(c.SPANS_BY_NAME[name].attributes)
        assert ok.start_time <= worker.start_time <= worker.end_time <= ok.end_time
    assert spans[c.SPAN_CONFORMERS].attributes[c.ATTR_WORKERS_GRANTED] == 1
    score = spans[c.SPAN_SCREEN_SCORE].attributes
    assert (score[c.ATTR_QUERY_TEMPLATES], score[c.ATTR_QUERY_SCORED], score[c.ATTR_QUERY_FAILED]) == (1, 10, 0)
    assert not trace.get_current_span().is_recording()


def test_a_query_ends_once_and_open_queries_are_abandoned_when_a_signal_ends_the_campaign(tel):
    rec = Recorder()
    rec(CampaignStarted(total=None, skipped=0, templates=1, workers_requested=2))
    done, running = QueryStarted(0, 1), QueryStarted(1, 2)
    rec(done)
    rec(running)
    stages = _stages(done.carrier)
    for _ in range(2):  # a second result for one query makes no second span
        rec(_finished("q0", conformers=5, index=0, stages=stages))
    rec(CampaignDone(done=1, ok=1, failed=0, seconds=1.0, interrupted=True, workers_granted=2))  # a signal: no error
    spans = tel.exporter.get_finished_spans()
    queries = {s.attributes[c.ATTR_QUERY_INDEX]: s for s in spans if s.name == c.SPAN_QUERY}
    assert len(queries) == 2 and len([s for s in spans if s.name == c.SPAN_SCREEN_SCORE]) == 1  # ended once
    assert queries[1].attributes[c.ATTR_QUERY_STATUS] == c.QUERY_ABANDONED
    assert queries[1].status.status_code is StatusCode.UNSET  # a signal is not the query's fault
    (root,) = [s for s in spans if s.name == c.SPAN_CAMPAIGN]
    assert root.attributes[c.ATTR_CAMPAIGN_INTERRUPTED] is True and c.ATTR_CAMPAIGN_TOTAL not in root.attributes
    assert root.status.status_code is StatusCode.UNSET
    assert queries[1].end_time <= root.end_time
    rec(_finished("q1", conformers=1, index=1))  # too late: nothing happens
    assert len(tel.exporter.get_finished_spans()) == len(spans)
    assert not trace.get_current_span().is_recording()


def test_an_exception_marks_the_campaign_span_and_is_logged(tel_json):
    rec = Recorder()
    rec(CampaignStarted(total=5, skipped=0, templates=1, workers_requested=2))
    rec(QueryStarted(0, 1))
    rec(CampaignDone(done=3, ok=3, failed=0, seconds=1.0, interrupted=False, workers_granted=2,
                     error=RuntimeError("disk full")))
    spans = {s.name: s for s in tel_json.exporter.get_finished_spans()}
    root = spans[c.SPAN_CAMPAIGN]
    assert root.status.status_code is StatusCode.ERROR and "disk full" in root.status.description
    assert [e.attributes["exception.type"] for e in root.events if e.name == "exception"] == ["RuntimeError"]
    assert root.attributes[c.ATTR_CAMPAIGN_INTERRUPTED] is False
    assert spans[c.SPAN_QUERY].attributes[c.ATTR_QUERY_STATUS] == c.QUERY_ABANDONED
    lines = _lines(tel_json.stream)
    assert not [e for e in lines if e["event"] == c.EVENT_CAMPAIGN_DONE]  # the failure line takes its place
    (failed,) = [e for e in lines if e["event"] == "campaign.failed"]
    assert failed["level"] == "error" and failed["error_type"] == "RuntimeError" and failed["done"] == 3
    assert failed["trace_id"] == format(root.context.trace_id, "032x")
    assert set(failed) - {"timestamp", "level", "logger", "event", "run_id"} <= set(
        c.LOG_EVENTS_BY_NAME["campaign.failed"].fields)
    assert not trace.get_current_span().is_recording()


def test_query_spans_outside_a_campaign_are_linked_to_the_current_span(tel):
    rec = Recorder()
    with telemetry.tracing.get_tracer().start_as_current_span("outer") as outer:
        rec(QueryStarted(7, 1))
    rec(_finished("q7", index=7))
    (span,) = [s for s in tel.exporter.get_finished_spans() if s.name == c.SPAN_QUERY]
    assert span.parent is None and [link.context for link in span.links] == [outer.get_span_context()]


@pytest.mark.parametrize("setup", ["unconfigured", "no_exporter", "disabled"])
def test_no_query_span_when_spans_go_nowhere(setup):
    """Unconfigured, recording without an exporter, or disabled: an empty carrier and nothing to end."""
    telemetry.testing.reset()
    try:
        exporter = InMemorySpanExporter()
        if setup == "no_exporter":
            telemetry.configure(log_stream=io.StringIO())
        elif setup == "disabled":
            telemetry.configure(span_exporter=exporter, enabled=False, log_stream=io.StringIO())
        rec = Recorder()
        rec(CampaignStarted(total=1, skipped=0, templates=1, workers_requested=1))
        query = QueryStarted(0, 1)
        rec(query)
        assert query.carrier == {}
        assert start_worker_span(query.carrier, 1) is None  # so the worker times nothing either
        rec(_finished("q0", index=0))
        rec(CampaignDone(done=1, ok=1, failed=0, seconds=0.1, interrupted=False, workers_granted=1))
        if setup == "disabled":
            assert exporter.get_finished_spans() == ()
    finally:
        telemetry.testing.reset()


def test_the_campaign_span_declares_only_the_span_events_the_recorder_adds():
    declared = set(c.SPANS_BY_NAME[c.SPAN_CAMPAIGN].events) - {"exception"}
    assert declared <= set(c.SPAN_EVENT_ATTRIBUTES), sorted(declared - set(c.SPAN_EVENT_ATTRIBUTES))
