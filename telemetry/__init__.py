"""TEMPL telemetry: Prometheus metrics, OpenTelemetry traces and structlog logs from one catalog.

Installed as ``templ_pipeline.telemetry`` (the repository keeps it in ``telemetry/``).
Typical use::

    from templ_pipeline import telemetry
    from templ_pipeline.core import events
    telemetry.configure(run_id="abc123")
    events.subscribe_process(telemetry.observe)  # every select_best, embedding and campaign is recorded
    best = select_best(conformers, template, n_workers=8)

The chemistry and the campaign emit typed events and import nothing from here; ``observe`` (a
``telemetry.recorder.Recorder``) turns each into its metrics, spans and log line as the catalog says.
``telemetry.disabled()`` (context manager) or ``configure(enabled=False)`` leaves the per-call and
per-batch events unrecorded, for overhead measurements.

The names below are imported on first use (PEP 562 module ``__getattr__``), so
importing one submodule costs only that submodule. Process workers import
``templ_pipeline.core.trace_context``, which needs OpenTelemetry's API alone (about 10 ms
once RDKit is loaded). Were the whole stack imported here, every worker would
load prometheus_client, the OpenTelemetry SDK, structlog (which configures
itself at import) and rich: measured on 2 cores, ``import
templ_pipeline.core.batch`` then loads 516 modules in about 490 ms, against 272
modules in about 280 ms (RDKit and numpy alone: 217 modules, 200 ms).
"""

from __future__ import annotations

import importlib
from typing import Any, Literal

__all__ = [
    "catalog",
    "configure",
    "current_trace_ids",
    "disabled",
    "get_logger",
    "get_metrics",
    "get_run_id",
    "observe",
]
"""The public names: set up, observe the executor's and the campaign's events, the spans of a
call and of a campaign, and what a run reads back. The building blocks live in the submodules (``telemetry.recorder``,
``telemetry.metrics``, ``telemetry.tracing``, ...); test-only resets in ``telemetry.testing``."""

_EXPORTS: dict[str, tuple[str, ...]] = {
    "templ_pipeline.telemetry.logs": ("get_logger", "get_run_id"),
    "templ_pipeline.telemetry.metrics": ("get_metrics",),
    "templ_pipeline.telemetry.recorder": ("observe",),
    "templ_pipeline.telemetry.state": ("disabled",),
    "templ_pipeline.telemetry.tracing": ("current_trace_ids",),
}
_HOME: dict[str, str] = {name: module for module, names in _EXPORTS.items() for name in names}

#: Submodules reachable as attributes after a bare ``from templ_pipeline import telemetry``.
_SUBMODULES = frozenset(("catalog", "command_span", "docs", "export", "exporters", "guard", "logs", "metrics",
                         "otlp_json", "recorder", "server", "session", "state", "testing", "tracing"))


def __getattr__(name: str) -> Any:
    """Import the submodule that defines ``name`` on first use, and keep the result."""
    if name in _HOME:
        value = getattr(importlib.import_module(_HOME[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__, *_SUBMODULES})


def configure(
    *,
    enabled: bool = True,
    span_exporter: Any = None,
    synchronous: bool = False,
    log_level: str | int = "INFO",
    log_format: Literal["json", "console", "auto"] = "auto",
    run_id: str | None = None,
    log_stream: Any = None,
    service_name: str = "templ",
    thread_headroom: int | None = None,
) -> None:
    """Set up logging, tracing and metrics in one call (safe to call again).

    Logging is configured first so a degraded span processor can log its warning.
    ``enabled=False`` keeps metrics and logging but makes tracing no-op and the
    per-batch/per-call event helpers return early. ``thread_headroom`` (threads
    the kernel still allows, if known) < 1 skips the batch span processor thread.
    """
    from templ_pipeline.telemetry.logs import configure_logging, get_run_id
    from templ_pipeline.telemetry.metrics import get_metrics
    from templ_pipeline.telemetry.state import set_enabled
    from templ_pipeline.telemetry.tracing import configure_tracing

    set_enabled(enabled)
    configure_logging(level=log_level, fmt=log_format, stream=log_stream, run_id=run_id)
    get_metrics()
    configure_tracing(
        span_exporter,
        enabled=enabled,
        service_name=service_name,
        synchronous=synchronous,
        headroom=thread_headroom,
        resource_attributes={"templ.run_id": get_run_id()},
    )
