"""The /metrics endpoint in-process: prometheus-client's WSGI app (gzip, name[], OpenMetrics), HEAD,
/healthz, port 0, and scrapes answered when no thread can start."""

from __future__ import annotations

import gzip
import http.client
import json
import os
import select
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import urllib.request
from pathlib import Path

import pytest
from processes import stop
from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from templ_pipeline.telemetry.server import Address, MetricsServer, MetricsServerError, serve_metrics

pytestmark = pytest.mark.fast

ROOT = Path(__file__).resolve().parents[1]
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def _registry() -> CollectorRegistry:
    """Fixed values, so two renderings are byte-identical (no process collector)."""
    registry = CollectorRegistry()
    Gauge("templ_build_info", "Build information.", ["version"], registry=registry).labels(version="9.9").set(1)
    Gauge("templ_demo_events", "Events.", ["kind"], registry=registry).labels(kind="a").set(3)
    return registry


@pytest.fixture
def server():
    running = serve_metrics(Address("127.0.0.1", 0), _registry())
    assert running is not None
    try:
        yield running
    finally:
        running.stop()


def request(server: MetricsServer | int, method: str, path: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    """(status, lower-cased headers, body) of one request to ``server`` (or a port on 127.0.0.1)."""
    port = server if isinstance(server, int) else server.port
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path, headers=headers)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def test_port_zero_binds_a_free_port_and_reports_it(server):
    assert server.port > 0 and server.address == Address("127.0.0.1", server.port)
    assert server.url == f"http://127.0.0.1:{server.port}/metrics"
    with socket.create_connection(("127.0.0.1", server.port), timeout=5):
        pass
    status, _, body = request(server, "GET", "/healthz")
    assert (status, body) == (200, b"ok\n")


def test_stop_ends_the_serving_thread_and_frees_the_port_after_a_client_reset_before_it_was_accepted():
    running = serve_metrics(Address("127.0.0.1", 0), _registry())
    assert running is not None
    try:
        for _ in range(3):  # connect and reset at once (SO_LINGER 0): the loop must not wait on such a client
            with socket.create_connection(("127.0.0.1", running.port), timeout=10) as client:
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        assert request(running, "GET", "/healthz")[0::2] == (200, b"ok\n")
    finally:
        running.stop()
    running.stop()  # again: nothing (its descriptors' numbers may be other files' by now)
    assert "templ-metrics" not in [thread.name for thread in threading.enumerate()]
    with socket.socket() as again:  # nothing listens on the port: a new server could bind it (as the next run's)
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", running.port))
    with pytest.raises(OSError):
        request(running, "GET", "/healthz")


def test_a_taken_port_is_an_error_that_leaves_no_descriptor_open(server):
    open_before = len(os.listdir("/proc/self/fd"))
    for _ in range(3):
        with pytest.raises(MetricsServerError) as taken:
            serve_metrics(Address("127.0.0.1", server.port), _registry())
        assert taken.value.in_use
    assert len(os.listdir("/proc/self/fd")) == open_before


def test_ipv6_loopback_with_port_zero():
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    running = serve_metrics(Address("::1", 0), _registry())
    assert running is not None
    try:
        assert running.port > 0 and running.url == f"http://[::1]:{running.port}/metrics"
        with urllib.request.urlopen(running.url.replace("/metrics", "/healthz"), timeout=10) as response:
            assert response.read() == b"ok\n"
    finally:
        running.stop()


def test_gzip_when_asked_and_plain_otherwise(server):
    status, headers, body = request(server, "GET", "/metrics", **{"Accept-Encoding": "gzip"})
    assert status == 200 and headers["content-encoding"] == "gzip"
    text = gzip.decompress(body).decode()
    assert 'templ_build_info{version="9.9"} 1.0' in text
    status, headers, plain = request(server, "GET", "/metrics")
    assert "content-encoding" not in headers and plain.decode() == text


