"""The Prometheus alert rules and scrape config: generated, promtool-valid, unit-tested, built on the catalog."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

from dashboard_queries import (
    ALERTS,
    PROMETHEUS_DIR,
    alert_rules,
    allowed_label_names,
    allowed_metric_names,
    label_names,
    metric_names,
)
from templ_pipeline.dashboards import alerts
from templ_pipeline.dashboards.names import JOB
from templ_pipeline.dashboards.thresholds import (
    CAMPAIGN_FAILURE_MINUTES,
    CAMPAIGN_FAILURE_RATIO,
    CAMPAIGN_STALL_MINUTES,
    thresholds,
)
from templ_pipeline.telemetry.catalog import EVENT_QUERY_FINISHED, EVENT_WORKER_REPLACED, FAILURE_REASONS, LIMIT_NAMES, QUERY_REASONS
from templ_pipeline.campaign.runner import DEFAULT_QUERY_TIMEOUT
from templ_pipeline.core.limits.grant import RESERVE_TASKS, compute_grant
from templ_pipeline.core.limits.model import PIDS_CGROUP, Limit, Snapshot, StackInfo
from templ_pipeline.core.limits.worker_cost import START_METHOD_HELPER_TASKS, worker_cost
from templ_pipeline.core.thread_manager import CRITICAL_PRESSURE, WARNING_PRESSURE

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
    assert [job["job_name"] for job in config["scrape_configs"]] == [JOB]
    assert config["rule_files"] == [ALERTS.name]
    assert all(f'job="{JOB}"' in rule["expr"] for rule in alert_rules().values())


def test_rules_use_catalog_metrics_and_labels():
    metrics, labels = allowed_metric_names(), allowed_label_names()
    for name, rule in alert_rules().items():
        assert metric_names(rule["expr"]) and metric_names(rule["expr"]) <= metrics, name
        assert label_names(rule["expr"]) <= labels, name


CAMPAIGN_ALERTS = {"TemplCampaignFailureRatioHigh", "TemplCampaignStalled"}


def test_every_alert_says_what_it_means_and_what_to_check():
    rules = alert_rules()
    assert set(rules) == {"TemplThreadHeadroomLow", "TemplThreadHeadroomCritical", "TemplPidsCgroupRefusedForks",
                          "TemplExecutorFellBackToSequential", "TemplWorkerReductionsSustained",
                          "TemplScoringFailureRatioHigh"} | CAMPAIGN_ALERTS
    for name, rule in rules.items():
        annotations = rule["annotations"]
        assert annotations["summary"] and annotations["description"], name
        # a campaign that fails or stalls may be starved of workers too: its runbook says where to look
        for check in ("templ doctor", "pids", "ulimit -u"):
            assert check in annotations["runbook"], (name, check)
        assert rule["labels"]["severity"] in ("warning", "critical"), name
    assert rules["TemplThreadHeadroomLow"]["for"] and rules["TemplThreadHeadroomCritical"]["for"]
    assert rules["TemplThreadHeadroomCritical"]["labels"]["severity"] == "critical"


@pytest.fixture
def default_environment(monkeypatch):
    """The project's default start method, and process workers with one BLAS thread (as pools start them)."""
    monkeypatch.delenv("TEMPL_MP_START_METHOD", raising=False)
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")


def test_committed_rules_are_the_generator_output(default_environment):
    assert ALERTS.read_text() == alerts.render(), "run `make dashboards` and commit the result"


def test_rendered_yaml_reads_back_as_the_rules():
    assert yaml.safe_load(alerts.render()) == alerts.as_data(alerts.rules())


def test_rules_do_not_depend_on_the_machine_that_renders_them(default_environment, monkeypatch):
    committed = ALERTS.read_text()
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "64")  # worker_cost would now charge 64 tasks per worker
    assert alerts.render() == committed


def _workers_granted(headroom: int, requested: int, start_method: str) -> int:
    """What the grant gives a process pool when a pids cgroup has ``headroom`` tasks left."""
    limit = Limit(PIDS_CGROUP, headroom, 0, headroom, True, "test")
    snapshot = Snapshot(0.0, None, None, (limit,), StackInfo(8 << 20, 8 << 20, -1, None, None))
    return compute_grant(snapshot, requested, worker_cost("process", start_method)).granted


