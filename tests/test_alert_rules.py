"""The Prometheus alert rules, their promtool tests and the scrape config: generated, promtool-valid, on the catalog."""

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
    load_dashboard,
    metric_names,
)

from templ_pipeline.campaign.runner import DEFAULT_QUERY_TIMEOUT
from templ_pipeline.core.limits.grant import RESERVE_TASKS, compute_grant
from templ_pipeline.core.limits.model import PIDS_CGROUP, Limit, Snapshot, StackInfo
from templ_pipeline.core.limits.worker_cost import POOL_HELPER_THREADS, START_METHOD_HELPER_TASKS, worker_cost
from templ_pipeline.core.thread_manager import CRITICAL_PRESSURE, WARNING_PRESSURE
from templ_pipeline.dashboards import alert_queries, alert_tests, alerts
from templ_pipeline.dashboards.alert_tests import Kind
from templ_pipeline.dashboards.alerts import Severity
from templ_pipeline.dashboards.dashboard_exporters import CADVISOR_JOB, NODE_JOB, RULE_METRICS
from templ_pipeline.dashboards.generate import ALERT_TESTS
from templ_pipeline.dashboards.names import JOB, metric
from templ_pipeline.dashboards.thresholds import (
    CAMPAIGN_FAILURE_MINUTES,
    CAMPAIGN_FAILURE_RATIO,
    CAMPAIGN_STALL_MINUTES,
    DEAD_GROUP_HOURS,
    EVENT_WINDOW_MINUTES,
    MISSED_PUSHES,
    PUSH_FRESH_MINUTES,
    PUSH_SLACK_SECONDS,
    thresholds,
)
from templ_pipeline.telemetry.catalog import (
    EVENT_QUERY_FINISHED,
    EVENT_WORKER_REPLACED,
    FAILURE_REASONS,
    LIMIT_NAMES,
    QUERY_REASONS,
)

pytestmark = pytest.mark.fast

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (Debian package prometheus)")
_JOB_MATCHER = re.compile(r'\bjob="([^"]*)"')


def _promtool(*args: str) -> str:
    result = subprocess.run([PROMTOOL, *args], cwd=PROMETHEUS_DIR, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


@pytest.fixture
def default_environment(monkeypatch):
    """The project's default start method, and process workers with one BLAS thread (as pools start them)."""
    monkeypatch.delenv("TEMPL_MP_START_METHOD", raising=False)
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")


@needs_promtool
def test_promtool_accepts_the_rules_and_the_scrape_config():
    assert "SUCCESS" in _promtool("check", "rules", "alerts.yml")
    assert "SUCCESS" in _promtool("check", "config", "prometheus.yml")


@pytest.mark.slow
@needs_promtool
def test_promtool_unit_tests_pass():
    assert "SUCCESS" in _promtool("test", "rules", ALERT_TESTS.name)


def test_committed_files_are_the_generator_output(default_environment):
    assert ALERTS.read_text() == alerts.render(), "run `make dashboards` and commit the result"
    assert ALERT_TESTS.read_text() == alert_tests.render(), "run `make dashboards` and commit the result"


def test_rendered_yaml_reads_back_as_the_rules():
    assert yaml.safe_load(alerts.render()) == alerts.as_data(alerts.rules())


def test_rules_do_not_depend_on_the_machine_that_renders_them(default_environment, monkeypatch):
    committed, tests = ALERTS.read_text(), ALERT_TESTS.read_text()
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "64")  # worker_cost would now charge 64 tasks per worker
    assert alerts.render() == committed and alert_tests.render() == tests


