"""The ``/metrics`` and ``/healthz`` endpoint: one serving thread, loopback by default.

The server answers requests one at a time on a single thread started up front,
so it needs no new thread per scrape: it keeps answering when the process has
no thread headroom left, which is when an operator most wants to look. A scrape
renders the registry in a few milliseconds, so queued scrapers wait little.
``/metrics`` negotiates OpenMetrics (with exemplars) from the ``Accept`` header,
as prometheus-client does.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from telemetry.guard import start_guarded
from telemetry.metrics import get_metrics

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9464
REQUEST_TIMEOUT_SECONDS = 5.0  # a stalled or malformed client cannot hold the thread longer


class MetricsServerError(RuntimeError):
    """The endpoint could not be started (address in use, bad address, ...)."""


@dataclass(frozen=True)
class Address:
    """Where to listen."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return self.host == "localhost"


def parse_address(text: str) -> Address:
    """``HOST:PORT``, ``[IPv6]:PORT`` or ``:PORT`` (loopback); a ``ValueError`` says what is wrong."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r} is not HOST:PORT (for example 127.0.0.1:9464)")
    host = host.strip("[]") or DEFAULT_HOST
    return Address(host, int(port))


class _Handler(BaseHTTPRequestHandler):
    server: _MetricsHTTPServer
    timeout = REQUEST_TIMEOUT_SECONDS
    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        path = self.path.split("?", 1)[0]
        if path in ("/metrics", "/"):
            encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
            self._reply(200, content_type, encoder(self.server.registry))
        elif path == "/healthz":
            self._reply(200, "text/plain; charset=utf-8", b"ok\n")
        else:
            self._reply(404, "text/plain; charset=utf-8", b"not found: try /metrics or /healthz\n")

    def do_HEAD(self) -> None:  # noqa: N802
        self._reply(200 if self.path.split("?", 1)[0] in ("/metrics", "/", "/healthz") else 404,
                    "text/plain; charset=utf-8", b"", head=True)

    def _reply(self, status: int, content_type: str, body: bytes, head: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (base class signature)
        """Scrapes are not logged: they would drown the job's own events."""


class _MetricsHTTPServer(HTTPServer):
    """Single-threaded HTTP server over one registry."""

    def __init__(self, address: Address, registry: CollectorRegistry) -> None:
        self.address_family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
        self.registry = registry
        super().__init__((address.host, address.port), _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up mid-reply is its own problem; keep serving."""


class MetricsServer:
    """A running endpoint; ``stop()`` shuts it down and frees the port."""

    def __init__(self, httpd: _MetricsHTTPServer, thread: threading.Thread, address: Address) -> None:
        self._httpd = httpd
        self._thread = thread
        self.address = address

    @property
    def url(self) -> str:
        return f"http://{self.address}/metrics"

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


def serve_metrics(address: Address, registry: CollectorRegistry) -> MetricsServer | None:
    """Bind ``address`` and serve ``registry`` on one background thread.

    Raises ``MetricsServerError`` when the address cannot be bound; returns None
    (after one warning, through the telemetry guard) when the serving thread
    cannot be started for lack of thread headroom.
    """
    try:
        httpd = _MetricsHTTPServer(address, registry)
    except OSError as exc:
        reason = "address in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
        raise MetricsServerError(f"cannot listen on {address}: {reason}") from exc
    if address.port == 0:
        address = Address(address.host, httpd.server_address[1])
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.2},
                              name="templ-metrics", daemon=True)

    def start() -> threading.Thread:
        thread.start()
        return thread

    if start_guarded("metrics_server", start) is None:
        httpd.server_close()
        return None
    return MetricsServer(httpd, thread, address)


def start_metrics_server(port: int, addr: str = DEFAULT_HOST) -> MetricsServer | None:
    """Serve ``/metrics`` for the process-wide registry (:func:`telemetry.metrics.get_metrics`); None if degraded."""
    return serve_metrics(Address(addr, port), get_metrics().registry)
