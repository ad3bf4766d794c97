"""Telemetry for one CLI run: logs, traces and the metrics endpoint up front, delivery at the end.

Nothing needs a server: by default logs go to stderr, spans are recorded (for
trace ids in logs and exemplars) and exported only where the standard
OpenTelemetry variables or ``--traces-file`` say, and ``/metrics`` is served on
127.0.0.1:9464. A default endpoint whose port is taken costs a warning; an
address the user named must work, or the run does not start.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from telemetry.exporters import ExporterConfigError, build_exporters
from telemetry.logs import configure_logging, get_logger, get_run_id
from telemetry.metrics import get_metrics
from telemetry.server import DEFAULT_HOST, DEFAULT_PORT, Address, MetricsServer, MetricsServerError, parse_address
from telemetry.tracing import configure_tracing, shutdown_tracing

_log = get_logger("templ.telemetry")


class TelemetrySetupError(ValueError):
    """A telemetry option the user gave cannot be honoured (one line, names the option)."""


@dataclass(frozen=True)
class TelemetryOptions:
    """The telemetry flags of a ``templ`` command."""

    metrics_addr: str | None = None  # None: the default address, best effort
    metrics_server: bool = True
    metrics_textfile: Path | None = None
    pushgateway: str | None = None
    hold_metrics: float = 0.0
    traces_file: Path | None = None
    log_format: str = "auto"
    log_file: Path | None = None
    log_level: str | None = None
    service_name: str = "templ"


def _writable_file(option: str, path: Path) -> None:
    if not path.parent.is_dir():
        raise TelemetrySetupError(f"{option} {path}: directory {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise TelemetrySetupError(f"{option} {path}: not writable")


class TelemetrySession:
    """Context manager around one run; ``server`` is the endpoint, if one is up."""

    def __init__(self, options: TelemetryOptions, *, interactive: bool | None = None) -> None:
        self.options = options
        self.server: MetricsServer | None = None
        self._log_stream: IO[str] | None = None
        self._interactive = sys.stderr.isatty() if interactive is None else interactive
        self._address = self._check(options)

    def _check(self, options: TelemetryOptions) -> Address | None:
        """Validate every option before anything runs (bad input is reported up front)."""
        address = None
        if options.metrics_server:
            try:
                address = parse_address(options.metrics_addr) if options.metrics_addr else Address(
                    DEFAULT_HOST, DEFAULT_PORT)
            except ValueError as exc:
                raise TelemetrySetupError(f"--metrics-addr: {exc}") from None
        if options.metrics_textfile is not None:
            if options.metrics_textfile.suffix != ".prom":
                raise TelemetrySetupError(f"--metrics-textfile {options.metrics_textfile}: node_exporter reads "
                                          "only files ending in .prom")
            _writable_file("--metrics-textfile", options.metrics_textfile)
        for option, path in (("--traces-file", options.traces_file), ("--log-file", options.log_file)):
            if path is not None:
                _writable_file(option, path)
        if options.hold_metrics < 0:
            raise TelemetrySetupError("--hold-metrics: seconds must not be negative")
        if options.pushgateway and not options.pushgateway.startswith(("http://", "https://")):
            raise TelemetrySetupError(f"--pushgateway {options.pushgateway}: expected an http:// or https:// URL")
        return address

    def __enter__(self) -> TelemetrySession:
        options = self.options
        if options.log_file is not None:
            self._log_stream = open(options.log_file, "a", buffering=1)
        stream = self._log_stream or sys.stderr
        to_console = self._log_stream is None and self._interactive
        level = options.log_level or ("WARNING" if to_console else "INFO")
        fmt = options.log_format if options.log_format != "auto" or self._log_stream is None else "json"
        configure_logging(level=level.upper(), fmt=fmt, stream=stream)  # type: ignore[arg-type]
        try:
            exporters = build_exporters(options.traces_file)
        except ExporterConfigError as exc:
            raise TelemetrySetupError(str(exc)) from None
        configure_tracing(exporters, service_name=os.environ.get("OTEL_SERVICE_NAME", options.service_name),
                          resource_attributes={"templ.run_id": get_run_id()})
        self._start_server()
        return self

    def _start_server(self) -> None:
        if self._address is None:
            return
        from telemetry.server import serve_metrics

        try:
            self.server = serve_metrics(self._address, get_metrics().registry)
        except MetricsServerError as exc:
            if self.options.metrics_addr:
                self.close(delivered=False)
                raise TelemetrySetupError(f"--metrics-addr: {exc}") from None
            _log.warning("telemetry.metrics_server_unavailable", error=str(exc),
                         note="the run goes on without /metrics; pass --metrics-addr to choose another port")
            return
        if self.server is not None and not self._address.is_loopback:
            _log.warning("telemetry.metrics_exposed", address=str(self._address),
                         note="/metrics is reachable from other hosts")

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        # A signal or Ctrl-C (a BaseException, not an Exception) means leave now: no holding.
        self.close(delivered=True, hold=exc is None or isinstance(exc, Exception))

    def close(self, delivered: bool, hold: bool = True) -> None:
        """Flush spans, deliver the final metrics, hold the endpoint if asked, stop it."""
        shutdown_tracing()
        if delivered:
            self._deliver()
            if hold and self.server is not None and self.options.hold_metrics > 0:
                _log.info("telemetry.holding_metrics", url=self.server.url, seconds=self.options.hold_metrics)
                time.sleep(self.options.hold_metrics)
        if self.server is not None:
            self.server.stop()
            self.server = None
        if self._log_stream is not None:
            self._log_stream.close()
            self._log_stream = None

    def _deliver(self) -> None:
        from telemetry.export import PushError, push_metrics, write_textfile

        registry = get_metrics().registry
        if self.options.metrics_textfile is not None:
            write_textfile(self.options.metrics_textfile, registry)
        if self.options.pushgateway:
            try:
                push_metrics(self.options.pushgateway, job=self.options.service_name, registry=registry)
            except PushError as exc:
                _log.warning("telemetry.push_failed", url=self.options.pushgateway, error=str(exc))