def test_every_alert_has_all_five_kinds_of_test():
    """Read from the committed file's `<alert> | <kind>` comments, and checked on the cases behind them."""
    kinds = alert_tests.kinds_by_alert(ALERT_TESTS.read_text())
    assert set(kinds) == set(alert_rules())
    for name in alert_rules():
        assert kinds[name] == {kind.name for kind in Kind}, name
    waived = {(w.alert, w.kind) for w in alert_tests.WAIVERS}
    # the only kinds that cannot apply: a 10 s job cannot stall for minutes; node exporters are never pushed
    assert waived == {(alerts.STALLED, Kind.SHORT)} | {(name, Kind.PUSHED) for name in (
        alerts.NODE_THREADS, alerts.NODE_PIDS, alerts.CONTAINER_THREADS)}
    tests = yaml.safe_load(ALERT_TESTS.read_text())["tests"]
    cases = alert_tests.cases()
    assert len(tests) == len(cases)
    for case, test in zip(cases, tests, strict=True):
        assert {check["alertname"] for check in test["alert_rule_test"]} == {case.alert}
        fired = [bool(check["exp_alerts"]) for check in test["alert_rule_test"]]
        if case.kind is Kind.HEALTHY:
            assert not any(fired), case.note
        elif case.kind is Kind.RESOLVES:
            assert True in fired and fired[-1] is False, case.note  # fires, then is gone
        else:
            assert any(fired), case.note
        if case.kind is Kind.SHORT and case.interval == alert_tests.SCRAPE:  # a 10 s job: gone after 10 s
            assert all(values.endswith("stale") for _series, values in case.series), case.note
    counters = {c.alert: metric(c.counter) for c in alert_tests.COUNTER_ALERTS}
    born = [case for case in cases if case.kind is Kind.BORN_AT_1 and case.alert in counters]
    assert born
    for case in born:  # the counter's run shows it at 1 first: nothing of that run before it for increase() to see
        (values,) = {values for name, values in case.series if name.startswith(counters[case.alert] + "{")}
        assert values.split()[-3:][0].startswith(("_", "stale")) and values.split()[-2:] == ["1", "stale"], case.note
        assert any(name.startswith(metric("run_start")) for name, _values in case.series), case.note


def test_the_renderer_knows_only_the_template_subset():
    labels = {"instance": "h:9464", "job_id": "7"}
    assert alert_tests.expand(alerts.WHO, labels, None) == "h:9464 (job 7)"
    assert alert_tests.expand(alerts.WHO, {"instance": "h:9464"}, None) == "h:9464"
    assert alert_tests.expand("{{ $value | humanize }} / {{ $value | humanizePercentage }}", {}, 5) == "5 / 500%"
    with pytest.raises(ValueError, match="does not know"):
        alert_tests.expand("{{ $labels.x | toUpper }}", {"x": "a"}, None)


def test_counter_alerts_count_a_series_born_at_1_from_its_runs_start():
    shape = alert_queries.events("c", EVENT_WINDOW_MINUTES)
    assert shape.index("last_over_time(c") < shape.index("or\nincrease(c")  # or keeps the left side: born first
    started = alert_queries.run_started(EVENT_WINDOW_MINUTES)
    assert f"and on (job, instance, job_id)\n  ({started})" in shape and "offset" not in shape
    assert started.startswith(f"max_over_time({metric('run_start')}{{job=\"{JOB}\"}}[{EVENT_WINDOW_MINUTES}m])")
    assert started.endswith(f"> time() - {EVENT_WINDOW_MINUTES * 60}")
    for counter in alert_tests.COUNTER_ALERTS:
        assert started in alert_rules()[counter.alert]["expr"], counter.alert
    notes = {(case.alert, case.note) for case in alert_tests.cases()}
    for counter in alert_tests.COUNTER_ALERTS:  # the cases the series' own history got wrong
        for words in ("7 minutes after the first ended", "before Prometheus first scrapes",
                      "10-minute scrape gap"):
            assert any(alert == counter.alert and words in note for alert, note in notes), (counter.alert, words)


def test_a_pushed_job_is_dead_after_its_missed_pushes_and_the_lag_and_only_for_a_day():
    rules = {rule.alert: rule for rule in alerts.rules()}
    bound = f"{MISSED_PUSHES} * {metric('push_interval')}{{job=\"{JOB}\"}} + {PUSH_SLACK_SECONDS}"
    died, stalled = rules[alerts.PUSHED_JOB_DIED], rules[alerts.STALLED]
    assert f"({bound})\n< {DEAD_GROUP_HOURS * 3600}\n" in died.expr and bound in stalled.expr
    assert f"{DEAD_GROUP_HOURS} hours after its last push" in died.why + died.description
    assert PUSH_SLACK_SECONDS >= 30  # the Pushgateway's 15 s scrape plus the 15 s evaluation lag
    assert "job_id@base64/" in died.runbook and "URL-encode" in died.runbook


def test_only_failed_pushes_are_push_failures():
    rules = {rule.alert: rule for rule in alerts.rules()}
    push_failed, degraded = rules[alerts.PUSH_FAILED].expr, rules[alerts.TELEMETRY_DEGRADED].expr
    assert f'component="{alerts.PUSHGATEWAY}", reason="{alerts.PUSH_FAILED_REASON}"' in push_failed
    assert f'component="{alerts.PUSHGATEWAY}", reason!="{alerts.PUSH_FAILED_REASON}"' in degraded
    assert f'component!="{alerts.PUSHGATEWAY}"' in degraded


