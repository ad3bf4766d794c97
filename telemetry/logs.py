"""Structured logging: structlog and stdlib ``logging`` through one processor pipeline.

Every JSON line carries ``timestamp`` (ISO 8601 UTC), ``level``, ``logger``,
``event``, ``run_id`` and, inside a recording span, ``trace_id``/``span_id``.
Output is JSON lines unless the stream is a TTY (or ``fmt="console"``). A console
line is for a person at a terminal: one line of level, event and the event's own
fields, without the correlation keys (timestamp, logger, run and trace ids) that
the JSON keeps for machines. Exception tracebacks (``exception`` in JSON, rich's
in the console) never carry frame locals.
"""

from __future__ import annotations

import logging
import sys
import uuid
from collections.abc import Mapping, MutableMapping
from typing import IO, Any, Literal

import structlog
from opentelemetry import trace

from templ_pipeline.telemetry import state

__all__ = ["add_run_id", "add_trace_ids", "configure_logging", "get_logger", "get_run_id", "unconfigure_logging"]

def get_run_id() -> str | None:
    """The run id stamped on every log line (set by :func:`configure_logging`)."""
    return state.current().run_id


def add_run_id(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: add ``run_id``."""
    run_id = state.current().run_id
    if run_id is not None:
        event_dict.setdefault("run_id", run_id)
    return event_dict


def add_trace_ids(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: add ``trace_id``/``span_id`` (32/16 hex) of the current recording span."""
    if "trace_id" not in event_dict:
        span = trace.get_current_span()
        if span.is_recording():
            ctx = span.get_span_context()
            event_dict["trace_id"] = format(ctx.trace_id, "032x")
            event_dict["span_id"] = format(ctx.span_id, "016x")
    return event_dict


_FIRST_KEYS = ("timestamp", "level", "logger", "event")


def _order_keys(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> dict[str, Any]:
    """Put timestamp, level, logger, event first so JSON lines read well."""
    ordered = {k: event_dict.pop(k) for k in _FIRST_KEYS if k in event_dict}
    ordered.update(event_dict)
    return ordered


def _shared_processors() -> list[Any]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        add_run_id,
        add_trace_ids,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
        structlog.stdlib.ExtraAdder(),
    ]


#: Exceptions as structured tracebacks without frame locals. structlog's ``dict_tracebacks``
#: and its default console formatter (rich) both show every frame's locals (structlog 26.1:
#: ``show_locals`` defaults to True in ``ExceptionDictTransformer`` and ``RichTracebackFormatter``),
#: and locals hold what a log line must not: SMILES libraries, molecules, tokens in a URL.
_JSON_TRACEBACKS = structlog.processors.ExceptionRenderer(
    structlog.tracebacks.ExceptionDictTransformer(show_locals=False))


def _console_tracebacks(stream: Any) -> structlog.dev.RichTracebackFormatter:
    """Rich's traceback for the console renderer, without locals; no colour codes off a TTY."""
    return structlog.dev.RichTracebackFormatter(show_locals=False,
                                                color_system="truecolor" if _is_tty(stream) else None)


def _is_tty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


#: Keys a console line leaves out: they correlate lines for machines, and the JSON keeps them.
_CONSOLE_HIDDEN = ("timestamp", "logger", "run_id", "trace_id", "span_id")


def _console_fields(fields: Mapping[str, tuple[str, ...]]) -> Any:
    """structlog processor: drop the correlation keys; keep only ``fields[event]`` where given, in that order."""

    def processor(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        for key in _CONSOLE_HIDDEN:
            event_dict.pop(key, None)
        shown = fields.get(event_dict.get("event", ""))
        if shown is None:
            return event_dict
        kept = ("event", "level", "exc_info", "exception", *shown)
        return {key: event_dict[key] for key in kept if key in event_dict}

    return processor


class _CurrentStderr(logging.StreamHandler):
    """A handler writing to ``sys.stderr`` as it is at each write, not as it was when configured.

    rich's progress display (``Live``) replaces ``sys.stderr`` while it runs with a proxy that
    prints above the bar; a handler that kept the original stream would draw over the bar.
    """

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        """The stream is always the current ``sys.stderr``."""


def configure_logging(
    *,
    level: str | int = "INFO",
    fmt: Literal["json", "console", "auto"] = "auto",
    stream: IO[str] | None = None,
    run_id: str | None = None,
    console_fields: Mapping[str, tuple[str, ...]] | None = None,
) -> None:
    """Configure structlog and the stdlib root logger (idempotent; safe to call again).

    ``stream`` defaults to ``sys.stderr``, looked up at each write (so a progress display that
    redirects stderr shows the lines above itself). ``run_id`` defaults to a fresh
    12-hex id so all lines of one run can be grouped. ``console_fields`` names, per event, the
    only fields a console line shows. Only the handler installed by a previous call is replaced;
    other root handlers are kept.
    """
    current = state.current()
    current.run_id = run_id if run_id is not None else uuid.uuid4().hex[:12]
    out = stream if stream is not None else sys.stderr
    use_json = fmt == "json" or (fmt == "auto" and not _is_tty(out))
    if use_json:
        renderer: Any = structlog.processors.JSONRenderer()
        final = [_JSON_TRACEBACKS, _order_keys, renderer]
    else:
        final = [_console_fields(console_fields or {}),
                 structlog.dev.ConsoleRenderer(colors=_is_tty(out), pad_event_to=0, sort_keys=False,
                                               exception_formatter=_console_tracebacks(out))]

    shared = _shared_processors()
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Not cached: lets configure_logging() run twice and capture_logs() work everywhere.
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *final],
    )
    handler = _CurrentStderr() if stream is None else logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    if current.log_handler is not None:
        root.removeHandler(current.log_handler)
        current.log_handler.close()  # StreamHandler.close() never closes the stream itself
    root.addHandler(handler)
    root.setLevel(level if isinstance(level, int) else level.upper())
    current.log_handler = handler


def unconfigure_logging() -> None:
    """Remove the handler installed by :func:`configure_logging` and restore the default
    structlog setup (events routed to stdlib logging as JSON strings): for tests, and after a run whose
    log file is closed."""
    current = state.current()
    if current.log_handler is not None:
        logging.getLogger().removeHandler(current.log_handler)
        current.log_handler.close()
        current.log_handler = None
    structlog.reset_defaults()
    _configure_default()


def _configure_default() -> None:
    """Before :func:`configure_logging`: route structlog through stdlib logging (no stdout output).

    The package's loggers have a ``NullHandler`` (``templ_pipeline/__init__.py``), so a library user who
    configured no logging sees nothing of them.
    """
    if structlog.is_configured():
        return
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *_shared_processors(),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )


_configure_default()


def get_logger(name: str | None = None) -> Any:
    """A structlog ``BoundLogger`` wrapping the stdlib logger ``name``."""
    return structlog.stdlib.get_logger(name)
