"""The PromQL of the committed dashboard and alert rules, the names it may use, and a real Prometheus to run it.

Shared by the static dashboard/alert tests and the end-to-end tests against Prometheus.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from ports import free_port
from processes import stop
from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector, start_http_server
from prometheus_client.core import Metric

from templ_pipeline.dashboards import dashboard_exporters, dask_metrics
from templ_pipeline.dashboards.executor_dashboard import UID
from templ_pipeline.dashboards.generate import ALERTS, OUTPUT_DIR
from templ_pipeline.telemetry.catalog import METRICS

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD_JSON = OUTPUT_DIR / f"{UID}.json"
PROMETHEUS_DIR = ALERTS.parent
ROWS = ("Headroom", "Decisions", "Fallbacks", "Work", "Campaign", "Process", "Fleet", "Exporters", "Dask")

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_IDENTIFIER = re.compile(r"(?<![\w.$])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()")
_KEYWORDS = {"and", "or", "unless", "offset", "bool", "by", "without", "on", "ignoring", "group_left",
             "group_right", "Inf", "NaN", "inf", "nan"}
_LABEL_NAME = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
_LABEL_VALUES = re.compile(r"label_values\((.+),\s*(\w+)\)")
_LEGEND_LABEL = re.compile(r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}")


@dataclass(frozen=True)
class PanelQuery:
    """One query of the dashboard: where it is and what it says."""

    row: str
    panel: str
    expr: str
    legend: str | None


def load_dashboard() -> dict:
    return json.loads(DASHBOARD_JSON.read_text())


def panel_queries(dashboard: dict) -> list[PanelQuery]:
    """Every panel target, tagged with the row above it."""
    queries, row = [], ""
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            row = panel["title"]
            continue
        for target in panel.get("targets", []):
            queries.append(PanelQuery(row, panel["title"], target["expr"], target.get("legendFormat")))
    return queries


def annotation_queries(dashboard: dict) -> list[str]:
    """PromQL of the annotations on the Prometheus datasource."""
    return [a["expr"] for a in dashboard["annotations"]["list"] if a["datasource"]["type"] == "prometheus"]


def variable_queries(dashboard: dict) -> dict[str, tuple[str, str]]:
    """Query variable -> (series selector, label) of its Grafana ``label_values(selector, label)``."""
    found = {}
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            selector, label = _LABEL_VALUES.fullmatch(variable["query"]).groups()
            found[variable["name"]] = (selector, label)
    return found


def alert_rules() -> dict[str, dict]:
    """Alert name -> rule, from the committed rule file."""
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"] if "alert" in rule}


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects (label names, functions and keywords left out)."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub("", _RANGE.sub("", _GROUPING.sub("", text)))
    text = re.sub(r"\$\w+", "", text)
    return {name for name in _IDENTIFIER.findall(text) if name not in _KEYWORDS}


def label_names(expr: str, legend: str | None = None) -> set[str]:
    """Label names an expression (matchers, grouping) and its legend refer to."""
    names: set[str] = set()
    for block in _MATCHERS.findall(_STRING.sub('""', expr)):
        names.update(_LABEL_NAME.findall(block))
    for group in _GROUPING.findall(expr):
        names.update(n.strip() for n in group.split(",") if n.strip())
    names.update(_LEGEND_LABEL.findall(legend or ""))
    return names


def allowed_metric_names() -> set[str]:
    """Exposition names of the catalog (histogram series suffixes included) and the process collectors."""
    names: set[str] = set()
    for spec in METRICS:
        names.add(spec.name)
        if spec.kind == "histogram":
            names.update(spec.name + suffix for suffix in ("_bucket", "_sum", "_count"))
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    names.update(sample.name for metric in registry.collect() for sample in metric.samples)
    return names | set(dask_metrics.METRICS) | set(dashboard_exporters.METRICS)


def allowed_label_names() -> set[str]:
    """Labels of the catalog, the scrape's job/instance, the histogram's le and the other exporters' labels."""
    other = {label for metrics in (dask_metrics.METRICS, dashboard_exporters.METRICS)
             for labels in metrics.values() for label in labels}
    return {label for spec in METRICS for label in spec.labels} | {"job", "instance", "le"} | other


def fill_variables(expr: str, *, job: str, instance: str, rate_interval: str = "8s", interval: str = "1s",
                   range_: str = "60s", host: str = ".*", job_id: str = ".*", node_job: str = "node",
                   cadvisor_job: str = "cadvisor") -> str:
    """The expression as Grafana sends it, template variables filled in.

    ``interval`` is ``$__interval``: Grafana sends a range query with a step of ``$__interval``, and
    the event bars (``promql.events``) add up exactly only when the step equals it, so a range
    query of a filled expression must use ``step=interval``. Longer names go first (``$job_id``
    before ``$job``).
    """
    for name, value in (("$__rate_interval", rate_interval), ("$__interval", interval), ("$__range", range_),
                        ("${job_id}", job_id), ("$job_id", job_id), ("${job}", job), ("$job", job),
                        ("${instance}", instance), ("$instance", instance), ("${host}", host), ("$host", host),
                        ("${node_job}", node_job), ("$node_job", node_job),
                        ("${cadvisor_job}", cadvisor_job), ("$cadvisor_job", cadvisor_job)):
        expr = expr.replace(name, value)
    return expr