def test_host_limits_alert_for_instances_without_run_info():
    rules = {rule.alert: rule for rule in alerts.rules()}
    for name in (alerts.HOST_LOW, alerts.HOST_CRITICAL):
        assert "unless on (job, instance) max_over_time(templ_run_info" in rules[name].expr, name
        assert '"host", "$1", "instance", "(.*)"' in rules[name].expr, name
    assert any(case.alert == alerts.HOST_LOW and "no templ_run_info" in case.note for case in alert_tests.cases())


def test_the_batch_alerts_fire_without_waiting():
    """The end-to-end test sees these two fire (not pend) on a real Prometheus scraping `templ stress`."""
    rules = alert_rules()
    for name in (alerts.REFUSED_STARTS_ALERT, alerts.FALLBACK_ALERT):
        assert "for" not in rules[name], name
    assert all("for" not in rule for rule in rules.values())  # a 10 s job has no minutes to hold


def test_which_rules_select_which_job():
    config_text = (PROMETHEUS_DIR / "prometheus.yml").read_text()
    config = yaml.safe_load(config_text)
    assert [job["job_name"] for job in config["scrape_configs"]] == [JOB]
    assert config["rule_files"] == [ALERTS.name]
    node_rules = {alerts.NODE_THREADS: NODE_JOB, alerts.NODE_PIDS: NODE_JOB, alerts.CONTAINER_THREADS: CADVISOR_JOB}
    for rule in alerts.rules():
        assert set(_JOB_MATCHER.findall(rule.expr)) == {node_rules.get(rule.alert, JOB)}, rule.alert
        assert rule.selects == node_rules.get(rule.alert, JOB), rule.alert
    for job in (NODE_JOB, CADVISOR_JOB, "templ-pushgateway"):  # commented out: hosts differ per site
        assert f"# - job_name: {job}\n" in config_text, job
    assert "--collector.processes" in config_text and "honor_labels: true" in config_text


def test_rules_use_catalog_metrics_and_labels():
    external_labels = {label for names in RULE_METRICS.values() for label in names}
    metrics, labels = allowed_metric_names() | set(RULE_METRICS), allowed_label_names() | external_labels
    for name, rule in alert_rules().items():
        assert metric_names(rule["expr"]) and metric_names(rule["expr"]) <= metrics, name
        assert label_names(rule["expr"]) <= labels, name


def test_severities_follow_impact():
    rules = {rule.alert: rule for rule in alerts.rules()}
    pages = {name for name, rule in rules.items() if rule.severity is Severity.CRITICAL}
    assert pages == {alerts.SELECT_BEST_ERRORS, alerts.STALLED, alerts.PUSHED_JOB_DIED}
    for name, rule in rules.items():
        if "complete" in rule.description:  # "complete but slower", "runs, complete, below ...": never a page
            assert rule.severity is not Severity.CRITICAL, name
    assert rules[alerts.CRITICAL].severity is Severity.WARNING and rules[alerts.LOW].severity is Severity.INFO


def test_every_job_alert_keeps_pushed_jobs_apart():
    host_wide = {alerts.HOST_LOW, alerts.HOST_CRITICAL}
    for rule in alerts.rules():
        if rule.selects != JOB:
            continue
        if rule.alert in host_wide:
            assert "min by (job, host, limit)" in rule.expr and "max by (job, instance, host)" in rule.expr
            assert "{{ $labels.host }}" in rule.summary
        else:
            assert "job_id" in rule.expr and alerts.WHO in rule.summary, rule.alert


def test_gauge_alerts_ignore_stale_pushes_and_split_host_limits():
    stale = alert_queries.stale_pushes(PUSH_FRESH_MINUTES)
    rules = {rule.alert: rule for rule in alerts.rules()}
    for name in (alerts.LOW, alerts.CRITICAL, alerts.HOST_LOW, alerts.HOST_CRITICAL):
        assert stale in rules[name].expr and f"[{EVENT_WINDOW_MINUTES}m]" in rules[name].expr, name
    host = "|".join(alerts.HOST_LIMITS)
    assert f'limit!~"{host}"' in rules[alerts.LOW].expr and f'limit=~"{host}"' in rules[alerts.HOST_LOW].expr


