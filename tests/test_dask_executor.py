"""The dask executor on a real LocalCluster: same results, a worker killed mid-run, no scheduler, no leaks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest
from dask_fixtures import closed_port, dask_cluster  # noqa: F401  (fixture)
from distributed import LocalCluster

from templ_pipeline.core import dask_backend
from templ_pipeline.core.conformers import generate_conformers
from templ_pipeline.core.executor import shutdown_dask
from templ_pipeline.core.scoring import select_best_with_report

N_CONFORMERS = 60
KILLED_RUN_CONFORMERS = 240  # batches long enough that one is seen in flight on a loaded machine
COUNTED = (("templ_select_best_batches_total", {"executor_kind": "dask"}), ("templ_conformers_scored_total", {}))


def _signature(selection):
    return [(item.conf_id, item.shape, item.color) for item in selection.ordered]


@pytest.fixture(scope="module")
def confs():
    return generate_conformers("O=C(Nc1cccnc1)c1ccc(F)cc1OC", N_CONFORMERS, seed=3)


@pytest.fixture(scope="module")
def local(confs, template):
    """The local executor's run (process pool of 2): what every dask run must reproduce."""
    return select_best_with_report(confs, template, n_workers=2)


def _call_span(tel):
    (span,) = [s for s in tel.exporter.get_finished_spans() if s.name == "select_best"]
    return span


def test_results_identical_to_local_executor(dask_cluster, confs, template, local, tel):
    selection = select_best_with_report(confs, template, n_workers=2, executor="dask",
                                        scheduler=dask_cluster.address)
    assert _signature(selection) == _signature(local)
    report = selection.report
    assert report.executor_kinds == ["dask"] and not report.fallbacks and not report.resubmissions
    assert report.workers_granted == 2 and report.n_scored == local.report.n_scored
    registry = tel.registry
    assert registry.get_sample_value("templ_select_best_batches_total", {"executor_kind": "dask"}) == report.n_batches
    assert registry.get_sample_value("templ_conformers_scored_total") == report.n_scored
    # the trace context went with each task: batch spans timed in the workers, children of this call
    call = _call_span(tel)
    batches = [s for s in tel.exporter.get_finished_spans() if s.name == "select_best.batch"]
    assert sorted(s.attributes["templ.batch.index"] for s in batches) == list(range(report.n_batches))
    assert all(s.parent.span_id == call.context.span_id for s in batches)
    assert {s.attributes["process.pid"] for s in batches} <= set(dask_cluster.worker_pids().values())


def test_scheduler_from_environment_and_client_reused(dask_cluster, confs, template, local, tel, monkeypatch):
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", dask_cluster.address)
    selection = select_best_with_report(confs, template, n_workers=2, executor="dask")
    assert _signature(selection) == _signature(local)
    assert selection.report.executor_kinds == ["dask"]
    created = [e for e in tel.logs if e["event"] == "executor.created" and e["executor_kind"] == "dask"]
    assert [e["reused"] for e in created] == [True]  # the client of the previous test


def test_unreachable_scheduler_falls_back_to_local_run(confs, template, local, tel):
    address = closed_port()
    started = time.perf_counter()
    selection = select_best_with_report(confs, template, n_workers=2, executor="dask", scheduler=address)
    assert time.perf_counter() - started < dask_backend.CONNECT_TIMEOUT + 10
    assert _signature(selection) == _signature(local)
    report = selection.report
    assert report.executor_kinds == ["process"]
    assert [(f.from_kind, f.to_kind, f.reason) for f in report.fallbacks] == [
        ("dask", "process", "scheduler_unreachable")
    ]
    labels = {"from_kind": "dask", "to_kind": "process", "reason": "scheduler_unreachable", "cause": "none"}
    assert tel.registry.get_sample_value("templ_executor_fallbacks_total", labels) == 1
    assert any(e.name == "executor.fallback" for e in _call_span(tel).events)


def _live(pids):
    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


def test_local_cluster_sized_from_grant_reused_and_closed(confs, template, local, tel, monkeypatch):
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    me = psutil.Process()
    before = {child.pid for child in me.children(recursive=True)}
    first = select_best_with_report(confs, template, n_workers=2, executor="dask")
    second = select_best_with_report(confs, template, n_workers=2, executor="dask")
    assert _signature(first) == _signature(second) == _signature(local)
    assert first.report.executor_kinds == second.report.executor_kinds == ["dask"]
    created = [e for e in tel.logs if e["event"] == "executor.created" and e["executor_kind"] == "dask"]
    assert [(e["workers"], e["reused"]) for e in created] == [(2, False), (2, True)]
    session, reused = dask_backend.SESSIONS.acquire(None, 2)
    assert reused and session.cluster is not None
    workers = list(session.client.run(os.getpid).values())
    assert len(workers) == 2 and set(workers) <= {child.pid for child in me.children(recursive=True)}
    shutdown_dask()
    assert _live(workers) == []
    new = [child for child in me.children(recursive=True) if child.pid not in before and child.is_running()]
    # multiprocessing's resource tracker is started once per process and stays by design
    assert [child.pid for child in new if "resource_tracker" not in " ".join(child.cmdline())] == []


