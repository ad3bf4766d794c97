"""The local stack's files agree with each other, with the CLI and with the dashboard.

There is no Docker engine here, so the compose file cannot run; these checks catch the
mistakes that can be seen without one: a mount of a missing file, an unpinned image, a flag
the CLI does not have, a port or a datasource uid that does not match its other end.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
import yaml
from dashboard_queries import PROMETHEUS_DIR, ROOT

from templ_pipeline.cli import app

pytestmark = pytest.mark.fast

DASHBOARDS = ROOT / "dashboards"
COMPOSE_DIR = DASHBOARDS / "compose"
PROVISIONING = DASHBOARDS / "grafana" / "provisioning"


@pytest.fixture(scope="module")
def services() -> dict:
    return yaml.safe_load((COMPOSE_DIR / "compose.yaml").read_text())["services"]


def _mounts(service: dict) -> dict[str, str]:
    """Container path -> host source of a service's volumes."""
    return {spec.split(":")[1]: spec.split(":")[0] for spec in service.get("volumes", [])}


def test_images_are_pinned_and_bind_mounts_exist(services):
    for name, service in services.items():
        if "image" in service:
            image = service["image"]
            assert ":" in image and not image.endswith(":latest"), (name, image)
        for target, source in _mounts(service).items():
            if source.startswith("."):
                assert (COMPOSE_DIR / source).exists(), (name, source, target)
    build = services["templ"]["build"]
    assert (COMPOSE_DIR / build["context"] / build["dockerfile"]).is_file()


def test_job_command_uses_real_stress_options(services):
    stress = typer.main.get_command(app).commands["stress"]  # type: ignore[attr-defined]
    known = {opt for param in stress.params for opt in param.opts}
    command = services["templ"]["command"]
    assert command[0] == "stress"
    assert {arg.split("=")[0] for arg in command[1:]} <= known


def _option(command: list[str], name: str) -> str:
    return next(arg.split("=", 1)[1] for arg in command if arg.startswith(name + "="))


def test_metrics_logs_and_traces_reach_their_stores(services):
    command = services["templ"]["command"]
    port = _option(command, "--metrics-addr").rsplit(":", 1)[1]
    scrape = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())["scrape_configs"][0]
    assert scrape["static_configs"][0]["targets"] == [f"templ:{port}"]
    assert "/etc/prometheus" in _mounts(services["prometheus"])
    assert "--enable-feature=exemplar-storage" in services["prometheus"]["command"]

    log_dir = str(Path(_option(command, "--log-file")).parent)
    assert log_dir in _mounts(services["templ"]) and log_dir in _mounts(services["alloy"])
    alloy = (COMPOSE_DIR / "config.alloy").read_text()
    assert f'"{log_dir}/*.log"' in alloy and '"job" = "templ"' in alloy and "http://loki:3100" in alloy

    env = services["templ"]["environment"]
    assert env["OTEL_TRACES_EXPORTER"] == "otlp" and env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://tempo:4318"
    tempo = yaml.safe_load((COMPOSE_DIR / "tempo.yaml").read_text())
    assert tempo["distributor"]["receivers"]["otlp"]["protocols"]["http"]["endpoint"] == "0.0.0.0:4318"


def test_grafana_is_provisioned_with_linked_datasources_and_the_dashboards(services):
    grafana = _mounts(services["grafana"])
    assert Path(grafana["/etc/grafana/provisioning"]) == Path("../grafana/provisioning")
    datasources = {d["uid"]: d for d in yaml.safe_load(
        (PROVISIONING / "datasources" / "templ.yml").read_text())["datasources"]}
    assert {uid: d["type"] for uid, d in datasources.items()} == {
        "prometheus": "prometheus", "tempo": "tempo", "loki": "loki"}
    prometheus = datasources["prometheus"]["jsonData"]
    (exemplars,) = prometheus["exemplarTraceIdDestinations"]
    assert (exemplars["name"], exemplars["datasourceUid"]) == ("trace_id", "tempo")
    scrape = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())["scrape_configs"][0]
    assert prometheus["timeInterval"] == scrape["scrape_interval"]
    assert datasources["tempo"]["jsonData"]["tracesToLogsV2"]["datasourceUid"] == "loki"
    assert datasources["loki"]["jsonData"]["derivedFields"][0]["datasourceUid"] == "tempo"

    (provider,) = yaml.safe_load((PROVISIONING / "dashboards" / "templ.yml").read_text())["providers"]
    dashboards_dir = provider["options"]["path"]
    assert Path(grafana[dashboards_dir]) == Path("../grafana/dashboards")
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (DASHBOARDS / "grafana" / "dashboards" / Path(home).relative_to(dashboards_dir)).is_file()