def seconds(duration: str) -> float:
    """``"2s"`` -> 2.0: a Prometheus duration in whole seconds, minutes or hours."""
    number, unit = re.fullmatch(r"(\d+(?:\.\d+)?)([smh])", duration).groups()
    return float(number) * {"s": 1, "m": 60, "h": 3600}[unit]


def sum_of_bars(server: Prometheus, expr: str, start: float, end: float, *, job: str, instance: str,
                interval: str = "1s") -> float:
    """The sum of every bar of a panel query over ``[start, end]``, as Grafana draws it (step = interval)."""
    filled = fill_variables(expr, job=job, instance=instance, interval=interval)
    answer = server.api("/api/v1/query_range", query=filled, start=start, end=end, step=seconds(interval))
    assert answer["status"] == "success", (filled, answer)
    return sum(float(value) for series in answer["data"]["result"] for _t, value in series["values"])


PROMETHEUS = shutil.which("prometheus")


def tail(path: Path, chars: int = 4000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


@dataclass
class Prometheus:
    """A running Prometheus and the port of the one target it scrapes (job "templ")."""

    url: str
    target_port: int
    log: Path

    def api(self, path: str, **params: object) -> dict:
        """GET an API endpoint; the JSON body, also for 4xx answers (a bad query)."""
        query = urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=10) as response:
                return json.load(response)
        except urllib.error.HTTPError as error:
            return json.load(error)

    def alert_states(self) -> dict[str, set[str]]:
        """Alert name -> the states (pending, firing) its alerts are in now."""
        states: dict[str, set[str]] = {}
        for alert in self.api("/api/v1/alerts")["data"]["alerts"]:
            states.setdefault(alert["labels"]["alertname"], set()).add(alert["state"])
        return states


@contextmanager
def prometheus_with(config: dict, target_port: int = 0, *flags: str) -> Iterator[Prometheus]:
    """Prometheus on a free loopback port with ``config`` (and command-line ``flags``), its own storage,
    ready to answer; stopped and removed however the block ends. ``target_port`` is recorded on the result."""
    assert PROMETHEUS is not None, "prometheus is not installed"
    workdir = Path(tempfile.mkdtemp(prefix="templ-prometheus-"))
    try:
        port = free_port()
        (workdir / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
        log = workdir / "prometheus.log"
        with open(log, "w") as out:
            process = subprocess.Popen(
                [PROMETHEUS, f"--config.file={workdir / 'prometheus.yml'}", f"--storage.tsdb.path={workdir / 'data'}",
                 f"--web.listen-address=127.0.0.1:{port}", *flags],
                stdout=out, stderr=subprocess.STDOUT,
            )
        try:
            server = Prometheus(f"http://127.0.0.1:{port}", target_port, log)
            deadline = time.monotonic() + 30
            while True:
                assert process.poll() is None, tail(log)
                try:
                    with urllib.request.urlopen(f"{server.url}/-/ready", timeout=1):
                        break
                except OSError:
                    assert time.monotonic() < deadline, tail(log)
                    time.sleep(0.2)
            yield server
        finally:
            stop(process, grace=10)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def prometheus_server() -> Iterator[Prometheus]:
    """Prometheus with 1 s scrape and rule evaluation of the committed alerts and exemplar storage (see
    :func:`prometheus_with`). Its one target is ``127.0.0.1:<target_port>``."""
    target_port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [{"job_name": "templ", "static_configs": [{"targets": [f"127.0.0.1:{target_port}"]}]}],
    }
    with prometheus_with(config, target_port, "--enable-feature=exemplar-storage") as server:
        yield server


@pytest.fixture
def prometheus() -> Iterator[Prometheus]:
    """A real Prometheus on a free 127.0.0.1 port, stopped after the test (skipped where none is installed)."""
    if PROMETHEUS is None:
        pytest.skip("prometheus is not installed (make test installs the Debian package)")
    with prometheus_server() as server:
        yield server


class ScrapeTarget:
    """A /metrics endpoint on 127.0.0.1 that serves exactly the metric families a test sets.

    It stands in for a TEMPL process where a test needs series a real run cannot produce on
    cue: a counter born at 1, a restart on the same instance, a tight limit then a healthy one.
    """

    def __init__(self) -> None:
        self._families: list[Metric] = []
        self._lock = threading.Lock()
        registry = CollectorRegistry()
        registry.register(self)
        self.port = free_port()
        self._server, self._thread = start_http_server(self.port, addr="127.0.0.1", registry=registry)

    def collect(self) -> list[Metric]:
        with self._lock:
            return list(self._families)

    def show(self, families: list[Metric]) -> None:
        """Serve ``families`` from the next scrape on."""
        with self._lock:
            self._families = list(families)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


@contextmanager
def scraped_target() -> Iterator[tuple[ScrapeTarget, Prometheus]]:
    """A :class:`ScrapeTarget` and a Prometheus scraping it every second as job "templ" (no rules)."""
    if PROMETHEUS is None:
        pytest.skip("prometheus is not installed (make test installs the Debian package)")
    target = ScrapeTarget()
    try:
        config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                  "scrape_configs": [{"job_name": "templ",
                                      "static_configs": [{"targets": [f"127.0.0.1:{target.port}"]}]}]}
        with prometheus_with(config, target.port) as server:
            yield target, server
    finally:
        target.close()
