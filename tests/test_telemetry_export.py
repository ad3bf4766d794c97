"""Final-metrics delivery: node_exporter textfile and a real Pushgateway; promtool lint."""

from __future__ import annotations

import math
import os
import shutil
import socket
import subprocess
import time
import urllib.request

import pytest
from ports import free_port, silent_listener
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from pushgateway_server import pushgateway  # noqa: F401 - the fixture
from recorder_events import batch_done, worker_span

from templ_pipeline import telemetry
from templ_pipeline.core import events as ev
from templ_pipeline.telemetry.export import PushError, push_metrics, write_textfile

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


def _run_events() -> None:
    """A realistic run: a reduction, a fallback, batches in and out of process, a pool restart (the limits
    are this machine's, read at each collection)."""
    process, thread, sequential = ev.ExecutorKind.PROCESS, ev.ExecutorKind.THREAD, ev.ExecutorKind.SEQUENTIAL
    observe = telemetry.observe
    observe(ev.WorkersGranted(ev.TaskType.SCORING, 8, 8))
    observe(ev.SelectBestStarted(35, 8))
    observe(ev.WorkersReduced(ev.TaskType.CONFORMERS, 8, 3, ev.ReductionReason.PIDS_CGROUP, "pids.max=40", 3))
    observe(batch_done(0, 10, failed=1, span=worker_span()))
    observe(ev.Fallback(process, thread, ev.FallbackReason.PROCESS_START_FAILED, ev.FallbackCause.RLIMIT_NPROC,
                        error=OSError(11, "Resource temporarily unavailable")))
    observe(batch_done(1, 10, thread, failed=1, span=worker_span()))
    observe(batch_done(2, 10, failed=1, span=worker_span()))
    observe(batch_done(3, 5, seconds=0.02))  # a task that carried no trace
    observe(ev.PoolRestarted(process, ev.FallbackReason.BROKEN_POOL))
    observe(ev.Fallback(thread, sequential, ev.FallbackReason.NO_HEADROOM))
    observe(ev.SelectBestFinished(35, 8, 3, sequential, 32, {"no_coordinates": 3}, 0.5))
    _campaign_events()


def _campaign_events() -> None:
    """A short campaign: ok, failed and short queries, a worker replaced, the end (in_flight back to 0)."""
    for event in (
        ev.CampaignStarted(total=5, skipped=1, templates=1, workers_requested=2), ev.QueryStarted(0, 1),
        ev.QueryStarted(1, 2),
        ev.QueryFinished("q0", ev.ExecutorKind.PROCESS, ev.QueryStatus.OK, None, 1.5, 10, 7, 7, 0, 1, index=0),
        ev.QueryFinished("q1", ev.ExecutorKind.PROCESS, ev.QueryStatus.FAILED, ev.QueryFailureReason.TIMEOUT,
                         600.0, 10, 0, 0, 0, 0, "ran over 600 s", index=1),
        ev.WorkerReplaced(ev.ExecutorKind.PROCESS, ev.ReplacementReason.TIMEOUT, "q1"),
        ev.CampaignDone(done=2, ok=1, failed=1, seconds=602.0, interrupted=False, workers_granted=2),
    ):
        telemetry.observe(event)


def _key(name: str, labels: dict[str, str], drop=()) -> tuple[str, frozenset]:
    """Sample identity; ``le`` compared as a number (Go writes ``1``, Python ``1.0``)."""
    return name, frozenset((k, str(float(v)) if k == "le" else v) for k, v in labels.items() if k not in drop)


def _samples(text: str) -> dict[tuple[str, frozenset], float]:
    return {_key(s.name, s.labels): s.value for family in text_string_to_metric_families(text) for s in family.samples}


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def _promtool_check_metrics(exposition: bytes) -> subprocess.CompletedProcess:
    if not os.access(PROMTOOL, os.X_OK):
        pytest.skip(f"promtool not found ({PROMTOOL}); install Debian package 'prometheus'")
    return subprocess.run([PROMTOOL, "check", "metrics"], input=exposition, capture_output=True, timeout=30)


