"""The ``/metrics`` and ``/healthz`` endpoint: prometheus-client's WSGI app on one serving thread.

``/metrics`` is ``prometheus_client.make_wsgi_app(registry)``, so content
negotiation (OpenMetrics with exemplars from the ``Accept`` header), gzip
(``Accept-Encoding: gzip``) and ``name[]`` filtering are the library's own.
What differs from ``prometheus_client.start_http_server`` is the server around
it: the library's ``ThreadingWSGIServer`` starts a thread per request, and this
one is wsgiref's plain ``WSGIServer``, answering requests one at a time on a
single thread started up front. So it needs no new thread per scrape and keeps
answering when the process has no thread headroom left, which is when an
operator most wants to look (measured: with thread starts failing, the library's
server closes each connection without a reply; this one answers). A scrape renders the registry in a few
milliseconds, so queued scrapers wait little; a stalled client is cut off after
``REQUEST_TIMEOUT_SECONDS``.

``HEAD`` gets the headers ``GET`` would get and no body (the library's app
answers ``HEAD`` with 405). Port 0 binds a free port; :attr:`MetricsServer.address`
and :attr:`MetricsServer.url` report the bound one.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import selectors
import socket
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import CollectorRegistry, make_wsgi_app

from templ_pipeline.telemetry.guard import start_guarded
from templ_pipeline.telemetry.logs import get_logger
from templ_pipeline.telemetry.metrics import get_metrics

__all__ = ["Address", "MetricsServer", "MetricsServerError", "parse_address", "serve_metrics",
           "start_metrics_server"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9464
REQUEST_TIMEOUT_SECONDS = 5.0  # a stalled or malformed client cannot hold the thread longer
METRICS_PATHS = ("/metrics", "/")
HEALTH_PATH = "/healthz"

_log = get_logger("templ.telemetry")
_TEXT = [("Content-Type", "text/plain; charset=utf-8")]

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class MetricsServerError(RuntimeError):
    """The endpoint could not be started (address in use, bad address, ...); ``in_use``: another socket has
    the address."""

    def __init__(self, message: str, *, in_use: bool = False) -> None:
        super().__init__(message)
        self.in_use = in_use


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


def metrics_app(registry: CollectorRegistry) -> WSGIApp:
    """The WSGI app of the endpoint: ``/metrics`` (and ``/``) from prometheus-client, ``/healthz``, 404 else."""
    prometheus = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path, method = environ.get("PATH_INFO", ""), environ["REQUEST_METHOD"]
        head = method == "HEAD"
        if path == HEALTH_PATH:
            status, headers, body = "200 OK", list(_TEXT), b"ok\n"
        elif path in METRICS_PATHS:
            status, headers, body = _call(prometheus, {**environ, "REQUEST_METHOD": "GET"} if head else environ)
        else:
            status, headers, body = "404 Not Found", list(_TEXT), b"not found: try /metrics or /healthz\n"
        if not any(name.lower() == "content-length" for name, _ in headers):
            headers.append(("Content-Length", str(len(body))))
        start_response(status, headers)
        return [] if head else [body]

    return app


def _call(app: WSGIApp, environ: dict[str, Any]) -> tuple[str, list[tuple[str, str]], bytes]:
    """Run ``app`` to completion: (status, headers, body); a failing collector is a 500 and one log line."""
    reply: list[Any] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        reply[:] = [status, list(headers)]

    try:
        body = b"".join(app(environ, start_response))
    except Exception as exc:  # a collector that raises must not take the endpoint down
        _log.warning("telemetry.scrape_failed", error_type=type(exc).__name__, error=str(exc))
        return "500 Internal Server Error", list(_TEXT), b"scrape failed; see the log\n"
    return reply[0], reply[1], body


class _Handler(WSGIRequestHandler):
    timeout = REQUEST_TIMEOUT_SECONDS  # StreamRequestHandler applies it to the connection's socket

    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not logged: they would drown the job's own events."""


