"""The PromQL of the committed dashboard and alert rules, and the names it may use.

Shared by the static dashboard/alert tests and the end-to-end test against Prometheus.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector

from dashboards import dask_metrics
from dashboards.executor_dashboard import UID
from dashboards.generate import ALERTS, OUTPUT_DIR
from telemetry.catalog import METRICS

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD_JSON = OUTPUT_DIR / f"{UID}.json"
PROMETHEUS_DIR = ALERTS.parent
ROWS = ("Headroom", "Decisions", "Fallbacks", "Work", "Process", "Dask")

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
    return names | set(dask_metrics.METRICS)


def allowed_label_names() -> set[str]:
    """Labels of the catalog, the scrape's job/instance and the histogram's le."""
    dask_labels = {label for labels in dask_metrics.METRICS.values() for label in labels}
    return {label for spec in METRICS for label in spec.labels} | {"job", "instance", "le"} | dask_labels


def fill_variables(expr: str, *, job: str, instance: str, rate_interval: str = "8s") -> str:
    """The expression as Grafana sends it, template variables filled in."""
    for name, value in (("$__rate_interval", rate_interval), ("$__interval", "2s"), ("$__range", "60s"),
                        ("${job}", job), ("$job", job), ("${instance}", instance), ("$instance", instance)):
        expr = expr.replace(name, value)
    return expr
