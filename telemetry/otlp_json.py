"""A span exporter writing OTLP/JSON lines, as the Collector's ``otlpjsonfile`` receiver reads them.

Each export call appends one line: an ``ExportTraceServiceRequest`` in OTLP/JSON,
the format the Collector's file exporter writes and its ``otlpjsonfile``
receiver reads. The spans are encoded by the official OTLP encoder
(``opentelemetry-exporter-otlp-proto-common``'s ``encode_spans``, the one the
OTLP/HTTP exporter sends) and rendered by protobuf's ``json_format``. OTLP/JSON
follows the protobuf JSON mapping with two exceptions that ``json_format`` does
not apply by itself: trace and span ids are hex strings (not base64), and enums
are integers.

Only the file handling is written here, because the installed OpenTelemetry
packages have no OTLP/JSON file exporter: the SDK's ``ConsoleSpanExporter``
writes its own JSON per span, not OTLP. PyPI has ``opentelemetry-exporter-otlp-json-file``
(beta, 0.66b1; not installed here): the ``FileSpanExporter`` in the opentelemetry-python
repository writes one ``ResourceSpans`` object per line to a text stream, which is not
the Collector's line (a whole request, ``{"resourceSpans": [...]}``), and the package
pins its JSON encoder package and the SDK to one minor version.
"""

from __future__ import annotations

import base64
import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from google.protobuf.json_format import MessageToDict
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

_ID_FIELDS = ("traceId", "spanId", "parentSpanId")


def _hex_ids(node: Any) -> Any:
    """Re-encode base64 id fields as lowercase hex, recursively."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _ID_FIELDS and isinstance(value, str):
                node[key] = base64.b64decode(value).hex()
            else:
                _hex_ids(value)
    elif isinstance(node, list):
        for item in node:
            _hex_ids(item)
    return node


def to_otlp_json(spans: Sequence[ReadableSpan]) -> str:
    """One OTLP/JSON ``ExportTraceServiceRequest`` for ``spans``, on one line."""
    message = MessageToDict(encode_spans(spans), use_integers_for_enums=True)
    return json.dumps(_hex_ids(message), separators=(",", ":"))


class OTLPJsonFileExporter(SpanExporter):
    """Appends OTLP/JSON lines to a file; several processes may share it.

    The file is opened with ``O_APPEND`` and each line is written with one
    ``write`` call, so lines from several processes do not interleave. It is
    created with mode ``0666 & ~umask``, as every file this tool writes.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if not spans:
            return SpanExportResult.SUCCESS
        line = (to_otlp_json(spans) + "\n").encode()
        with self._lock:
            if self._fd < 0:
                return SpanExportResult.FAILURE
            os.write(self._fd, line)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True
