"""The Prometheus alert rules and scrape config: promtool-valid, unit-tested, built on the catalog."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from dashboard_queries import (
    PROMETHEUS_DIR,
    alert_rules,
    allowed_label_names,
    allowed_metric_names,
    label_names,
    metric_names,
)

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (Debian package prometheus)")


def _promtool(*args: str) -> str:
    result = subprocess.run([PROMTOOL, *args], cwd=PROMETHEUS_DIR, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


@needs_promtool
def test_promtool_accepts_the_rules_and_the_scrape_config():
    assert "SUCCESS" in _promtool("check", "rules", "alerts.yml")
    assert "SUCCESS" in _promtool("check", "config", "prometheus.yml")


@needs_promtool
def test_promtool_unit_tests_pass():
    assert "SUCCESS" in _promtool("test", "rules", "alerts_test.yml")


def test_unit_tests_show_every_alert_firing_and_silent():
    tests = yaml.safe_load((PROMETHEUS_DIR / "alerts_test.yml").read_text())["tests"]
    checks = [check for test in tests for check in test["alert_rule_test"]]
    for name in alert_rules():
        assert any(c["alertname"] == name and c["exp_alerts"] for c in checks), f"{name} never fires"
        assert any(c["alertname"] == name and not c["exp_alerts"] for c in checks), f"{name} never stays silent"


def test_scrape_config_names_the_job_the_rules_select():
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    assert [job["job_name"] for job in config["scrape_configs"]] == ["templ"]
    assert config["rule_files"] == ["alerts.yml"]
    assert all('job="templ"' in rule["expr"] for rule in alert_rules().values())


def test_rules_use_catalog_metrics_and_labels():
    metrics, labels = allowed_metric_names(), allowed_label_names()
    for name, rule in alert_rules().items():
        assert metric_names(rule["expr"]) and metric_names(rule["expr"]) <= metrics, name
        assert label_names(rule["expr"]) <= labels, name


def test_every_alert_says_what_it_means_and_what_to_check():
    rules = alert_rules()
    assert set(rules) == {"TemplThreadHeadroomLow", "TemplThreadHeadroomCritical", "TemplExecutorFellBackToSequential",
                          "TemplWorkerReductionsSustained", "TemplScoringFailureRatioHigh"}
    for name, rule in rules.items():
        annotations = rule["annotations"]
        assert annotations["summary"] and annotations["description"], name
        for check in ("templ doctor", "pids", "ulimit -u"):
            assert check in annotations["runbook"], (name, check)
        assert rule["labels"]["severity"] in ("warning", "critical"), name
    assert rules["TemplThreadHeadroomLow"]["for"] and rules["TemplThreadHeadroomCritical"]["for"]
    assert rules["TemplThreadHeadroomCritical"]["labels"]["severity"] == "critical"