# ---------------------------------------------------------------------------
# promtool on the full exposition
# ---------------------------------------------------------------------------
def test_promtool_finds_no_problems_in_exposition(tel):
    _run_events()
    exposition = generate_latest(tel.registry)
    assert b"templ_executor_fallbacks_total{" in exposition
    # the standard process_threads beside prometheus-client's process_* metrics, and the scrape-time pids families
    assert b"\nprocess_threads " in exposition and b"\nprocess_resident_memory_bytes " in exposition
    assert b"# TYPE templ_pids_cgroup_refused_forks_total counter" in exposition
    assert b"# TYPE templ_pids_cgroup_peak_tasks gauge" in exposition
    assert b'templ_campaign_queries_total{reason="timeout",status="failed"} 1.0' in exposition
    assert b"templ_campaign_queries_expected 5.0" in exposition
    result = _promtool_check_metrics(exposition)
    assert result.returncode == 0 and not result.stdout and not result.stderr, result.stdout + result.stderr


def test_promtool_accepts_the_exposition_before_any_event(tel):
    exposition = generate_latest(tel.registry)
    assert b"templ_campaign_queries_expected NaN" in exposition  # unknown until a campaign starts
    result = _promtool_check_metrics(exposition)
    assert result.returncode == 0 and not result.stdout and not result.stderr, result.stdout + result.stderr


# ---------------------------------------------------------------------------
# Textfile
# ---------------------------------------------------------------------------
def test_textfile_written_and_parses(tel, tmp_path):
    _run_events()
    path = tmp_path / "templ.prom"
    write_textfile(path)  # default registry: the telemetry singleton
    assert os.listdir(tmp_path) == ["templ.prom"]  # no temporary file left behind
    text = path.read_text()
    samples = _samples(text)
    assert samples[("templ_conformers_scored_total", frozenset())] == 32
    key = frozenset({"from_kind": "thread", "to_kind": "sequential", "reason": "no_headroom", "cause": "none"}.items())
    assert samples[("templ_executor_fallbacks_total", key)] == 1
    # live state and the default collectors stay out: the file outlives the process
    names = {name for name, _labels in samples}
    assert not {"templ_thread_headroom", "templ_thread_limit", "templ_threads_active", "process_threads"} & names
    assert not [name for name in names if name.startswith(("process_", "python_")) or name.endswith("_created")]
    result = _promtool_check_metrics(path.read_bytes())
    assert result.returncode == 0 and not result.stdout and not result.stderr, result.stdout + result.stderr


def test_textfile_labels_every_sample_with_the_job(tel, tmp_path):
    _run_events()
    path = write_textfile(tmp_path / "templ_42.prom", labels={"job_id": "42"})
    families = list(text_string_to_metric_families(path.read_text()))
    assert families and all(s.labels["job_id"] == "42" for f in families for s in f.samples)
    result = _promtool_check_metrics(path.read_bytes())
    assert result.returncode == 0 and not result.stdout and not result.stderr, result.stdout + result.stderr


def test_exposition_has_no_created_series_but_library_users_keep_theirs(tel):
    from prometheus_client import Counter

    assert b"_created" not in generate_latest(tel.registry)
    theirs = CollectorRegistry()
    Counter("app_requests", "An application's own counter.", registry=theirs).inc()
    assert b"app_requests_created" in generate_latest(theirs)  # the process-wide switch is left alone


def test_counters_with_bounded_labels_start_at_zero(tel):
    text = generate_latest(tel.registry).decode()
    for name, labels in (
        ("templ_executor_fallbacks_total",
         {"from_kind": "process", "to_kind": "process", "reason": "process_start_failed", "cause": "rlimit_nproc"}),
        ("templ_executor_worker_reductions_total", {"task_type": "scoring", "reason": "pids_cgroup"}),
        ("templ_executor_pool_restarts_total", {"executor_kind": "process"}),
        ("templ_executor_batch_resubmissions_total", {"executor_kind": "dask", "reason": "worker_lost"}),
    ):
        assert tel.registry.get_sample_value(name, labels) == 0.0, (name, labels)
        assert f"# TYPE {name} counter" in text


def test_textfile_replaces_by_rename(tel, tmp_path):
    path = tmp_path / "templ.prom"
    path.write_text("old\n")
    old_inode = path.stat().st_ino
    write_textfile(path, tel.registry)
    assert path.stat().st_ino != old_inode  # a new file renamed over the old one, not rewritten in place
    assert "templ_build_info" in path.read_text()


