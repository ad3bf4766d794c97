"""The fallback ladder under real faults: killed workers, missing modules, many calls."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import psutil
import pytest

from templ_pipeline.core.executor import Rung, plan_ladder
from templ_pipeline.core.scoring import select_best_with_report


def _signature(selection):
    return [(item.conf_id, item.shape, item.color) for item in selection.ordered]


@pytest.fixture(scope="module")
def big_query():
    from templ_pipeline.core.conformers import generate_conformers

    return generate_conformers("O=C(Nc1cccnc1)c1ccc(F)cc1OC", 120, seed=3)


def test_ladder_for_scoring_halves_the_processes_and_ends_sequential():
    assert plan_ladder(8, in_daemon=False) == [
        Rung("process", 8), Rung("process", 4), Rung("process", 2), Rung("sequential", 1)
    ]
    assert plan_ladder(5, in_daemon=False) == [Rung("process", 5), Rung("process", 2), Rung("sequential", 1)]
    assert plan_ladder(4, in_daemon=True) == [Rung("sequential", 1)]
    assert plan_ladder(1, in_daemon=False) == [Rung("sequential", 1)]


def test_worker_killed_mid_batch_gives_identical_results(big_query, template, tel):
    reference = select_best_with_report(big_query, template, n_workers=1)
    killed: list[int] = []

    def kill_a_worker(result):
        # the worker that scored this batch: one of this call's pool (not the newest child, which after the
        # kernel's pids wrap around may be multiprocessing's resource tracker), and never this process
        if killed or result.pid == os.getpid():
            return
        os.kill(result.pid, signal.SIGKILL)
        killed.append(result.pid)

    selection = select_best_with_report(big_query, template, n_workers=2, on_batch=kill_a_worker)
    assert killed
    assert _signature(selection) == _signature(reference)
    report = selection.report
    assert report.n_scored + report.n_failed == big_query.GetNumConformers()
    assert report.n_scored == reference.report.n_scored
    assert any(f.reason == "broken_pool" and f.from_kind == "process" for f in report.fallbacks), report.fallbacks
    broken = {"from_kind": "process", "to_kind": report.executor_kinds[-1], "reason": "broken_pool", "cause": "none"}
    assert tel.registry.get_sample_value("templ_executor_fallbacks_total", broken) == 1
    assert tel.registry.get_sample_value("templ_executor_pool_restarts_total", {"executor_kind": "process"}) == 1
    # counted once: the conformers of the lost batches were re-run, not double counted
    assert tel.registry.get_sample_value("templ_conformers_scored_total") == 2 * reference.report.n_scored
    (call_span,) = [s for s in tel.exporter.get_finished_spans() if s.name == "select_best"][1:]
    assert any(e.name == "executor.fallback" and e.attributes["templ.executor.reason"] == "broken_pool"
               for e in call_span.events)
    batches = [s for s in tel.exporter.get_finished_spans()
               if s.name == "select_best.batch" and s.parent.span_id == call_span.context.span_id]
    assert sorted(s.attributes["templ.batch.index"] for s in batches) == list(range(report.n_batches))
    logged = [e for e in tel.logs if e["event"] == "executor.fallback"]
    assert logged and logged[0]["reason"] == "broken_pool"
    assert logged[0]["trace_id"] == format(call_span.context.trace_id, "032x")
    # the next call gets a fresh, healthy pool
    again = select_best_with_report(big_query, template, n_workers=2)
    assert again.report.executor_kinds == ["process"] and not again.report.fallbacks
    assert _signature(again) == _signature(reference)


def _run_python(code: str, timeout: float = 240) -> dict:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


SCENARIO_PRELUDE = """
import json, sys
{block}
from templ_pipeline.core.conformers import generate_conformers
from templ_pipeline.core.scoring import select_best_with_report
from templ_pipeline.io import examples
template = next(e.template for e in examples() if e.name == "mpro")
confs = generate_conformers("O=C(Nc1cccnc1)c1ccc(F)cc1OC", 40, seed=3)
"""


def test_works_without_psutil():
    code = SCENARIO_PRELUDE.format(block="sys.modules['psutil'] = None  # import psutil now raises ImportError") + """