def test_name_filter_returns_only_that_family(server):
    status, _, body = request(server, "GET", "/metrics?name[]=templ_build_info")
    assert status == 200
    assert [family.name for family in parse_text(body.decode())] == ["templ_build_info"]
    _, _, everything = request(server, "GET", "/metrics")
    assert {family.name for family in parse_text(everything.decode())} == {"templ_build_info", "templ_demo_events"}


def test_openmetrics_by_accept_header(server):
    status, headers, body = request(server, "GET", "/metrics", Accept=OPENMETRICS)
    assert status == 200 and headers["content-type"].startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")
    families = {family.name: family for family in parse_openmetrics(body.decode())}
    assert families["templ_demo_events"].samples[0].value == 3


def test_head_sends_the_get_headers_and_no_body(server):
    _, get_headers, get_body = request(server, "GET", "/metrics")
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"HEAD /metrics HTTP/1.0\r\n\r\n")
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200") and body == b""
    headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n")[1:])
    assert headers["Content-Type"] == get_headers["content-type"]
    assert int(headers["Content-Length"]) == len(get_body) > 0


def test_healthz_and_unknown_paths(server):
    assert request(server, "GET", "/healthz")[0::2] == (200, b"ok\n")
    assert request(server, "HEAD", "/healthz")[0::2] == (200, b"")
    status, _, body = request(server, "GET", "/nope")
    assert status == 404 and b"/metrics" in body
    assert request(server, "GET", "/")[0] == 200  # Prometheus' default path is /metrics; / serves it too


# Runs in a child: serve, then make every new thread's stack mmap fail (a 512 MiB stack
# with the address space capped 256 MiB above its current size), say so, and keep serving.
CHILD = textwrap.dedent(
    """
    import json, resource, select, sys, threading
    from prometheus_client import CollectorRegistry, Gauge
    from templ_pipeline.telemetry.server import Address, serve_metrics

    def vmsize():
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024

    registry = CollectorRegistry()
    Gauge("templ_build_info", "Build information.", ["version"], registry=registry).labels(version="9.9").set(1)
    Gauge("templ_other", "Other.", registry=registry).set(2)
    server = serve_metrics(Address("127.0.0.1", 0), registry)
    threading.stack_size(512 * 1024 * 1024)
    resource.setrlimit(resource.RLIMIT_AS, (vmsize() + 256 * 1024 * 1024, resource.RLIM_INFINITY))
    try:
        threading.Thread(target=lambda: None).start()
        failed = False
    except RuntimeError:
        failed = True
    print(json.dumps({"port": server.port, "thread_start_failed": failed}), flush=True)
    select.select([sys.stdin], [], [], 60)  # until the test closes stdin (or a minute)
    server.stop()
    """
)


@pytest.fixture
def starved_server():
    """(port, thread_start_failed) of a server in a child process that can start no thread."""
    proc = subprocess.Popen([sys.executable, "-c", CHILD], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        readable, _, _ = select.select([proc.stdout], [], [], 60)
        assert readable, "the child never said it was ready"
        line = proc.stdout.readline()
        assert line, proc.communicate(timeout=30)
        ready = json.loads(line)
        yield ready["port"], ready["thread_start_failed"]
    finally:
        proc.stdin.close()
        stop(proc)


def test_scrapes_are_answered_when_no_thread_can_start(starved_server):
    port, thread_start_failed = starved_server
    assert thread_start_failed, "precondition: thread start must really fail in the child"
    for _ in range(5):  # a thread per request would fail on the first
        status, headers, body = request(port, "GET", "/metrics?name[]=templ_build_info",
                                        **{"Accept-Encoding": "gzip", "Accept": OPENMETRICS})
        assert status == 200 and headers["content-encoding"] == "gzip"
        families = [family.name for family in parse_openmetrics(gzip.decompress(body).decode())]
        assert families == ["templ_build_info"]
    assert request(port, "GET", "/healthz")[0::2] == (200, b"ok\n")