def test_scheduler_lost_mid_run_hands_unfinished_batches_to_local_run(confs, template, local, tel):
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address="127.0.0.1:0")
    try:
        selection = select_best_with_report(confs, template, n_workers=2, executor="dask",
                                            scheduler=cluster.scheduler_address,
                                            on_batch=lambda result: cluster.close())
    finally:
        cluster.close()
        shutdown_dask()
    assert _signature(selection) == _signature(local)
    report = selection.report
    assert report.executor_kinds == ["dask", "process"]
    assert [(f.from_kind, f.to_kind, f.reason) for f in report.fallbacks] == [
        ("dask", "process", "scheduler_lost")
    ]
    assert tel.registry.get_sample_value("templ_conformers_scored_total") == local.report.n_scored
    batches = [s for s in tel.exporter.get_finished_spans() if s.name == "select_best.batch"]
    assert sorted(s.attributes["templ.batch.index"] for s in batches) == list(range(report.n_batches))


def test_worker_killed_mid_run_is_resubmitted_and_counted_once(dask_cluster, template, tel):
    """Last in this module: it kills one of the cluster's workers (its nanny starts another)."""
    confs = generate_conformers("O=C(Nc1cccnc1)c1ccc(F)cc1OC", KILLED_RUN_CONFORMERS, seed=3)
    local = select_best_with_report(confs, template, n_workers=2)
    tel.exporter.clear()  # the spans and counts below are the dask run's
    pids = dask_cluster.worker_pids()
    killed: list[str] = []
    stop = threading.Event()

    def kill_the_first_busy_worker() -> None:
        # watched from a thread, not at a batch's result: on a loaded machine every batch could be done before
        # the first result reaches the driver, and killing an idle worker resubmits nothing
        while not stop.is_set():
            busy = [worker for worker, keys in dask_cluster.client.processing().items() if keys and worker in pids]
            if busy:
                os.kill(pids[busy[0]], signal.SIGKILL)
                killed.append(busy[0])
                return
            stop.wait(0.002)

    watcher = threading.Thread(target=kill_the_first_busy_worker, name="kill-busy-worker", daemon=True)
    before = {name: tel.registry.get_sample_value(name, labels) or 0 for name, labels in COUNTED}
    watcher.start()
    try:
        selection = select_best_with_report(confs, template, n_workers=2, executor="dask",
                                            scheduler=dask_cluster.address)
    finally:
        stop.set()
        watcher.join(timeout=30)
    assert killed, "no worker was seen with a batch in flight: nothing was killed mid-run"
    assert _signature(selection) == _signature(local)
    report = selection.report
    assert report.n_scored + report.n_failed == KILLED_RUN_CONFORMERS
    assert report.executor_kinds == ["dask"] and not report.fallbacks
    assert report.resubmissions and {r.worker for r in report.resubmissions} == set(killed)
    registry = tel.registry
    resubmitted = sum(
        registry.get_sample_value("templ_executor_batch_resubmissions_total",
                                  {"executor_kind": "dask", "reason": reason}) or 0
        for reason in ("worker_lost", "result_lost")
    )
    assert resubmitted == len(report.resubmissions)
    # counted once, in the driver, when each batch's result arrived (the local run before it counted its own)
    after = {name: registry.get_sample_value(name, labels) or 0 for name, labels in COUNTED}
    assert after["templ_select_best_batches_total"] - before["templ_select_best_batches_total"] == report.n_batches
    assert after["templ_conformers_scored_total"] - before["templ_conformers_scored_total"] == local.report.n_scored
    events = [e for e in _call_span(tel).events if e.name == "executor.batch_resubmitted"]
    assert len(events) == len(report.resubmissions)
    assert events[0].attributes["templ.executor.worker"] == killed[0]
    logged = [e for e in tel.logs if e["event"] == "executor.batch_resubmitted"]
    assert [e["index"] for e in logged] == [r.index for r in report.resubmissions]
    batches = [s for s in tel.exporter.get_finished_spans() if s.name == "select_best.batch"]
    assert sorted(s.attributes["templ.batch.index"] for s in batches) == list(range(report.n_batches))


def test_local_cluster_cost_model_covers_a_real_local_cluster():
    """The grant counts what a LocalCluster starts: its threads here and its processes' tasks, measured in a
    fresh process (this one holds other tests' clusters and pools)."""
    from templ_pipeline.core.limits.worker_cost import worker_cost

    script = ("from templ_pipeline.core.limits.worker_cost import measure_local_cluster_tasks as m\n"
              "if __name__ == '__main__':\n    print(m(2))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-2000:]
    cost = worker_cost("dask")
    workers, measured = 2, int(done.stdout.split()[-1])
    predicted = cost.fixed_tasks + cost.per_worker * workers
    assert predicted - 2 * workers <= measured <= predicted, (measured, predicted)
