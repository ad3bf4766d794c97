"""Telemetry for one CLI run: logs, traces and the metrics endpoint up front, delivery at the end.

Nothing needs a server: by default logs go to stderr, spans are recorded (for
trace ids in logs and exemplars) and exported only where the standard
OpenTelemetry variables or ``--traces-file`` say, and ``/metrics`` is served on
127.0.0.1:9464. Where another run has the default port, this one serves on a
free port of the same host (``default_port_taken``, and the file_sd target file
names it); an address the user named must work, or the run does not start.

Several jobs on one node each take a free port (``--metrics-addr 127.0.0.1:0``)
and announce it in a file_sd target file (``--metrics-sd-file``), removed when
the run ends however it ends. At the end the session records whether the run
succeeded (``templ_last_success_timestamp_seconds`` or
``templ_last_failure_timestamp_seconds``) and delivers the final metrics.
"""

from __future__ import annotations

import os
import re
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from templ_pipeline.core.events import subscribe_process, unsubscribe_process
from templ_pipeline.errors import InputError
from templ_pipeline.safe_files import check_target, remove_quietly
from templ_pipeline.telemetry.catalog import CONSOLE_FIELDS, JOB_LABEL
from templ_pipeline.telemetry.command_span import CommandSpan
from templ_pipeline.telemetry.exporters import ExporterConfigError, build_exporters
from templ_pipeline.telemetry.logs import configure_logging, get_logger, get_run_id, unconfigure_logging
from templ_pipeline.telemetry.metrics import get_metrics
from templ_pipeline.telemetry.pusher import (
    DEFAULT_PUSH_INTERVAL,
    PUSH_TIMEOUT,
    SIGNAL_PUSH_TIMEOUT,
    PeriodicPusher,
    push_once,
)
from templ_pipeline.telemetry.recorder import observe
from templ_pipeline.telemetry.server import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    Address,
    MetricsServer,
    MetricsServerError,
    parse_address,
)
from templ_pipeline.telemetry.state import TelemetryState, begin as begin_state
from templ_pipeline.telemetry.tracing import configure_tracing, shutdown_tracing

_log = get_logger("templ.telemetry")

#: What to run instead when the default port is taken (another job on the node has it).
SEVERAL_JOBS_HINT = ("to run several jobs on one host give each --metrics-addr 127.0.0.1:0 and "
                     "--metrics-sd-file DIR/<name>.json (a Prometheus file_sd target)")
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


class TelemetrySetupError(ValueError):
    """A telemetry option the user gave cannot be honoured (one line, names the option)."""


@dataclass(frozen=True)
class TelemetryOptions:
    """The telemetry flags of a ``templ`` command."""

    metrics_addr: str | None = None  # None: the default address, best effort
    metrics_server: bool = True
    metrics_textfile: Path | None = None  # a *.prom file, or a directory: DIR/templ_<job id>.prom
    metrics_sd_file: Path | None = None
    pushgateway: str | None = None
    push_grouping_key: tuple[tuple[str, str], ...] = ()  # added to (or replacing) instance and job_id
    push_delete_on_exit: bool = False
    push_interval: float | None = None  # seconds between pushes while the run lasts; None: the default, 0: end only
    hold_metrics: float = 0.0
    traces_file: Path | None = None
    log_format: str = "auto"
    log_file: Path | None = None
    log_level: str | None = None
    service_name: str = "templ"
    command: str | None = None  # the templ command run: its root span holds the run's trace (None: no root span)


