"""``templ doctor``: the report, its JSON and table, warnings, and a run inside a pids cgroup."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cgroup_fixtures import PidsCgroup, child_pids_cgroup  # noqa: F401  (fixture)
from proc_samples import MIB, PER_THREAD, collector, make_tree, status_text
from rich.console import Console

from templ_pipeline import doctor
from templ_pipeline.core.limits.cpu import read_cpu_budget
from templ_pipeline.core.thread_manager import LIMIT_NAMES, ThreadResourceManager

pytestmark = pytest.mark.fast

REPO = Path(__file__).resolve().parents[1]
LIMIT_KEYS = {"name", "limit", "used", "headroom", "binding", "enforced", "source"}


def run_doctor(*args: str, wrap=None, code: str | None = None) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-c", code] if code else [sys.executable, "-m", "templ_pipeline.doctor"]
    argv += list(args)
    return subprocess.run(wrap(argv) if wrap else argv, cwd=REPO, text=True, capture_output=True,
                          timeout=60)


def test_report_on_this_machine():
    report = doctor.build_report(ThreadResourceManager())
    assert json.loads(json.dumps(report)) == report
    assert [lim["name"] for lim in report["limits"]] == list(LIMIT_NAMES)
    assert all(set(lim) >= LIMIT_KEYS for lim in report["limits"])
    binding = [lim["name"] for lim in report["limits"] if lim["binding"]]
    assert binding == ([report["binding_limit"]] if report["binding_limit"] else [])
    assert report["threads"] >= 1 and report["probe"] == {"ok": True, "errno": None, "error": None}
    assert set(report["recommended_workers"]) == {"scoring", "conformers"}
    if os.getuid() == 0:
        assert any("root" in w and "RLIMIT_NPROC" in w for w in report["warnings"])


def test_json_command():
    proc = run_doctor("--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    requested = os.cpu_count()
    assert report["requested_workers"] == requested
    for task, at_most in report["max_workers"].items():
        granted = report["recommended_workers"][task]
        assert granted == (requested if at_most is None else min(requested, at_most))


def test_table_command():
    proc = run_doctor(code="from templ_pipeline import doctor; doctor.run(False)")
    assert proc.returncode == 0, proc.stderr
    for name in (*LIMIT_NAMES, "scoring", "conformers", "native thread probe: ok"):
        assert name in proc.stdout


def test_works_without_psutil():
    code = ("import sys; sys.modules['psutil'] = None\n"
            "from templ_pipeline import doctor; raise SystemExit(doctor.run(True))")
    proc = run_doctor(code=code)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["status"] in ("ok", "warning", "critical")


def test_small_pids_cgroup_is_critical_and_explained(tmp_path):
    leaf = "sys/fs/cgroup/pids/jobs/job42"
    root = make_tree(tmp_path, **{f"{leaf}/pids.max": "6\n", f"{leaf}/pids.current": "4\n"})
    report = doctor.build_report(ThreadResourceManager(collector=collector(root)))
    assert report["binding_limit"] == "pids_cgroup" and report["status"] == "critical"
    assert report["recommended_workers"] == {"scoring": 0, "conformers": 0}
    text = " | ".join(report["warnings"])
    assert "pids cgroup is set to 6 tasks (4 in use)" in text and "only 2 headroom left" in text
    console = Console(record=True, width=200)
    doctor.render_table(report, console)
    assert "<- binding" in console.export_text()


def test_large_stack_under_rlimit_as_is_explained(tmp_path):
    big = 256 * MIB
    root = make_tree(tmp_path, **{"proc/self/status": status_text(uid=0, vm_kib=100_000)})
    coll = collector(root, as_=100_000 * 1024 + 3 * (big + PER_THREAD), stack=big)
    coll.default_stack = big
    report = doctor.build_report(ThreadResourceManager(collector=coll))
    stack = next(lim for lim in report["limits"] if lim["name"] == "stack_memory")
    assert stack["headroom"] == 3 and report["binding_limit"] == "stack_memory"
    assert any("stack limit 256.0 MiB under an RLIMIT_AS cap" in w for w in report["warnings"])


def test_doctor_in_a_pids_cgroup(child_pids_cgroup: PidsCgroup):
    child_pids_cgroup.set_max(12)
    proc = run_doctor("--json", wrap=child_pids_cgroup.wrap)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    pids = next(lim for lim in report["limits"] if lim["name"] == "pids_cgroup")
    assert report["binding_limit"] == "pids_cgroup" and pids["binding"] and pids["enforced"]
    assert pids["limit"] == 12 and pids["source"] == str(child_pids_cgroup.path / "pids.max")
    # the doctor is alone in the cgroup: pids.current counted its own threads at that moment
    assert pids["used"] == report["threads"] and pids["headroom"] == 12 - pids["used"]
    assert report["recommended_workers"]["conformers"] == min(os.cpu_count(), pids["headroom"] - 2)
    assert child_pids_cgroup.current() == 0


def test_cpu_budget_in_json_and_table():
    # pinned to one CPU before the doctor starts: the affinity mask is what binds
    code = (f"import os; os.sched_setaffinity(0, {{{min(os.sched_getaffinity(0))}}})\n"
            "from templ_pipeline import doctor; raise SystemExit(doctor.run(True))")
    proc = run_doctor(code=code)
    assert proc.returncode == 0, proc.stderr
    cpus = json.loads(proc.stdout)["cpus"]
    assert set(cpus) == {"cpus", "affinity", "quota", "source", "detail"}
    assert (cpus["cpus"], cpus["affinity"], cpus["source"]) == (1, 1, "affinity")
    assert cpus["detail"].startswith("1 CPU in the affinity mask; ")
    console = Console(record=True, width=200)
    doctor.render_table(doctor.build_report(ThreadResourceManager()), console)
    assert f"CPUs for CPU-bound work: {read_cpu_budget().cpus} (" in console.export_text()
