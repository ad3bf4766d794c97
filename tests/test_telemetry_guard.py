"""start_guarded: real thread-start failures degrade telemetry instead of crashing the pipeline."""

from __future__ import annotations

import errno
import io
import json
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from templ_pipeline import telemetry
from templ_pipeline.telemetry.guard import classify_start_error, start_guarded

pytestmark = pytest.mark.fast

ROOT = Path(__file__).resolve().parents[1]

# Runs in a child process: make every new thread's stack mmap fail by giving threads a
# 512 MiB stack while capping the address space ~256 MiB above the current size.
CHILD = textwrap.dedent(
    """
    import json, resource, sys, threading
    from templ_pipeline import telemetry
    from templ_pipeline.core.batch import BatchResult
    from templ_pipeline.core.events import BatchDone, ExecutorKind, SelectBestFinished, SelectBestStarted
    from templ_pipeline.telemetry.recorder import Recorder
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    def vmsize():
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024

    telemetry.logs.configure_logging(fmt="json", stream=sys.stderr, run_id="guard")
    metrics = telemetry.get_metrics()
    threading.stack_size(512 * 1024 * 1024)
    resource.setrlimit(resource.RLIMIT_AS, (vmsize() + 256 * 1024 * 1024, resource.RLIM_INFINITY))
    try:
        threading.Thread(target=lambda: None).start()
        plain_thread_failed = False
    except RuntimeError:
        plain_thread_failed = True

    exporter = InMemorySpanExporter()
    provider = telemetry.tracing.configure_tracing(exporter)  # asks for a BatchSpanProcessor
    processors = provider._active_span_processor._span_processors
    rec = Recorder()
    rec(SelectBestStarted(10, 2))
    rec(BatchDone(ExecutorKind.SEQUENTIAL, 10, BatchResult(0, duration_seconds=0.01)))
    rec(SelectBestFinished(10, 2, 1, ExecutorKind.SEQUENTIAL, 0, {}, 0.02))
    exported = len(exporter.get_finished_spans())  # synchronous export: visible immediately
    server = telemetry.server.start_metrics_server(0, addr="127.0.0.1")  # another thread: also degraded
    reg = metrics.registry
    print(json.dumps({
        "plain_thread_failed": plain_thread_failed,
        "processor": type(processors[0]).__name__,
        "exported": exported,
        "span_processor_degraded": reg.get_sample_value(
            "templ_telemetry_degraded_total", {"component": "span_processor", "reason": "thread_start_failed"}),
        "metrics_server_degraded": reg.get_sample_value(
            "templ_telemetry_degraded_total", {"component": "metrics_server", "reason": "thread_start_failed"}),
        "server": server,
    }))
    telemetry.tracing.shutdown_tracing()
    """
)


def test_thread_start_failure_falls_back_to_synchronous_export():
    proc = subprocess.run([sys.executable, "-c", CHILD], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["plain_thread_failed"], "precondition: thread start must really fail in the child"
    assert result["processor"] == "SimpleSpanProcessor"
    assert result["exported"] == 2
    assert result["span_processor_degraded"] == 1
    assert result["metrics_server_degraded"] == 1
    assert result["server"] is None
    logs = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    degraded = [e for e in logs if e["event"] == "telemetry.degraded"]
    assert [(e["component"], e["reason"]) for e in degraded] == [
        ("span_processor", "thread_start_failed"),
        ("metrics_server", "thread_start_failed"),
    ]
    assert degraded[0]["level"] == "warning" and "can't start new thread" in degraded[0]["error"]
    assert "Traceback" not in proc.stderr


@pytest.fixture
def fresh():
    stream = io.StringIO()
    metrics = telemetry.testing.reset()
    telemetry.logs.configure_logging(fmt="json", stream=stream, run_id="g")
    yield stream, metrics.registry
    telemetry.testing.reset()


def _start_thread_with_huge_stack_in_tiny_address_space():
    """Real failure in-process is too dangerous (RLIMIT_AS is process-wide); raise what CPython raises."""
    raise RuntimeError("can't start new thread")


def test_one_warning_per_component_but_every_failure_counted(fresh):
    stream, registry = fresh
    for _ in range(3):
        assert start_guarded("span_processor", _start_thread_with_huge_stack_in_tiny_address_space) is None
    assert registry.get_sample_value(
        "templ_telemetry_degraded_total", {"component": "span_processor", "reason": "thread_start_failed"}) == 3
    assert stream.getvalue().count('"telemetry.degraded"') == 1


def test_success_returns_value_and_counts_nothing(fresh):
    _, registry = fresh
    stop = threading.Event()
    t = start_guarded("metrics_server", lambda: _started(threading.Thread(target=stop.wait, daemon=True)))
    try:
        assert isinstance(t, threading.Thread) and t.is_alive()
    finally:
        stop.set()
        t.join(60)
    degraded = registry.get_sample_value(
        "templ_telemetry_degraded_total", {"component": "metrics_server", "reason": "thread_start_failed"})
    assert degraded in (None, 0.0)


def _started(t: threading.Thread) -> threading.Thread:
    t.start()
    return t


@pytest.mark.parametrize(
    ("code", "reason"),
    [(errno.EAGAIN, "resource_unavailable"), (errno.ENOMEM, "out_of_memory"), (errno.EPERM, "permission_denied")],
)
def test_oserror_resource_errors_degrade(fresh, code, reason):
    _, registry = fresh

    def start():
        raise OSError(code, "fork/clone failed")

    assert start_guarded("metrics_server", start) is None
    assert registry.get_sample_value(
        "templ_telemetry_degraded_total", {"component": "metrics_server", "reason": reason}) == 1


@pytest.mark.parametrize(
    "exc", [ValueError("bad config"), RuntimeError("something else"), OSError(errno.EADDRINUSE, "in use")]
)
def test_other_errors_propagate(fresh, exc):
    def start():
        raise exc

    assert classify_start_error(exc) is None
    with pytest.raises(type(exc)):
        start_guarded("metrics_server", start)


def test_no_headroom_skips_start(fresh):
    _, registry = fresh
    calls = []
    assert start_guarded("log_handler", lambda: calls.append(1), headroom=0) is None
    assert calls == []
    assert start_guarded("log_handler", lambda: calls.append(1) or "ok", headroom=5) == "ok"
    assert registry.get_sample_value(
        "templ_telemetry_degraded_total", {"component": "log_handler", "reason": "no_headroom"}) == 1
