"""Span exporters chosen from the standard OpenTelemetry variables, plus ``--traces-file``.

``OTEL_TRACES_EXPORTER`` (comma-separated ``otlp``, ``console``, ``none``) picks
them. Unset, traces go over OTLP only when an OTLP endpoint is configured
(``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``): a
laptop run with nothing configured exports nothing and still records trace ids
for logs and exemplars. The OTLP exporter (HTTP/protobuf) reads the endpoint,
headers and timeout variables itself. An export that fails costs one warning,
not one per batch, and never the run.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SpanExporter, SpanExportResult

from templ_pipeline.telemetry.logs import get_logger

_log = get_logger("templ.telemetry")
_OTLP_LOGGERS = ("opentelemetry.exporter.otlp.proto.http.trace_exporter", "opentelemetry.exporter.otlp.proto.http")


class ExporterConfigError(ValueError):
    """The tracing configuration names something this build cannot do."""


class WarnOnceExporter(SpanExporter):
    """Wraps an exporter: its first failure is logged once, later ones silently dropped."""

    def __init__(self, inner: SpanExporter, name: str, target: str) -> None:
        self._inner, self._name, self._target = inner, name, target
        self._warned = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self._inner.export(spans)
        except Exception as exc:  # an exporter must never take the run down
            result = SpanExportResult.FAILURE
            self._warn(f"{type(exc).__name__}: {exc}")
        else:
            if result is not SpanExportResult.SUCCESS:
                self._warn("export failed")
        return result

    def _warn(self, error: str) -> None:
        if not self._warned:
            self._warned = True
            _log.warning("telemetry.export_failed", exporter=self._name, target=self._target, error=error,
                         note="traces are dropped; this warning is not repeated")

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)


class _FirstRecordOnly(logging.Filter):
    """Lets the first record of a logger through: the OTLP exporter logs every failed retry."""

    def __init__(self) -> None:
        super().__init__()
        self._seen = False

    def filter(self, record: logging.LogRecord) -> bool:
        seen, self._seen = self._seen, True
        return not seen


def _otlp_endpoint() -> str | None:
    return os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")


def exporter_names() -> list[str]:
    """The exporters ``OTEL_TRACES_EXPORTER`` asks for (see the module docstring for the default)."""
    value = os.environ.get("OTEL_TRACES_EXPORTER", "").strip()
    if not value:
        return ["otlp"] if _otlp_endpoint() else []
    names = [name.strip().lower() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in ("otlp", "console", "none")]
    if unknown:
        raise ExporterConfigError(f"OTEL_TRACES_EXPORTER: unsupported exporter(s) {', '.join(unknown)}; "
                                  "use otlp, console or none")
    return [name for name in names if name != "none"]


def _otlp() -> SpanExporter:
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
    if protocol and protocol != "http/protobuf":
        raise ExporterConfigError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol}: this build exports http/protobuf only")
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    for name in _OTLP_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _FirstRecordOnly) for f in logger.filters):
            logger.addFilter(_FirstRecordOnly())
    return WarnOnceExporter(OTLPSpanExporter(), "otlp", _otlp_endpoint() or "http://localhost:4318")


def build_exporters(traces_file: Path | None = None) -> list[SpanExporter]:
    """The exporters for this run: from the environment, plus the OTLP/JSON file if given."""
    exporters: list[SpanExporter] = []
    for name in exporter_names():
        if name == "otlp":
            exporters.append(_otlp())
        elif name == "console":
            exporters.append(ConsoleSpanExporter(out=sys.stderr))
    if traces_file is not None:  # imported here: protobuf's JSON support is 14 ms of every command's start
        from templ_pipeline.telemetry.otlp_json import OTLPJsonFileExporter

        exporters.append(WarnOnceExporter(OTLPJsonFileExporter(traces_file), "file", str(traces_file)))
    return exporters
