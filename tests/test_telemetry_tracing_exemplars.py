"""Exemplars on /metrics point only at traces that are exported: a sampled span with a span exporter."""

from __future__ import annotations

import io
import json
import urllib.request

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import TraceFlags
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from recorder_events import batch_done, worker_span

from templ_pipeline import telemetry
from templ_pipeline.core.events import ExecutorKind, SelectBestFinished, SelectBestStarted
from templ_pipeline.core.trace_context import WorkerSpan
from templ_pipeline.telemetry.recorder import Recorder
from templ_pipeline.telemetry.server import Address, serve_metrics

pytestmark = pytest.mark.fast

OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
HISTOGRAMS = ("templ_select_best_duration_seconds", "templ_select_best_batch_duration_seconds")


def _configure(exporter: InMemorySpanExporter | None) -> tuple[io.StringIO, object]:
    stream = io.StringIO()
    telemetry.testing.reset()
    telemetry.configure(span_exporter=exporter, synchronous=True, log_format="json", log_stream=stream,
                        run_id="exemplars")
    return stream, telemetry.testing.reset_metrics()


@pytest.fixture
def reset():
    yield
    telemetry.testing.reset()


def _select_best() -> None:
    """A call of one in-process batch, timed under the call's span as ``select_best`` times it."""
    rec = Recorder()
    rec(SelectBestStarted(10, 1))
    rec(batch_done(0, 10, ExecutorKind.SEQUENTIAL, span=worker_span()))
    rec(SelectBestFinished(10, 1, 1, ExecutorKind.SEQUENTIAL, 10, {}, 0.05))


def _exemplars(registry) -> dict[str, list[dict[str, str]]]:
    """Exemplar labels per histogram, read from a real /metrics scrape in OpenMetrics."""
    server = serve_metrics(Address("127.0.0.1", 0), registry)
    try:
        request = urllib.request.Request(server.url, headers={"Accept": OPENMETRICS})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.headers["Content-Type"].startswith("application/openmetrics-text")
            body = response.read().decode()
    finally:
        server.stop()
    families = {family.name: family for family in parse_openmetrics(body)}
    return {name: [dict(s.exemplar.labels) for s in families[name].samples if s.exemplar] for name in HISTOGRAMS}


def test_exported_spans_get_exemplars_naming_them(reset):
    exporter = InMemorySpanExporter()
    _, metrics = _configure(exporter)
    _select_best()
    spans = {format(s.context.span_id, "016x"): s for s in exporter.get_finished_spans()}
    found = _exemplars(metrics.registry)
    assert all(found[name] for name in HISTOGRAMS), found
    for exemplar in (e for name in HISTOGRAMS for e in found[name]):
        span = spans[exemplar["span_id"]]
        assert format(span.context.trace_id, "032x") == exemplar["trace_id"]


def test_recorded_but_unexported_spans_give_logs_trace_ids_and_no_exemplars(reset):
    stream, metrics = _configure(None)
    _select_best()
    done = [json.loads(line) for line in stream.getvalue().splitlines() if '"select_best.done"' in line]
    assert done and len(done[0]["trace_id"]) == 32, "spans are still recorded for log correlation"
    assert _exemplars(metrics.registry) == {name: [] for name in HISTOGRAMS}


@pytest.mark.parametrize("flags, expected", [(TraceFlags.SAMPLED, 1), (TraceFlags.DEFAULT, 0)])
def test_worker_span_exemplar_follows_its_sampled_flag(reset, flags, expected):
    exporter = InMemorySpanExporter()
    _, metrics = _configure(exporter)
    record = WorkerSpan(trace_id=0x1234, span_id=0x99, parent_span_id=0x42, trace_flags=int(flags),
                        start_ns=1_000, end_ns=2_000, pid=7)
    Recorder()(batch_done(0, 4, seconds=0.5, pid=7, span=record))
    batch = _exemplars(metrics.registry)["templ_select_best_batch_duration_seconds"]
    assert len(batch) == expected
    if expected:
        assert batch[0] == {"trace_id": format(0x1234, "032x"), "span_id": format(0x99, "016x")}


@pytest.mark.fast
@pytest.mark.parametrize("flags", [0, 1])
@pytest.mark.parametrize("state", [None, [("vendor", "v1"), ("other", "x")]])
def test_a_query_span_carrier_is_what_the_w3c_propagator_writes(flags, state):
    from opentelemetry import trace
    from opentelemetry.trace import SpanContext, TraceState
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    from templ_pipeline.core.trace_context import context_carrier

    context = SpanContext(0x0AF7651916CD43DD8448EB211C80319C, 0x00F067AA0BA902B7, is_remote=False,
                          trace_flags=TraceFlags(flags), trace_state=None if state is None else TraceState(state))
    expected: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(expected, context=trace.set_span_in_context(trace.NonRecordingSpan(context)))
    assert context_carrier(context) == expected
