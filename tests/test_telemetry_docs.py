"""docs/telemetry.md is generated from the catalog and kept current."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from templ_pipeline.telemetry import catalog, docs

pytestmark = pytest.mark.fast

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


def test_committed_page_is_current():
    assert docs.DEFAULT_OUTPUT.read_text(encoding="utf-8") == docs.render(), (
        "docs/telemetry.md is stale: run `python -m templ_pipeline.telemetry.docs`"
    )


def test_check_flags_a_stale_page(tmp_path):
    page = tmp_path / "telemetry.md"
    assert docs.main(["--check", "--output", str(page)]) == 1  # missing
    assert docs.main(["--output", str(page)]) == 0
    assert docs.main(["--check", "--output", str(page)]) == 0
    page.write_text(page.read_text() + "edited by hand\n")
    assert docs.main(["--check", "--output", str(page)]) == 1


def test_every_catalog_entry_is_documented():
    text = docs.render()
    for spec in catalog.METRICS:
        exposed = [spec.name + s for s in ("_bucket", "_sum", "_count")] if spec.kind == "histogram" else [spec.name]
        row = next(line for line in text.splitlines() if line.startswith(f"| `{exposed[0]}`"))
        assert all(f"`{name}`" in row for name in exposed)
        assert f"| {spec.kind} |" in row
        for label, values in spec.label_values.items():
            assert f"`{label}`: " + ", ".join(f"`{v}`" for v in values) in row
        for label in spec.labels:
            assert f"`{label}`" in row
    for span in catalog.SPANS:
        row = next(line for line in text.splitlines() if line.startswith(f"| `{span.name}` |"))
        assert all(f"`{a}`" in row for a in span.attributes)
        assert all(f"`{e}`" in row for e in span.events)
    for event, attributes in catalog.SPAN_EVENT_ATTRIBUTES.items():
        assert f"| `{event}` | " + ", ".join(f"`{a}`" for a in attributes) + " |" in text
    for log in catalog.LOG_EVENTS:
        assert f"| `{log.name}` | {log.level} | " + ", ".join(f"`{f}`" for f in log.fields) in text


def test_page_documents_access_and_common_log_fields():
    text = docs.render()
    for flag in ("--metrics-addr HOST:PORT", "127.0.0.1:9464", "--no-metrics-server", "--metrics-textfile PATH",
                 "--pushgateway URL", "--hold-metrics SECONDS", "--traces-file PATH", "--log-file PATH",
                 "--log-format json\\|console", "OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES",
                 "OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "/healthz", "OpenMetrics"):
        assert flag in text, flag
    for field in ("timestamp", "level", "event", "logger", "run_id", "trace_id", "span_id"):
        assert f"`{field}`" in text, field
    assert '{job="templ"} | json | event="executor.fallback"' in text


def test_promql_examples_parse(tmp_path):
    if not shutil.which(PROMTOOL):
        pytest.skip(f"promtool not found ({PROMTOOL}); install Debian package 'prometheus'")
    queries = re.findall(r"```promql\n(.*?)```", docs.render(), flags=re.S)
    assert len(queries) >= 8
    rules = ["groups:", "  - name: docs", "    rules:"]
    for i, query in enumerate(queries):
        rules += [f"      - record: docs:example{i}", f"        expr: {json.dumps(query)}"]  # JSON is YAML
    path = tmp_path / "rules.yml"
    path.write_text("\n".join(rules) + "\n")
    result = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