def test_runbooks_work_inside_the_job_and_name_a_panel():
    dashboard = load_dashboard()
    titles, row = set(), ""
    for panel in dashboard["panels"]:
        row = panel["title"] if panel["type"] == "row" else row
        titles.add((row, panel["title"]))
    for rule in alerts.rules():
        assert "ulimit" not in rule.runbook, rule.alert  # shows the operator's shell, not the job
        assert rule.panels and all(str(panel) in rule.runbook for panel in rule.panels), rule.alert
        for panel in rule.panels:
            assert (panel.row, panel.title) in titles, (rule.alert, panel)
        if "templ doctor" in rule.runbook:
            assert alerts.IN_THE_JOB in rule.runbook, rule.alert
    for name in (alerts.LOW, alerts.REFUSED_STARTS_ALERT, alerts.REFUSED_FORKS):
        runbook = alert_rules()[name]["annotations"]["runbook"]
        for needed in ("srun --overlap --jobid", "kubectl exec", "docker exec", "/proc/PID/cgroup", "pids.events",
                       "dirname", "least room binds"):
            assert needed in runbook, (name, needed)
    assert "prlimit --pid PID" in alerts.PROCESS_LIMITS and "/proc/PID/limits" in alerts.PROCESS_LIMITS


def test_helper_tasks_in_the_runbooks_are_the_cost_models():
    text = alert_rules()[alerts.LOW]["annotations"]["runbook"]
    for method, tasks in START_METHOD_HELPER_TASKS.items():
        assert f"{method} {POOL_HELPER_THREADS + tasks}" in text, method
    assert "spawn 3" in text and "4 pool helper" not in text


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
    for name in (alerts.CRITICAL, alerts.HOST_CRITICAL):
        (tasks,) = _numbers(r"< (\d+)\n", rules[name]["expr"])
        assert _workers_granted(tasks, 2, "spawn") == 2 > _workers_granted(tasks - 1, 2, "spawn")
        assert f"below {tasks} tasks" in rules[name]["annotations"]["description"]
    for name, pressure in ((alerts.LOW, WARNING_PRESSURE), (alerts.CRITICAL, CRITICAL_PRESSURE)):
        (share,) = re.findall(r"< ([0-9.]+) \*", rules[name]["expr"])
        assert float(share) == pytest.approx(1 - pressure), name
        assert f"{round(100 * (1 - pressure))}% of the limit" in rules[name]["annotations"]["description"], name


def test_campaign_runbooks_lead_to_the_queries_and_the_stuck_parent():
    rules = alert_rules()
    failures = rules[alerts.CAMPAIGN_FAILURES]["annotations"]["runbook"]
    assert all(f"{reason}:" in failures or f"{reason} /" in failures for reason in QUERY_REASONS if reason != "none")
    for needed in (EVENT_QUERY_FINISHED, "query_id", "detail", 'status="failed"'):
        assert needed in failures, needed
    stalled = rules[alerts.STALLED]["annotations"]["runbook"]
    for needed in (EVENT_WORKER_REPLACED, "executor.fallback", "--resume", "SIGTERM", "--query-timeout", "py-spy"):
        assert needed in stalled, needed


def test_windows_are_declared_once():
    rules = alert_rules()
    failures, stalled = rules[alerts.CAMPAIGN_FAILURES], rules[alerts.STALLED]
    (ratio,) = re.findall(r"> ([0-9.]+)\n$", failures["expr"])
    assert float(ratio) == CAMPAIGN_FAILURE_RATIO and f"[{CAMPAIGN_FAILURE_MINUTES}m]" in failures["expr"]
    assert f"[{CAMPAIGN_STALL_MINUTES}m]" in stalled["expr"] and f"{CAMPAIGN_STALL_MINUTES * 60}" in stalled["expr"]
    # every query ends by the runner's time limit, and the alert waits longer than that
    assert CAMPAIGN_STALL_MINUTES * 60 > DEFAULT_QUERY_TIMEOUT
    assert f"{CAMPAIGN_STALL_MINUTES} minutes" in stalled["annotations"]["summary"]
    for counter in alert_tests.COUNTER_ALERTS:
        assert f"[{EVENT_WINDOW_MINUTES}m]" in rules[counter.alert]["expr"], counter.alert


def test_runbooks_and_descriptions_name_the_catalogs_values():
    rules = alert_rules()
    runbook = rules[alerts.LOW]["annotations"]["runbook"]
    assert all(f"{name}:" in runbook or f"{name} /" in runbook for name in LIMIT_NAMES)
    description = rules[alerts.SCORING_FAILURES]["annotations"]["description"]
    assert all(reason in description for reason in FAILURE_REASONS)
