"""select_best inside a real child pids cgroup with little headroom: same results, visible reasons."""

from __future__ import annotations

import sys
import textwrap

import pytest
from cgroup_fixtures import child_pids_cgroup  # noqa: F401  (fixture)

from templ_pipeline.core.conformers import generate_conformers
from templ_pipeline.core.scoring import select_best_with_report

QUERY = "O=C(Nc1cccnc1)c1ccc(F)cc1OC"

SCENARIO = textwrap.dedent(
    """
    import json, sys, threading
    import structlog
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from templ_pipeline import telemetry
    from templ_pipeline.core import events
    from templ_pipeline.core.conformers import generate_conformers
    from templ_pipeline.core.events import WorkersGranted, WorkersReduced, as_fields
    from templ_pipeline.core.scoring import select_best_with_report
    from templ_pipeline.io import examples

    exporter = InMemorySpanExporter()
    telemetry.configure(span_exporter=exporter, synchronous=True, log_format="json", log_stream=sys.stderr)
    events.subscribe_process(telemetry.observe)  # every call recorded, as the CLI wires it
    template = next(e.template for e in examples() if e.name == "mpro")
    confs = generate_conformers(%(query)r, 40, seed=3)
    mode = sys.argv[1]
    print("READY", flush=True)
    sys.stdin.readline()  # the test sets pids.max now, a known headroom above what this process uses
    blockers, release, granted = [], threading.Event(), []

    def use_up_the_headroom(event):
        # the grant is taken while there is headroom; then other tasks of the cgroup use it up
        if isinstance(event, (WorkersGranted, WorkersReduced)) and not granted:
            granted.append(event.granted)
            while True:
                try:
                    t = threading.Thread(target=release.wait); t.start(); blockers.append(t)
                except RuntimeError:
                    break

    race = {"observers": [use_up_the_headroom], "exact_workers": True} if mode == "race" else {}
    with structlog.testing.capture_logs() as logs:
        selection = select_best_with_report(confs, template, n_workers=4, **race)
    release.set()
    for t in blockers:
        t.join()
    registry = telemetry.get_metrics().registry
    fallbacks = [
        {**s.labels, "value": s.value}
        for metric in registry.collect() if metric.name == "templ_executor_fallbacks"
        for s in metric.samples if s.name.endswith("_total") and s.value > 0
    ]
    spans = exporter.get_finished_spans()
    events = [
        {"name": e.name, **{k: v for k, v in e.attributes.items()}}
        for s in spans if s.name == "select_best" for e in s.events
    ]
    print(json.dumps({
        "signature": [[i.conf_id, i.shape, i.color] for i in selection.ordered],
        "fallbacks": fallbacks,
        "report_fallbacks": [as_fields(f) for f in selection.report.fallbacks],
        "reductions": [as_fields(r) for r in selection.report.reductions],
        "span_events": events,
        "batch_spans": sum(1 for s in spans if s.name == "select_best.batch"),
        "log_events": [{k: v for k, v in e.items() if k in ("event", "reason", "cause", "from_kind", "to_kind",
                        "trace_id")} for e in logs if e["event"].startswith("executor.")],
        "scored_total": registry.get_sample_value("templ_conformers_scored_total"),
        "blockers": len(blockers),
        "granted": granted[0] if mode == "race" else None,
    }))
    """
) % {"query": QUERY}


@pytest.fixture(scope="module")
def reference():
    from templ_pipeline.io import examples

    template = next(e.template for e in examples() if e.name == "mpro")
    selection = select_best_with_report(generate_conformers(QUERY, 40, seed=3), template, n_workers=1)
    return [[i.conf_id, i.shape, i.color] for i in selection.ordered]


def _run_in(cgroup, mode: str, headroom: int) -> dict:
    """Run the scenario in ``cgroup`` with pids.max = its tasks once loaded + ``headroom``."""
    return cgroup.run_loaded([sys.executable, "-c", SCENARIO, mode], headroom, timeout=240)


def _assert_visible(out: dict, reason: str) -> None:
    assert [f["reason"] for f in out["report_fallbacks"]][-1:] == [reason], out["report_fallbacks"]
    assert any(f["reason"] == reason for f in out["fallbacks"]), out["fallbacks"]
    assert any(e["name"] == "executor.fallback" and e["templ.executor.reason"] == reason
               for e in out["span_events"]), out["span_events"]
    logged = [e for e in out["log_events"] if e["event"] == "executor.fallback"]
    assert any(e["reason"] == reason and e["trace_id"] for e in logged), out["log_events"]
    assert out["scored_total"] == 40
    assert out["batch_spans"] >= 1


def test_little_headroom_runs_sequentially_with_the_reason(child_pids_cgroup, reference):
    out = _run_in(child_pids_cgroup, "plain", headroom=3)
    assert out["signature"] == reference
    assert out["reductions"] and out["reductions"][0]["reason"] == "pids_cgroup"
    _assert_visible(out, "no_headroom")
    assert any(e["name"] == "executor.workers_reduced" for e in out["span_events"])


def test_headroom_used_up_after_the_grant_falls_back_on_start_failure(child_pids_cgroup, reference):
    out = _run_in(child_pids_cgroup, "race", headroom=40)
    assert out["granted"] >= 2 and out["blockers"] > 0
    assert out["signature"] == reference
    _assert_visible(out, "process_start_failed")
    failed_start = [f for f in out["report_fallbacks"] if f["reason"] == "process_start_failed"]
    assert all(f["cause"] == "pids_cgroup" for f in failed_start), failed_start
    assert any(f.get("cause") == "pids_cgroup" for f in out["fallbacks"])
