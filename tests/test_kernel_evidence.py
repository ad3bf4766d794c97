"""The pids controller's own evidence: refused forks (pids.events) and pids.peak, as metrics and in the doctor."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from cgroup_fixtures import PidsCgroup, child_pids_cgroup  # noqa: F401  (fixture)
from proc_samples import collector, make_tree
from prometheus_client import CollectorRegistry, generate_latest
from rich.console import Console
from templ_runs import templ_env

from templ_pipeline import doctor
from templ_pipeline.core.limits import cgroup
from templ_pipeline.core.thread_manager import ThreadResourceManager
from templ_pipeline.telemetry.metrics import TemplMetrics

pytestmark = pytest.mark.fast

REFUSED = "templ_pids_cgroup_refused_forks_total"
PEAK = "templ_pids_cgroup_peak_tasks"
LEAF = "sys/fs/cgroup/pids/jobs/job42"
PARENT = "sys/fs/cgroup/pids/jobs"


def _tree(tmp_path: Path, **files: str | None) -> Path:
    """The v1 sample tree with a pids level at jobs/job42 (and at jobs when given files there)."""
    return make_tree(tmp_path, **{f"{LEAF}/pids.max": "40\n", f"{LEAF}/pids.current": "5\n", **files})


def _manager(root: Path) -> ThreadResourceManager:
    return ThreadResourceManager(cache_ttl=0, collector=collector(root))  # every scrape reads the files again


def _metrics(manager: ThreadResourceManager) -> TemplMetrics:
    return TemplMetrics(CollectorRegistry(), process_collectors=False, snapshot=manager.snapshot)


@pytest.mark.parametrize("text, peak", [("41\n", 41), ("0\n", 0), ("", None), ("max\n", None), (None, None)])
def test_parse_pids_peak(text, peak):
    assert cgroup.parse_pids_peak(text) == peak
    assert cgroup.parse_pids_peak(None if text is None else text.encode()) == peak


def test_peak_is_read_next_to_a_pids_max_and_nowhere_else(tmp_path):
    (tmp_path / "pids.peak").write_text("12\n")
    assert cgroup.read_pids_peak(str(tmp_path / "pids.max")) == 12
    assert cgroup.peak_path(str(tmp_path / "pids.max")) == str(tmp_path / "pids.peak")
    assert cgroup.peak_path("/proc/self/cgroup") is None
    assert cgroup.read_pids_peak("/proc/self/cgroup") is None  # a pids Limit's source when there is no level
    assert cgroup.read_pids_peak(str(tmp_path / "missing" / "pids.max")) is None


def test_metrics_read_the_kernel_at_scrape_time(tmp_path):
    root = _tree(tmp_path, **{f"{LEAF}/pids.events": "max 3\n", f"{LEAF}/pids.peak": "40\n"})
    registry = _metrics(_manager(root)).registry
    assert registry.get_sample_value(REFUSED) == 3
    assert registry.get_sample_value(PEAK) == 40
    (root / LEAF / "pids.events").write_text("max 5\n")  # no event, no update call: the next scrape sees it
    assert registry.get_sample_value(REFUSED) == 5


def test_peak_is_the_binding_levels_and_refusals_are_summed(tmp_path):
    # jobs/ binds (10 tasks, 1 left); its leaf is unlimited and counted a refused 11th task in its own peak
    root = _tree(tmp_path, **{f"{LEAF}/pids.max": "max\n", f"{LEAF}/pids.current": "9\n",
                              f"{LEAF}/pids.events": "max 2\n", f"{LEAF}/pids.peak": "11\n",
                              f"{PARENT}/pids.max": "10\n", f"{PARENT}/pids.current": "9\n",
                              f"{PARENT}/pids.events": "max 1\n", f"{PARENT}/pids.peak": "10\n"})
    manager = _manager(root)
    registry = _metrics(manager).registry
    assert registry.get_sample_value("templ_pids_cgroup_refused_forks_total") == 3
    assert registry.get_sample_value(PEAK) == 10
    assert manager.snapshot().limit("pids_cgroup").limit == 10  # the level templ_thread_limit reports


def test_no_sample_without_the_files_but_the_families_are_declared(tmp_path):
    registry = _metrics(_manager(_tree(tmp_path))).registry  # no pids.events, no pids.peak (older kernels)
    text = generate_latest(registry).decode()
    assert f"# TYPE {REFUSED} counter" in text and f"# TYPE {PEAK} gauge" in text
    assert registry.get_sample_value(REFUSED) is None and registry.get_sample_value(PEAK) is None


def test_no_pids_level_means_no_sample(tmp_path):
    registry = _metrics(_manager(make_tree(tmp_path))).registry  # pids:/jobs/job42 has no pids.max at all
    assert registry.get_sample_value(REFUSED) is None and registry.get_sample_value(PEAK) is None


def test_promtool_finds_no_problems_with_the_evidence_exposed(tmp_path):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (make test installs Debian's prometheus package)")
    root = _tree(tmp_path, **{f"{LEAF}/pids.events": "max 3\n", f"{LEAF}/pids.peak": "40\n"})
    registry = CollectorRegistry()
    TemplMetrics(registry, snapshot=_manager(root).snapshot)  # with the process collectors, as served
    exposition = generate_latest(registry)
    assert f"{REFUSED} 3.0".encode() in exposition and f"{PEAK} 40.0".encode() in exposition
    assert b"\nprocess_threads " in exposition
    result = subprocess.run([promtool, "check", "metrics"], input=exposition, capture_output=True, timeout=30)
    assert result.returncode == 0 and not result.stdout and not result.stderr, result.stdout + result.stderr


def test_doctor_reports_the_evidence(tmp_path):
    root = _tree(tmp_path, **{f"{LEAF}/pids.events": "max 3\n", f"{LEAF}/pids.peak": "40\n"})
    report = doctor.build_report(_manager(root))
    peak_file = str(root / LEAF / "pids.peak")
    assert report["pids_cgroup_evidence"] == {"refused_forks": 3, "peak_tasks": 40, "peak_source": peak_file}
    assert any(w.startswith("the pids cgroup has refused 3 forks") for w in report["warnings"])
    console = Console(record=True, width=250)
    doctor.render_table(report, console)
    lines = console.export_text().splitlines()
    assert any("forks refused" in line and " 3 " in line and "pids.events max" in line for line in lines)
    assert any("peak tasks" in line and " 40 " in line and peak_file in line for line in lines)


def test_doctor_without_a_pids_level(tmp_path):
    report = doctor.build_report(_manager(make_tree(tmp_path)))
    assert report["pids_cgroup_evidence"] == {"refused_forks": None, "peak_tasks": None, "peak_source": None}
    assert not any("refused" in w for w in report["warnings"])
    console = Console(record=True, width=250)
    doctor.render_table(report, console)
    assert "no pids controller limits this cgroup" in console.export_text()


REFUSE = textwrap.dedent("""
    import json
    import grant_probe
    from prometheus_client import CollectorRegistry
    from templ_pipeline import doctor
    from templ_pipeline.core.thread_manager import ThreadResourceManager
    from templ_pipeline.telemetry.metrics import TemplMetrics

    manager = ThreadResourceManager(cache_ttl=0)
    registry = CollectorRegistry()
    TemplMetrics(registry, process_collectors=False, snapshot=manager.snapshot)
    before = registry.get_sample_value("templ_pids_cgroup_refused_forks_total")
    with grant_probe.idle_threads_until_refused(500) as (started, refusal):
        pass
    # the idle threads are gone: only the kernel's counters remember the full cgroup
    report = doctor.build_report(manager)
    print(json.dumps({"refused": refusal is not None, "before": before,
                      "after": registry.get_sample_value("templ_pids_cgroup_refused_forks_total"),
                      "peak": registry.get_sample_value("templ_pids_cgroup_peak_tasks"),
                      "evidence": report["pids_cgroup_evidence"], "warnings": report["warnings"]}))
""")


def test_a_real_refusal_is_counted_and_the_peak_kept(child_pids_cgroup: PidsCgroup):
    child_pids_cgroup.set_max(20)
    env = templ_env(tests_importable=True)
    proc = subprocess.Popen(child_pids_cgroup.wrap([sys.executable, "-c", REFUSE]), env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
    assert proc.returncode == 0, err[-3000:]
    result = json.loads(out.strip().splitlines()[-1])
    assert result["refused"] and result["after"] > result["before"] >= 0, result
    assert result["evidence"]["refused_forks"] == result["after"]
    peak_file = child_pids_cgroup.path / "pids.peak"
    if not peak_file.exists():  # kernels without pids.peak: no sample, and the doctor says so
        assert result["peak"] is None and result["evidence"]["peak_tasks"] is None, result
        return
    assert result["peak"] == 20, result  # the cgroup was full, though nothing is running now
    assert result["evidence"]["peak_tasks"] == 20 and result["evidence"]["peak_source"] == str(peak_file)
    assert any("the pids cgroup has refused" in w for w in result["warnings"]), result["warnings"]
