"""The telemetry options every run command shares (metrics, traces, logs), declared once.

``with_telemetry`` appends them to a command's signature and hands the command the run's
``TelemetrySession``; the CLI turns a ``TelemetrySetupError`` into exit 2.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:  # the telemetry stack (the OpenTelemetry SDK) is imported when a run starts, not for --help
    from templ_pipeline.telemetry.session import TelemetrySession


class LogFormatChoice(StrEnum):
    """``--log-format``: typer lists the members in the help and offers them for completion."""

    AUTO = "auto"  # console on a terminal, else JSON (JSON always with --log-file)
    JSON = "json"
    CONSOLE = "console"


class LogLevelChoice(StrEnum):
    """``--log-level`` (case-insensitive); none given: info, warning on a terminal."""

    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


MetricsAddr = Annotated[str | None, typer.Option(
    "--metrics-addr", help="Serve /metrics and /healthz here (default 127.0.0.1:9464, or a free port when "
                           "another run has it). 127.0.0.1:0 takes a free port (several jobs on one host).",
    rich_help_panel="Telemetry")]
MetricsSdFile = Annotated[Path | None, typer.Option(
    "--metrics-sd-file", help="Write a Prometheus file_sd target file (*.json) naming this run's /metrics "
                              "address and job id; removed when the run ends.", rich_help_panel="Telemetry")]
NoMetricsServer = Annotated[bool, typer.Option(
    "--no-metrics-server", help="Do not serve /metrics.", rich_help_panel="Telemetry")]
MetricsTextfile = Annotated[Path | None, typer.Option(
    "--metrics-textfile", help="Write the final metrics here (*.prom) for node_exporter's textfile collector; "
                               "a directory: DIR/templ_<job id>.prom.", rich_help_panel="Telemetry")]
Pushgateway = Annotated[str | None, typer.Option(
    "--pushgateway", help="Push the metrics to this Pushgateway URL while the run lasts and at its end "
                          "(group: instance=<host>, job_id=<job id>).", rich_help_panel="Telemetry")]
PushGroupingKey = Annotated[list[str] | None, typer.Option(
    "--push-grouping-key", metavar="LABEL=VALUE", help="Add a label to the Pushgateway grouping key, or replace "
                                                       "instance or job_id (repeatable).",
    rich_help_panel="Telemetry")]
PushDeleteOnExit = Annotated[bool, typer.Option(
    "--push-delete-on-exit", help="Delete the run's Pushgateway group when it ends (after --hold-metrics), so "
                                  "nothing of it stays.", rich_help_panel="Telemetry")]
PushInterval = Annotated[float | None, typer.Option(
    "--push-interval", min=0, metavar="SECONDS",
    help="Push to the Pushgateway this often while the run lasts, and at its end (default 30; 0: at the end "
         "only).", rich_help_panel="Telemetry")]
HoldMetrics = Annotated[float, typer.Option(
    "--hold-metrics", min=0, help="Keep /metrics up this many seconds after the run.", rich_help_panel="Telemetry")]
TracesFile = Annotated[Path | None, typer.Option(
    "--traces-file", help="Append spans as OTLP/JSON lines (the Collector's otlpjsonfile format).",
    rich_help_panel="Telemetry")]
LogFormat = Annotated[LogFormatChoice, typer.Option(
    "--log-format", help="auto: console on a terminal, else JSON.", rich_help_panel="Telemetry")]
LogFile = Annotated[Path | None, typer.Option(
    "--log-file", help="Append log lines (JSON) here instead of stderr.", rich_help_panel="Telemetry")]
LogLevel = Annotated[LogLevelChoice | None, typer.Option(
    "--log-level", case_sensitive=False, help="Default: info, warning on a terminal.", rich_help_panel="Telemetry")]


def _grouping_key(pairs: list[str] | None) -> tuple[tuple[str, str], ...]:
    key = []
    for pair in pairs or ():
        name, sep, value = pair.partition("=")
        if not sep:
            raise typer.BadParameter(f"{pair!r} is not LABEL=VALUE", param_hint="'--push-grouping-key'")
        key.append((name.strip(), value.strip()))
    return tuple(key)


def _telemetry(
    metrics_addr: str | None, no_metrics_server: bool, metrics_textfile: Path | None, metrics_sd_file: Path | None,
    pushgateway: str | None, push_grouping_key: list[str] | None, push_delete_on_exit: bool,
    push_interval: float | None, hold_metrics: float,
    traces_file: Path | None, log_format: LogFormatChoice, log_file: Path | None, log_level: LogLevelChoice | None,
    command: str | None = None,
) -> TelemetrySession:
    """The telemetry session of a run; bad options raise ``typer.BadParameter`` or ``TelemetrySetupError`` (exit 2)."""
    from templ_pipeline.telemetry.session import TelemetryOptions, TelemetrySession

    options = TelemetryOptions(
        metrics_addr=metrics_addr, metrics_server=not no_metrics_server, metrics_textfile=metrics_textfile,
        metrics_sd_file=metrics_sd_file, pushgateway=pushgateway, push_grouping_key=_grouping_key(push_grouping_key),
        push_delete_on_exit=push_delete_on_exit, push_interval=push_interval, hold_metrics=hold_metrics,
        traces_file=traces_file,
        log_format=LogFormatChoice(log_format).value, log_file=log_file,
        log_level=None if log_level is None else LogLevelChoice(log_level).value, command=command,
    )
    return TelemetrySession(options)


_CONTEXT = "telemetry_context"  # typer hands the command's context to a parameter of this type: its name is the command

_TELEMETRY_OPTIONS: dict[str, tuple[Any, Any]] = {
    "metrics_addr": (MetricsAddr, None),
    "no_metrics_server": (NoMetricsServer, False),
    "metrics_textfile": (MetricsTextfile, None),
    "metrics_sd_file": (MetricsSdFile, None),
    "pushgateway": (Pushgateway, None),
    "push_grouping_key": (PushGroupingKey, None),
    "push_delete_on_exit": (PushDeleteOnExit, False),
    "push_interval": (PushInterval, None),
    "hold_metrics": (HoldMetrics, 0.0),
    "traces_file": (TracesFile, None),
    "log_format": (LogFormat, LogFormatChoice.AUTO),
    "log_file": (LogFile, None),
    "log_level": (LogLevel, None),
}


def with_telemetry(command: Callable[..., None]) -> Callable[..., None]:
    """Give a command the telemetry options; it receives the run's ``TelemetrySession`` as ``session``.

    The options are declared once (``_TELEMETRY_OPTIONS``) and appended to the
    command's signature, which is what typer reads to build the CLI; so is the
    command's context, whose name names the run's root span. The command's own
    ``session`` annotation is dropped, so its module may import ``TelemetrySession``
    for type checking only.
    """
    signature = inspect.signature(command, eval_str=True, locals={"TelemetrySession": object})
    own = [param for name, param in signature.parameters.items() if name != "session"]
    extra = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default)
             for name, (annotation, default) in _TELEMETRY_OPTIONS.items()]
    extra.append(inspect.Parameter(_CONTEXT, inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context))

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> None:
        options = {name: kwargs.pop(name) for name in _TELEMETRY_OPTIONS}
        command(session=_telemetry(**options, command=kwargs.pop(_CONTEXT).info_name), **kwargs)

    wrapper.__signature__ = signature.replace(parameters=own + extra)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {param.name: param.annotation for param in own + extra}
    return wrapper
