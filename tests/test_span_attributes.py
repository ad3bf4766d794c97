"""Every span, span attribute and span event a real run exports is declared in the catalog and documented.

Operators query span attributes by name: one set by the code but missing from the catalog (and so from
docs/telemetry.md) is an attribute nobody can find, and one documented but never set is a query that
returns nothing. The spans are read back from what real ``templ screen`` and ``templ select-best`` runs
wrote with ``--traces-file``, never built from the catalog's own names.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from templ_runs import run_templ, templ_env

from templ_pipeline.telemetry import catalog as c

DOCS = Path(__file__).resolve().parents[1] / "docs" / "telemetry.md"
DATA = Path(__file__).resolve().parents[1] / "templ_pipeline" / "data"


def _spans(traces: Path) -> list[dict]:
    return [span for line in traces.read_text().splitlines() for rs in json.loads(line)["resourceSpans"]
            for ss in rs["scopeSpans"] for span in ss["spans"]]


def _keys(item: dict) -> set[str]:
    return {attribute["key"] for attribute in item.get("attributes", [])}


def _screen(tmp: Path, traces: Path, *, env: dict[str, str] | None = None) -> None:
    queries = tmp / "queries.smi"
    queries.write_text("CC(=O)Nc1ccc(O)cc1 paracetamol\nnot_a_smiles broken\nOC(=O)c1ccccc1OC(C)=O aspirin\n"
                       "CCO ethanol\n")
    screen = run_templ("screen", "--queries", queries, "--template", DATA / "mpro_template.sdf", "--output-dir",
                       tmp / "out", "--workers", "2", "--exact-workers", "--num-conformers", "8",
                       "--traces-file", traces, "--no-metrics-server", env=env)
    assert screen.returncode == 0, screen.stderr[-3000:]


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> list[dict]:
    """The spans of a two-worker screen of four queries (one that cannot be read) and of a select-best."""
    tmp = tmp_path_factory.mktemp("spans")
    traces = tmp / "traces.jsonl"
    _screen(tmp, traces)
    best = run_templ("select-best", "--query", "CC(=O)Nc1ccc(O)cc1", "--template", DATA / "mpro_template.sdf",
                     "--num-conformers", "8", "--workers", "2", "--exact-workers", "--output", tmp / "best.sdf",
                     "--traces-file", traces,
                     "--no-metrics-server")
    assert best.returncode == 0, best.stderr[-3000:]
    return _spans(traces)


def test_the_runs_export_the_spans_of_every_stage(exported):
    names = {span["name"] for span in exported}
    assert {"templ.screen", "screen.campaign", "screen.query", "templates.choose", "conformers.generate",
            "screen.score", "templ.select_best", "select_best", "select_best.batch"} <= names


def test_every_span_and_attribute_a_run_sets_is_in_the_catalog(exported):
    assert {span["name"] for span in exported} <= set(c.SPANS_BY_NAME)
    undeclared = {(span["name"], key) for span in exported
                  for key in _keys(span) - set(c.SPANS_BY_NAME[span["name"]].attributes)}
    assert undeclared == set()


def test_every_span_event_a_run_records_is_in_the_catalog(exported):
    events = [(span["name"], event) for span in exported for event in span.get("events", [])]
    assert events, "the runs recorded no span event (a worker grant or the executor's creation at least)"
    for span_name, event in events:
        assert event["name"] in c.SPANS_BY_NAME[span_name].events, (span_name, event["name"])
        declared = set(c.SPAN_EVENT_ATTRIBUTES.get(event["name"], ()))
        if event["name"] == "exception":
            declared = {"exception.type", "exception.message", "exception.stacktrace", "exception.escaped",
                        c.ATTR_REASON, c.ATTR_CAUSE}
        assert _keys(event) <= declared, (event["name"], _keys(event) - declared)


def test_every_attribute_a_run_sets_is_documented(exported):
    text = DOCS.read_text(encoding="utf-8")
    keys = {key for span in exported for key in _keys(span)} | {
        key for span in exported for event in span.get("events", []) for key in _keys(event)}
    assert {key for key in keys if f"`{key}`" not in text} == set()


def test_each_query_is_a_trace_of_its_own_linked_to_the_campaign(exported):
    by_trace: dict[str, list[dict]] = {}
    for span in exported:
        by_trace.setdefault(span["traceId"], []).append(span)
    (campaign,) = [span for span in exported if span["name"] == "screen.campaign"]
    queries = [span for span in exported if span["name"] == "screen.query"]
    assert len(queries) == 4
    for query in queries:
        assert "parentSpanId" not in query or not query["parentSpanId"]  # the root of its trace
        assert [(link["traceId"], link["spanId"]) for link in query["links"]] == [
            (campaign["traceId"], campaign["spanId"])]
        names = sorted(span["name"] for span in by_trace[query["traceId"]])
        assert names.count("screen.query") == 1
        assert set(names) <= {"screen.query", "templates.choose", "conformers.generate", "screen.score"}
    # the campaign's own trace holds the run's root and the campaign, however many queries ran
    assert sorted(span["name"] for span in by_trace[campaign["traceId"]]) == ["screen.campaign", "templ.screen"]


def test_the_standard_sampler_decides_which_queries_are_traced(tmp_path):
    traces = tmp_path / "traces.jsonl"
    _screen(tmp_path, traces, env=templ_env(OTEL_TRACES_SAMPLER="always_off"))
    assert not traces.exists() or _spans(traces) == []
    assert (tmp_path / "out" / "scores.csv").read_text().count("\n") == 5  # the rows do not depend on it
