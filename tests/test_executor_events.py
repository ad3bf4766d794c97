"""The executor reports typed events to its observers and needs no telemetry to do so."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from templ_pipeline.core.events import (
    BatchDone,
    CallDone,
    Emitter,
    ExecutorKind,
    Fallback,
    FallbackCause,
    FallbackReason,
    ReductionReason,
    TaskType,
    WorkersReduced,
    as_fields,
    cause_of,
)

pytestmark = pytest.mark.fast

# A fresh interpreter: the thread manager cannot be imported (a reduction to 4 workers, reason
# manager_unavailable), and every pool start is refused as the kernel refuses it (EAGAIN).
SCENARIO = textwrap.dedent("""
    import errno, json, sys
    sys.modules["templ_pipeline.core.thread_manager"] = None
    from templ_pipeline.core.batch import BatchResult, BatchTask
    from templ_pipeline.core.events import as_fields
    from templ_pipeline.core.executor import MonitoredExecutor
    from templ_pipeline.core.pools import PoolRegistry

    def refused(kind, workers):
        raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")

    events = []
    executor = MonitoredExecutor(8, registry=PoolRegistry(refused), observers=[events.append],
                                 fn=lambda task: BatchResult(index=task.index))
    before_run = len(events)
    tasks = [BatchTask(index, None, "", None, (index,)) for index in range(3)]
    results = [result.index for result in executor.run(tasks)]
    print(json.dumps({
        "before_run": before_run,
        "results": results,
        "events": [[type(e).__name__, {k: v for k, v in as_fields(e).items() if k != "result"}]
                   for e in events if type(e).__name__ != "LimitsObserved"],
        "errors": [type(e.error).__name__ for e in events if getattr(e, "error", None) is not None],
        "telemetry": sorted(m for m in sys.modules
                            if m.split(".")[0] in ("prometheus_client", "structlog")
                            or m.startswith("templ_pipeline.telemetry")),
    }))
""")


def test_a_forced_fallback_and_a_reduction_as_typed_events_without_telemetry():
    result = subprocess.run([sys.executable, "-c", SCENARIO], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["before_run"] == 0  # building an executor reports (and starts) nothing
    assert out["results"] == [0, 1, 2]
    assert [name for name, _ in out["events"]] == [
        "WorkersReduced", "Fallback", "Fallback", "BatchDone", "BatchDone", "BatchDone", "CallDone"]
    reduced = out["events"][0][1]
    assert reduced | {"detail": ""} == {"task_type": "scoring", "requested": 8, "granted": 4,
                                        "reason": "manager_unavailable", "detail": "", "headroom": None}
    steps = [(f["from_kind"], f["to_kind"], f["reason"]) for name, f in out["events"] if name == "Fallback"]
    assert steps == [("process", "process", "process_start_failed"), ("process", "sequential", "process_start_failed")]
    assert out["errors"] == ["BlockingIOError", "BlockingIOError"]
    assert out["events"][-1][1] == {"task_type": "scoring", "requested": 8, "granted": 4,
                                    "kinds": ["sequential"], "batches": 3}
    assert out["telemetry"] == []  # no metrics, no logging: the executor imports nothing of telemetry


def test_events_are_typed_and_compare_as_their_strings():
    event = Fallback(ExecutorKind.PROCESS, ExecutorKind.SEQUENTIAL, FallbackReason.NO_HEADROOM,
                     cause_of("pids_cgroup"), "detail")
    assert event.reason == "no_headroom" and event.cause is FallbackCause.PIDS_CGROUP
    assert cause_of(None) is FallbackCause.NONE and cause_of("manager_failed") is FallbackCause.NONE
    assert as_fields(event) == {"from_kind": "process", "to_kind": "sequential", "reason": "no_headroom",
                                "cause": "pids_cgroup", "detail": "detail"}
    reduced = WorkersReduced(TaskType.CONFORMERS, 4, 2, ReductionReason.PIDS_CGROUP)
    assert as_fields(reduced)["task_type"] == "conformers"


def test_an_observer_that_raises_does_not_stop_the_others():
    seen = []

    def broken(event):
        raise RuntimeError("a reporting bug")

    emit = Emitter([broken, seen.append])
    done = CallDone(TaskType.SCORING, 2, 2, (ExecutorKind.PROCESS,), 1)
    emit(done)
    emit.unsubscribe(broken)
    emit(BatchDone(ExecutorKind.PROCESS, 4, None))
    assert seen[0] is done and len(seen) == 2
