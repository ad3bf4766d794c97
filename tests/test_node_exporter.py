"""The host-wide limits TEMPL exports are the ones a real node_exporter reports for the same host."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from processes import stop
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from telemetry.metrics import TemplMetrics, update_thread_gauges
from telemetry.server import Address, serve_metrics
from templ_pipeline.core.thread_manager import ThreadResourceManager

NODE_EXPORTER = shutil.which("prometheus-node-exporter") or shutil.which("node_exporter")
START_SECONDS = 30

pytestmark = pytest.mark.skipif(
    NODE_EXPORTER is None,
    reason="prometheus-node-exporter is not installed (make test installs the Debian package)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


def _samples(text: str) -> dict[tuple[str, frozenset], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


@pytest.fixture
def node_exporter() -> Iterator[str]:
    """node_exporter on a free loopback port with only the processes collector; its /metrics URL."""
    port = _free_port()
    with tempfile.TemporaryFile(mode="w+") as log:
        process = subprocess.Popen(
            [NODE_EXPORTER, "--collector.disable-defaults", "--collector.processes", "--web.disable-exporter-metrics",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}/metrics"
            deadline = time.monotonic() + START_SECONDS
            while True:
                if process.poll() is not None:
                    log.seek(0)
                    pytest.fail(f"node_exporter exited with {process.returncode}: {log.read()[-3000:]}")
                try:
                    _get(url)
                    break
                except OSError:
                    assert time.monotonic() < deadline, "node_exporter did not answer in time"
                    time.sleep(0.1)
            yield url
        finally:
            stop(process, grace=10)


def test_threads_max_and_pid_max_agree_with_node_exporter(node_exporter):
    registry = CollectorRegistry()
    metrics = TemplMetrics(registry, process_collectors=False)
    update_thread_gauges(ThreadResourceManager().snapshot(fresh=True), metrics)
    server = serve_metrics(Address("127.0.0.1", 0), registry)
    assert server is not None, "the metrics server could not start its thread"
    try:
        ours = _samples(_get(server.url))
    finally:
        server.stop()
    theirs = _samples(_get(node_exporter))
    assert theirs[("node_scrape_collector_success", frozenset({("collector", "processes")}))] == 1

    threads_max = ours[("templ_thread_limit", frozenset({("limit", "threads_max")}))]
    pid_max = ours[("templ_thread_limit", frozenset({("limit", "pid_max")}))]
    assert threads_max == theirs[("node_processes_max_threads", frozenset())]
    assert pid_max == theirs[("node_processes_max_processes", frozenset())]
    # both are the sysctls as this process sees them
    assert threads_max == int(Path("/proc/sys/kernel/threads-max").read_text())
    assert pid_max == int(Path("/proc/sys/kernel/pid_max").read_text())