def _writable_file(option: str, path: Path) -> None:
    if not path.parent.is_dir():
        raise TelemetrySetupError(f"{option} {path}: directory {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise TelemetrySetupError(f"{option} {path}: not writable")


def _target(option: str, path: Path) -> None:
    """A file the session replaces atomically: absent or a regular file, in a writable directory."""
    try:
        check_target(path, option)
    except InputError as exc:
        raise TelemetrySetupError(str(exc)) from None


def succeeded(exc: BaseException | None) -> bool:
    """Whether a run that ended with ``exc`` (None: normally) succeeded.

    ``typer.Exit`` (how the CLI leaves with exit status 1 after saying why) and ``Interrupted``
    (a signal) carry ``exit_code``; only 0 is success. ``SystemExit`` succeeds with code 0 or None.
    Any other exception is a failure.
    """
    if exc is None:
        return True
    if isinstance(exc, SystemExit):
        return exc.code in (0, None)
    return getattr(exc, "exit_code", None) == 0


def _sd_target(address: Address) -> str:
    """The address Prometheus should scrape: the host name in place of an unspecified (any) address."""
    if address.host in ("0.0.0.0", "::", ""):
        return str(Address(socket.gethostname(), address.port))
    return str(address)


def _unavailable(error: MetricsServerError) -> None:
    """The run goes on without ``/metrics``: one warning saying why."""
    _log.warning("telemetry.metrics_server_unavailable", error=str(error),
                 note=f"the run goes on without /metrics; {SEVERAL_JOBS_HINT}")


class TelemetrySession:
    """Context manager around one run; ``server`` is the endpoint, if one is up."""

    def __init__(self, options: TelemetryOptions, *, interactive: bool | None = None) -> None:
        self.options = options
        self.server: MetricsServer | None = None
        self.default_port_taken = False  # the default port was another's: ``server`` has a free one
        self.sd_file: Path | None = None  # the target file while it exists
        self._sd_content = b""
        self._job_id: str | None = None
        self._pusher: PeriodicPusher | None = None
        self._command_span: CommandSpan | None = None
        self.state: TelemetryState | None = None  # made when the session starts: everything telemetry holds
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
            textfile = options.metrics_textfile
            if textfile.is_dir():
                if not os.access(textfile, os.W_OK):
                    raise TelemetrySetupError(f"--metrics-textfile {textfile}: directory is not writable")
            elif textfile.suffix != ".prom":
                raise TelemetrySetupError(f"--metrics-textfile {textfile}: node_exporter reads only files ending "
                                          "in .prom (or give its directory: the file is then templ_<job id>.prom)")
            else:
                _target("--metrics-textfile", textfile)
        if options.metrics_sd_file is not None:
            if not options.metrics_server:
                raise TelemetrySetupError("--metrics-sd-file: names the /metrics endpoint, which "
                                          "--no-metrics-server turns off")
            if options.metrics_sd_file.suffix != ".json":
                raise TelemetrySetupError(f"--metrics-sd-file {options.metrics_sd_file}: expected a .json file "
                                          "(Prometheus file_sd_configs reads *.json)")
            _target("--metrics-sd-file", options.metrics_sd_file)
        for option, path in (("--traces-file", options.traces_file), ("--log-file", options.log_file)):
            if path is not None:
                _writable_file(option, path)
        if options.hold_metrics < 0:
            raise TelemetrySetupError("--hold-metrics: seconds must not be negative")
        if options.pushgateway and not options.pushgateway.startswith(("http://", "https://")):
            raise TelemetrySetupError(f"--pushgateway {options.pushgateway}: expected an http:// or https:// URL")
        for name, value in options.push_grouping_key:
            if not _LABEL_NAME.match(name) or name == "job" or name.startswith("__"):
                raise TelemetrySetupError(f"--push-grouping-key {name}={value}: {name!r} is not a label name the "
                                          "grouping key can have (the job is always templ)")
            if not value:
                raise TelemetrySetupError(f"--push-grouping-key {name}=: the value must not be empty")
        if options.push_interval is not None and options.push_interval < 0:
            raise TelemetrySetupError("--push-interval: seconds must not be negative")
        needs_gateway = [option for option, given in (("--push-grouping-key", options.push_grouping_key),
                                                      ("--push-delete-on-exit", options.push_delete_on_exit),
                                                      ("--push-interval", options.push_interval is not None))
                         if given]
        if needs_gateway and not options.pushgateway:
            raise TelemetrySetupError(f"{needs_gateway[0]}: needs --pushgateway URL")
        return address

    @property
    def job_id(self) -> str:
        """This run's job id (the scheduler's, else the run id), fixed when the session starts."""
        if self._job_id is None:
            from templ_pipeline.telemetry.export import job_id

            self._job_id = job_id()
        return self._job_id

    @property
    def push_interval(self) -> float:
        """Seconds between pushes while the run lasts; 0 without a Pushgateway or with ``--push-interval 0``."""
        if not self.options.pushgateway:
            return 0.0
        return DEFAULT_PUSH_INTERVAL if self.options.push_interval is None else self.options.push_interval

    @property
    def textfile(self) -> Path | None:
        """Where the final metrics go for node_exporter: the file given, or ``DIR/templ_<job id>.prom``."""
        from templ_pipeline.telemetry.export import textfile_name

        path = self.options.metrics_textfile
        return path / textfile_name(self.job_id) if path is not None and path.is_dir() else path

    def grouping_key(self) -> dict[str, str]:
        """The Pushgateway group of this run: instance (host name) and job_id, then the user's keys."""
        return {"instance": socket.gethostname(), JOB_LABEL: self.job_id, **dict(self.options.push_grouping_key)}

    def __enter__(self) -> TelemetrySession:
        options = self.options
        # the run's own telemetry state: metrics made before it (a library call's) stay on its registry
        shutdown_tracing()
        unconfigure_logging()
        self.state = begin_state(previous_metrics=True)
        if options.log_file is not None:
            self._log_stream = open(options.log_file, "a", buffering=1)
        to_console = self._log_stream is None and self._interactive
        level = options.log_level or ("WARNING" if to_console else "INFO")
        fmt = options.log_format if options.log_format != "auto" or self._log_stream is None else "json"
        # no log file: sys.stderr as it is at each line, so a progress display prints the lines above its bar
        configure_logging(level=level.upper(), fmt=fmt, stream=self._log_stream,  # type: ignore[arg-type]
                          console_fields=CONSOLE_FIELDS)
        try:
            exporters = build_exporters(options.traces_file)
        except ExporterConfigError as exc:
            raise TelemetrySetupError(str(exc)) from None
        configure_tracing(exporters, service_name=os.environ.get("OTEL_SERVICE_NAME", options.service_name),
                          resource_attributes={"templ.run_id": get_run_id()})
        if options.command is not None:
            self._command_span = CommandSpan(options.command)
        metrics = get_metrics()
        subscribe_process(observe)  # the state's recorder hears every event of the run's calls
        metrics.run_info.labels(run_id=get_run_id() or "", job_id=self.job_id, host=socket.gethostname()).set(1)
        metrics.run_start.set(time.time())
        self._start_server()
        self._start_pusher()
        return self

    def _start_pusher(self) -> None:
        if self.push_interval <= 0:
            return
        assert self.options.pushgateway is not None
        pusher = PeriodicPusher(self.options.pushgateway, self.options.service_name, self.grouping_key(),
                                self.push_interval)
        if pusher.start():
            self._pusher = pusher
            get_metrics().push_interval.set(self.push_interval)  # 0 (end only) where the thread was refused

    def _start_server(self) -> None:
        if self._address is None:
            return
        from templ_pipeline.telemetry.server import serve_metrics

        try:
            self.server = serve_metrics(self._address, get_metrics().registry)
        except MetricsServerError as exc:
            if self.options.metrics_addr:  # an address the user named is kept to
                self.close(delivered=False)
                hint = f"; {SEVERAL_JOBS_HINT}" if exc.in_use and self._address.port != 0 else ""
                raise TelemetrySetupError(f"--metrics-addr: {exc}{hint}") from None
            if not exc.in_use:
                return _unavailable(exc)
            # another run on this host has the default port: this one takes a free port of the same host
            self.default_port_taken = True
            try:
                self.server = serve_metrics(Address(self._address.host, 0), get_metrics().registry)
            except MetricsServerError as again:
                return _unavailable(again)
        if self.server is not None and not self._address.is_loopback:
            _log.warning("telemetry.metrics_exposed", address=str(self._address),
                         note="/metrics is reachable from other hosts")
        if self.server is not None and self.options.metrics_sd_file is not None:
            self._write_sd_file(self.server)

    def _write_sd_file(self, server: MetricsServer) -> None:
        from templ_pipeline.telemetry.export import write_sd_file

        path = self.options.metrics_sd_file
        assert path is not None
        try:
            self.sd_file = write_sd_file(path, _sd_target(server.address), {JOB_LABEL: self.job_id})
            self._sd_content = self.sd_file.read_bytes()
        except (InputError, OSError) as exc:
            self.close(delivered=False)
            raise TelemetrySetupError(f"--metrics-sd-file: {exc}") from None
        _log.info("telemetry.sd_file_written", path=str(path), target=_sd_target(server.address),
                  job_id=self.job_id)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        # A signal or Ctrl-C (a BaseException, not an Exception) means leave now: no holding.
        self.close(delivered=True, hold=exc is None or isinstance(exc, Exception), success=succeeded(exc))

    def close(self, delivered: bool, hold: bool = True, success: bool = True) -> None:
        """Flush spans, record the outcome, deliver the final metrics, hold the endpoint if asked, stop it.

        The target file, the endpoint and (with ``--push-delete-on-exit``) the Pushgateway group go
        whatever happens on the way, a signal during ``--hold-metrics`` included.
        """
        push_timeout = PUSH_TIMEOUT if hold else SIGNAL_PUSH_TIMEOUT  # a signal: leave within seconds
        try:
            if self._pusher is not None:
                if not self._pusher.stop(push_timeout):  # the final push below replaces what it pushed
                    _log.warning("telemetry.push_failed", url=self.options.pushgateway,
                                 error="a periodic push is still hung; it may land after the final one")
                self._pusher = None
            unsubscribe_process(observe)
            if self._command_span is not None:
                self._command_span.end(success and delivered)
                self._command_span = None
            shutdown_tracing()
            if delivered:
                self._record_outcome(success)
                self._deliver(push_timeout)
                if hold and self.server is not None and self.options.hold_metrics > 0:
                    _log.info("telemetry.holding_metrics", url=self.server.url, seconds=self.options.hold_metrics)
                    time.sleep(self.options.hold_metrics)
        finally:
            if self.sd_file is not None:
                self._remove_sd_file(self.sd_file)
                self.sd_file = None
            if self.server is not None:
                self.server.stop()
                self.server = None
            if delivered and self.options.push_delete_on_exit:
                self._delete_group(push_timeout)
            if self._log_stream is not None:
                # lines logged after the run (a LocalCluster closing at exit) must not meet a closed file:
                # they go to the default handling (warnings and errors on stderr)
                unconfigure_logging()
                self._log_stream.close()
                self._log_stream = None

    def _remove_sd_file(self, path: Path) -> None:
        """Remove the target file, unless another run has replaced it since (the same path given twice)."""
        try:
            ours = path.read_bytes() == self._sd_content
        except OSError:
            return
        if ours:
            remove_quietly(path)
        else:
            _log.warning("telemetry.sd_file_replaced", path=str(path),
                         note="another run wrote this target file since; it is left in place")

    @staticmethod
    def _record_outcome(success: bool) -> None:
        metrics = get_metrics()
        (metrics.last_success if success else metrics.last_failure).set(time.time())

    def _deliver(self, push_timeout: float) -> None:
        """The final push, then the textfile: a push that failed is counted in the textfile too."""
        from templ_pipeline.telemetry.export import write_textfile

        if self.options.pushgateway:
            push_once(self.options.pushgateway, self.options.service_name, self.grouping_key(), push_timeout)
        textfile = self.textfile
        if textfile is not None:
            try:
                write_textfile(textfile, get_metrics().registry, labels={JOB_LABEL: self.job_id})
            except (InputError, OSError) as exc:
                _log.warning("telemetry.textfile_failed", path=str(textfile), error=str(exc))

    def _delete_group(self, timeout: float) -> None:
        """``--push-delete-on-exit``: nothing of the job stays on the Pushgateway once it has ended.

        The final push still happens (a scrape during ``--hold-metrics`` takes it); the delete
        comes after the hold. Without the flag the group stays, with its counters and the
        success or failure timestamp, for batch-job alerting (``time() -
        templ_last_success_timestamp_seconds``); it never holds live gauges such as headroom.
        """
        from templ_pipeline.telemetry.export import PushError, delete_pushed

        assert self.options.pushgateway is not None
        try:
            delete_pushed(self.options.pushgateway, job=self.options.service_name, grouping_key=self.grouping_key(),
                          timeout=timeout)
        except PushError as exc:
            _log.warning("telemetry.push_delete_failed", url=self.options.pushgateway, error=str(exc))