from templ_pipeline.core import thread_manager
ref = select_best_with_report(confs, template, n_workers=1)
sel = select_best_with_report(confs, template, n_workers=2)
def scores(result):
    return [(i.conf_id, i.shape, i.color) for i in result.ordered]
print(json.dumps({"psutil": "psutil" in sys.modules and sys.modules["psutil"] is not None,
                  "same": scores(sel) == scores(ref), "kinds": sel.report.executor_kinds,
                  "scored": sel.report.n_scored}))
"""
    out = _run_python(code)
    assert out == {"psutil": False, "same": True, "kinds": ["process"], "scored": 40}


def test_thread_manager_import_failure_caps_at_four_workers():
    code = SCENARIO_PRELUDE.format(
        block="sys.modules['templ_pipeline.core.thread_manager'] = None  # the manager cannot be imported"
    ) + """
from templ_pipeline import telemetry
from templ_pipeline.core import events
from templ_pipeline.core.events import as_fields
from templ_pipeline.core.executor import get_executor
events.subscribe_process(telemetry.observe)  # every call recorded, as the CLI wires it
ex = get_executor(8)
sel = select_best_with_report(confs, template, n_workers=8)
counted = telemetry.get_metrics().registry.get_sample_value(
    "templ_executor_worker_reductions_total", {"task_type": "scoring", "reason": "manager_unavailable"})
print(json.dumps({"granted": ex.workers, "grant_reason": ex.grant.reason,
                  "reductions": [as_fields(r) for r in sel.report.reductions],
                  "report_granted": sel.report.workers_granted,
                  "scored": sel.report.n_scored, "counted": counted}))
"""
    out = _run_python(code)
    assert out["granted"] == 4 and out["report_granted"] == 4
    assert out["scored"] == 40
    assert [r["reason"] for r in out["reductions"]] == ["manager_unavailable"]
    assert out["grant_reason"] == "manager_unavailable"
    assert out["counted"] == 1  # reported by the executor that ran; the one only built reports nothing


def _os_threads() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("Threads:"))


def test_many_calls_reuse_the_pool_and_leak_nothing(query_confs, template):
    small = query_confs
    select_best_with_report(small, template, n_workers=2)
    threads, children = _os_threads(), len(psutil.Process().children(recursive=True))
    for _ in range(199):
        selection = select_best_with_report(small, template, n_workers=2)
        assert selection.report.executor_kinds == ["process"]
    assert _os_threads() == threads
    assert len(psutil.Process().children(recursive=True)) == children


def _select_in_daemon(confs, template, queue):
    selection = select_best_with_report(confs, template, n_workers=2)
    queue.put((_signature(selection), selection.report.executor_kinds, selection.report.fallbacks))


def test_daemon_process_runs_sequentially_with_reason(query_confs, template):
    import multiprocessing

    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    daemon = context.Process(target=_select_in_daemon, args=(query_confs, template, queue), daemon=True)
    daemon.start()
    try:
        signature, kinds, fallbacks = queue.get(timeout=120)
    finally:
        daemon.join(timeout=30)
        if daemon.is_alive():
            daemon.kill()
    reference = select_best_with_report(query_confs, template, n_workers=1)
    assert signature == _signature(reference)
    assert kinds == ["sequential"]
    assert [(f.from_kind, f.to_kind, f.reason) for f in fallbacks] == [
        ("process", "sequential", "daemon_process")
    ]


def test_concurrent_calls_with_different_worker_counts_share_pools_safely(query_confs, template):
    """A call that needs another pool size must not shut down the pool another call is using."""
    import threading

    reference = _signature(select_best_with_report(query_confs, template, n_workers=1))
    results, errors = [], []

    def call(workers: int) -> None:
        try:
            for _ in range(6):
                results.append((_signature(select_best_with_report(query_confs, template, n_workers=workers)),
                                workers))
        except Exception as exc:  # collected: the assertion below names it
            errors.append(repr(exc))

    threads = [threading.Thread(target=call, args=(workers,)) for workers in (2, 3, 2, 3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors, errors
    assert len(results) == 24
    assert all(signature == reference for signature, _ in results)
    threads_before = _os_threads()
    select_best_with_report(query_confs, template, n_workers=2)  # retired pools are gone once released
    assert _os_threads() <= threads_before