def test_textfile_failure_keeps_old_file_and_no_temp(tmp_path):
    class Broken:
        def collect(self):
            raise RuntimeError("collector exploded")

    registry = CollectorRegistry()
    registry.register(Broken())
    path = tmp_path / "templ.prom"
    path.write_text("previous run\n")
    with pytest.raises(RuntimeError, match="exploded"):
        write_textfile(path, registry)
    assert path.read_text() == "previous run\n"
    assert os.listdir(tmp_path) == ["templ.prom"]


@pytest.mark.parametrize("name", ["templ.txt", "templ.prom.tmp", "templ"])
def test_textfile_rejects_other_suffixes(tmp_path, name):
    path = tmp_path / name
    with pytest.raises(ValueError, match=name):
        write_textfile(path, CollectorRegistry())
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------
# Pushgateway (real binary)
# ---------------------------------------------------------------------------
def _gateway_samples(url: str, **group: str) -> dict[tuple[str, frozenset], float]:
    """Samples of one group on the gateway, without the grouping labels."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    group_items = set(group.items())
    return {
        _key(s.name, s.labels, drop=tuple(group)): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if group_items <= set(s.labels.items())
    }


def test_push_to_real_pushgateway(tel, pushgateway):
    _run_events()
    push_metrics(pushgateway, registry=tel.registry)
    job_id = telemetry.export.job_id()
    pushed = _gateway_samples(pushgateway, job="templ", instance=socket.gethostname(), job_id=job_id)
    local = _samples(generate_latest(tel.registry).decode())

    live = {"templ_threads_active", "templ_thread_limit", "templ_thread_headroom", "templ_pids_cgroup_peak_tasks",
            "templ_executor_workers_requested", "templ_executor_workers_granted", "templ_campaign_queries_in_flight"}
    templ = {k: v for k, v in local.items() if k[0].startswith("templ_") and k[0] not in live}
    assert templ, "no templ_* samples in the registry"
    for key, value in templ.items():
        assert key in pushed, key
        assert _same(pushed[key], value), (key, pushed[key], value)
    # live gauges stay out of a group that outlives the process (a stale headroom would keep alerting)
    assert not [k for k in pushed if k[0] in live or k[0] == "process_threads"]
    assert pushed[("templ_conformers_scored_total", frozenset())] == 32
    fallback = frozenset({"from_kind": "process", "to_kind": "thread", "reason": "process_start_failed",
                          "cause": "rlimit_nproc"}.items())
    assert pushed[("templ_executor_fallbacks_total", fallback)] == 1
    assert not [k for k in pushed if k[0].startswith(("process_", "python_"))]
    assert ("push_time_seconds", frozenset()) in pushed


def test_push_replaces_the_group(tel, pushgateway):
    _run_events()
    push_metrics(pushgateway, registry=tel.registry, grouping_key={"instance": "node1"})
    fresh = telemetry.testing.reset_metrics()  # next run: no fallbacks yet
    push_metrics(pushgateway, registry=fresh.registry, grouping_key={"instance": "node1"})
    pushed = _gateway_samples(pushgateway, job="templ", instance="node1")
    assert pushed[("templ_conformers_scored_total", frozenset())] == 0
    fallbacks = [v for k, v in pushed.items() if k[0] == "templ_executor_fallbacks_total"]
    assert fallbacks and set(fallbacks) == {0.0}  # the earlier run's fallback is gone, the series are at 0


def test_push_http_error_is_push_error(tel, pushgateway):
    with pytest.raises(PushError, match="HTTP 400") as info:
        push_metrics(pushgateway, registry=tel.registry, grouping_key={"bad-label": "x"})
    assert info.value.url == pushgateway and "bad-label" in info.value.reason


def test_push_unreachable_fails_fast(tel):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    t0 = time.monotonic()
    with pytest.raises(PushError) as info:
        push_metrics(url, registry=tel.registry, timeout=5)
    assert time.monotonic() - t0 < 2
    assert info.value.url == url and "refused" in info.value.reason.lower()


def test_push_silent_gateway_times_out(tel):
    with silent_listener() as silent:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        t0 = time.monotonic()
        with pytest.raises(PushError, match="0.5 s"):
            push_metrics(url, registry=tel.registry, timeout=0.5)
        assert time.monotonic() - t0 < 3
