"""The resource of a real ``templ`` run's spans: the application's defaults, and the standard
OpenTelemetry variables overriding them, read back from ``--traces-file``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from templ_runs import run_templ, templ_env

from templ_pipeline import __version__


def _run(tmp: Path, env: dict[str, str]) -> tuple[list[dict[str, object]], str]:
    """Run ``templ demo`` with ``env`` added to an environment without OTEL_* variables:
    (the resource of every exported batch, as {key: value}; the run id of the log lines)."""
    traces, log = tmp / "traces.jsonl", tmp / "run.log"
    result = run_templ("demo", "-n", "4", "-w", "1", "-o", tmp / "demo.sdf", "--no-metrics-server",
                       "--traces-file", traces, "--log-file", log, timeout=120, env=templ_env(["OTEL_*"], **env))
    assert result.returncode == 0, result.stderr
    resources = []
    for line in traces.read_text().splitlines():
        for resource_spans in json.loads(line)["resourceSpans"]:
            resources.append({a["key"]: a["value"]["stringValue"]
                              for a in resource_spans["resource"]["attributes"]})
    (run_id,) = {json.loads(line)["run_id"] for line in log.read_text().splitlines()}
    assert resources, "the run exported no spans"
    return resources, run_id


def test_defaults_name_the_service_its_version_and_the_run(tmp_path):
    resources, run_id = _run(tmp_path, {})
    for resource in resources:
        assert resource["service.name"] == "templ"
        assert resource["service.version"] == __version__
        assert resource["service.instance.id"] == resource["templ.run_id"] == run_id
        assert resource["telemetry.sdk.language"] == "python"


@pytest.mark.parametrize("env, expected", [
    pytest.param(
        {"OTEL_RESOURCE_ATTRIBUTES": "service.name=from-attributes,service.instance.id=pod-7,"
                                     "deployment.environment.name=ci%20one"},
        {"service.name": "from-attributes", "service.instance.id": "pod-7", "deployment.environment.name": "ci one",
         "service.version": __version__},
        id="resource-attributes"),
    pytest.param(
        {"OTEL_SERVICE_NAME": "from-service-name",
         "OTEL_RESOURCE_ATTRIBUTES": "service.name=from-attributes,service.version=9.9.9"},
        {"service.name": "from-service-name", "service.version": "9.9.9"},
        id="service-name-over-attributes"),
])
def test_environment_overrides_the_defaults(tmp_path, env, expected):
    resources, run_id = _run(tmp_path, env)
    for resource in resources:
        assert {key: resource.get(key) for key in expected} == expected
        assert resource["templ.run_id"] == run_id