@pytest.mark.parametrize("start_method", sorted(START_METHOD_HELPER_TASKS))
def test_headroom_thresholds_are_what_the_grant_decides(default_environment, start_method):
    t = thresholds(start_method)
    pool = t.smallest_pool
    assert _workers_granted(t.critical_tasks, pool, start_method) == pool
    assert _workers_granted(t.critical_tasks - 1, pool, start_method) < pool
    largest = t.largest_pool_below_warning
    assert _workers_granted(t.warning_tasks - 1, largest + 1, start_method) == largest


def _numbers(pattern: str, text: str) -> set[int]:
    found = {int(n) for n in re.findall(pattern, text)}
    assert found, (pattern, text[:200])
    return found


def test_numbers_in_the_rule_file_are_the_codes(default_environment):
    cost = worker_cost("process", "spawn")
    text = " ".join(line.strip(" #") for line in ALERTS.read_text().splitlines())  # comments and folded text
    assert _numbers(r"(\d+) pool helper tasks", text) == {cost.fixed_tasks}
    assert _numbers(r"(\d+) threads of the pool", text) == {cost.pool_helpers}
    assert _numbers(r"(\d+) helper process", text) == {cost.helper_processes}
    assert _numbers(r"a reserve of (\d+)", text) == {RESERVE_TASKS}
    rules = alert_rules()
    critical = rules["TemplThreadHeadroomCritical"]
    (tasks,) = _numbers(r"< (\d+)\n", critical["expr"])
    assert _workers_granted(tasks, 2, "spawn") == 2 > _workers_granted(tasks - 1, 2, "spawn")
    assert f"critical below {tasks} tasks" in critical["annotations"]["description"]
    for name, pressure in (("TemplThreadHeadroomLow", WARNING_PRESSURE), ("TemplThreadHeadroomCritical",
                                                                            CRITICAL_PRESSURE)):
        (share,) = re.findall(r"< ([0-9.]+) \*", rules[name]["expr"])
        assert float(share) == pytest.approx(1 - pressure), name
        assert f"{round(100 * (1 - pressure))}% of the limit" in rules[name]["annotations"]["description"], name


def test_campaign_runbooks_lead_to_the_queries_and_the_stuck_parent():
    rules = alert_rules()
    failures = rules["TemplCampaignFailureRatioHigh"]["annotations"]["runbook"]
    assert all(f"{reason}:" in failures or f"{reason} /" in failures for reason in QUERY_REASONS if reason != "none")
    for needed in (EVENT_QUERY_FINISHED, "query_id", "detail", 'status="failed"'):
        assert needed in failures, needed
    stalled = rules["TemplCampaignStalled"]["annotations"]["runbook"]
    for needed in (EVENT_WORKER_REPLACED, "executor.fallback", "--resume", "SIGTERM", "--query-timeout"):
        assert needed in stalled, needed
    assert rules["TemplCampaignStalled"]["labels"]["severity"] == "critical"


def test_campaign_thresholds_are_declared_once():
    rules = alert_rules()
    failures, stalled = rules["TemplCampaignFailureRatioHigh"], rules["TemplCampaignStalled"]
    (ratio,) = re.findall(r"> ([0-9.]+)\n$", failures["expr"])
    assert float(ratio) == CAMPAIGN_FAILURE_RATIO
    assert failures["for"] == f"{CAMPAIGN_FAILURE_MINUTES}m" and f"[{CAMPAIGN_FAILURE_MINUTES}m]" in failures["expr"]
    (window,) = re.findall(r"increase\(.*\[(\d+)m\]\)", stalled["expr"])
    assert int(window) + int(stalled["for"].rstrip("m")) == CAMPAIGN_STALL_MINUTES
    # every query ends by the runner's time limit, and the alert waits longer than that
    assert CAMPAIGN_STALL_MINUTES * 60 > DEFAULT_QUERY_TIMEOUT
    assert f"{CAMPAIGN_STALL_MINUTES} minutes" in stalled["annotations"]["summary"]


def test_runbooks_and_descriptions_name_the_catalogs_values():
    rules = alert_rules()
    runbook = rules["TemplThreadHeadroomLow"]["annotations"]["runbook"]
    assert all(f"{name}:" in runbook or f"{name} /" in runbook for name in LIMIT_NAMES)
    description = rules["TemplScoringFailureRatioHigh"]["annotations"]["description"]
    assert all(reason in description for reason in FAILURE_REASONS)