class _MetricsHTTPServer(WSGIServer):
    """wsgiref's single-threaded WSGI server, IPv4 or IPv6 by the host's form."""

    # socketserver's listen backlog is 5: with 50 clients at once (the endpoint test) a connection was
    # reset now and then while one scrape was being served; a backlog of 128 queues them instead
    request_queue_size = 128

    # handle_request() waits for a connection at most this long: the loop below calls it only when the
    # listening socket was readable, and a connection reset before it is accepted must not leave it waiting
    timeout = 0

    def __init__(self, address: Address, app: WSGIApp) -> None:
        self.address_family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
        self._wake_read, self._wake_write = os.pipe()  # first: a bind that fails calls server_close, which closes it
        super().__init__((address.host, address.port), _Handler)
        self.set_app(app)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up or stalls mid-request is its own problem; keep serving."""

    def serve_until_woken(self) -> None:
        """Answer requests one at a time until :meth:`wake`.

        socketserver's ``serve_forever`` notices a ``shutdown`` only at its next poll, so
        stopping it waited half its poll interval on average: 0.1 s of every short
        command's exit, a few percent of a small campaign. This loop waits on the
        listening socket and a wake-up pipe together, so a stop takes effect at once.
        """
        with selectors.DefaultSelector() as selector:
            selector.register(self, selectors.EVENT_READ)
            selector.register(self._wake_read, selectors.EVENT_READ)
            while True:
                ready = selector.select()
                if any(key.fileobj == self._wake_read for key, _ in ready):
                    return
                self.handle_request()

    def wake(self) -> None:
        """End :meth:`serve_until_woken` (from another thread); its current request, if any, is answered first.
        Once closed, nothing."""
        if self._wake_write >= 0:
            os.write(self._wake_write, b"x")

    def server_close(self) -> None:
        """Close the listening socket and the wake-up pipe; again, nothing (a closed descriptor's number may
        already be another file's)."""
        super().server_close()
        for fd in (self._wake_read, self._wake_write):
            if fd >= 0:
                os.close(fd)
        self._wake_read = self._wake_write = -1


class MetricsServer:
    """A running endpoint; ``stop()`` shuts it down and frees the port."""

    def __init__(self, httpd: _MetricsHTTPServer, thread: threading.Thread, address: Address) -> None:
        self._httpd = httpd
        self._thread = thread
        self.address = address

    @property
    def host(self) -> str:
        return self.address.host

    @property
    def port(self) -> int:
        """The bound port (the kernel's choice when port 0 was asked for)."""
        return self.address.port

    @property
    def url(self) -> str:
        return f"http://{self.address}/metrics"

    def stop(self) -> None:
        self._httpd.wake()
        self._thread.join(timeout=REQUEST_TIMEOUT_SECONDS)
        self._httpd.server_close()


def serve_metrics(address: Address, registry: CollectorRegistry) -> MetricsServer | None:
    """Bind ``address`` and serve ``registry`` on one background thread.

    Raises ``MetricsServerError`` when the address cannot be bound; returns None
    (after one warning, through the telemetry guard) when the serving thread
    cannot be started for lack of thread headroom.
    """
    try:
        httpd = _MetricsHTTPServer(address, metrics_app(registry))
    except OSError as exc:
        in_use = exc.errno == errno.EADDRINUSE
        reason = "address in use" if in_use else (exc.strerror or str(exc))
        raise MetricsServerError(f"cannot listen on {address}: {reason}", in_use=in_use) from exc
    bound = Address(address.host, httpd.server_address[1])
    thread = threading.Thread(target=httpd.serve_until_woken, name="templ-metrics", daemon=True)

    def start() -> threading.Thread:
        thread.start()
        return thread

    if start_guarded("metrics_server", start) is None:
        httpd.server_close()
        return None
    return MetricsServer(httpd, thread, bound)


def start_metrics_server(port: int, addr: str = DEFAULT_HOST) -> MetricsServer | None:
    """Serve ``/metrics`` for the process-wide registry (:func:`telemetry.metrics.get_metrics`); None if degraded."""
    return serve_metrics(Address(addr, port), get_metrics().registry)
