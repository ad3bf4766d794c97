"""The CPU budget: quota parsers, locating the cpu cgroup in sample trees, and the real kernel
(a pinned process, and a process in a child cpu cgroup with a quota)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from uuid import uuid4

import pytest
from cgroup_fixtures import _destroy as destroy_cgroup
from proc_samples import write

from templ_pipeline.core.limits import procfs
from templ_pipeline.core.limits.cpu import (
    AFFINITY,
    CPU_QUOTA,
    CpuBudget,
    CpuHierarchy,
    CpuQuota,
    QuotaReading,
    cpu_budget,
    cpu_hierarchy,
    parse_cfs_quota,
    parse_cpu_max,
    read_cpu_budget,
)

pytestmark = pytest.mark.fast

REPO = Path(__file__).resolve().parents[1]
AFFINITY_NOW = len(os.sched_getaffinity(0))
PRINT_BUDGET = ("import dataclasses, json\n"
                "from templ_pipeline.core.limits.cpu import read_cpu_budget\n"
                "print(json.dumps(dataclasses.asdict(read_cpu_budget())))")

V1_CGROUP = """\
9:name=systemd:/
5:cpuset:/
4:cpu,cpuacct:/jobs/job42
3:cpuacct:/other
0::/
"""
V1_MOUNTINFO = """\
24 1 0:22 / /proc rw,nosuid - proc proc rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:7 - cgroup cgroup rw,cpu,cpuacct
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
V2_CGROUP = "0::/user.slice/job.scope\n"
V2_MOUNTINFO = "30 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"
V1_CPU = "sys/fs/cgroup/cpu,cpuacct"


# -- parsers ---------------------------------------------------------------------------------

def test_parse_cpu_max():
    assert parse_cpu_max("max 100000\n") is None
    quota = parse_cpu_max(b"150000 100000\n")
    assert quota == CpuQuota(150000, 100000) and quota.cpus == 1.5 and quota.whole_cpus == 2
    assert parse_cpu_max("50000 100000").cpus == 0.5
    assert parse_cpu_max("200000 100000").whole_cpus == 2
    for garbage in (None, "", "max", "150000", "abc 100000", "150000 0", "0 100000", "-5 100000",
                    "150000 100000 7", "1.5 1"):
        assert parse_cpu_max(garbage) is None, garbage


def test_parse_cfs_quota():
    assert parse_cfs_quota("-1\n", "100000\n") is None
    quota = parse_cfs_quota(b"50000\n", b"100000\n")
    assert quota == CpuQuota(50000, 100000) and quota.cpus == 0.5 and quota.whole_cpus == 1
    assert parse_cfs_quota("250000", "100000").cpus == 2.5
    for quota_text, period_text in ((None, "100000"), ("50000", None), ("x", "100000"), ("50000", "0"),
                                    ("", ""), ("50000", "-1"), ("max", "100000")):
        assert parse_cfs_quota(quota_text, period_text) is None, (quota_text, period_text)


# -- the decision ----------------------------------------------------------------------------

def reading(quota: int, period: int = 100000, source: str = "/cg/job") -> QuotaReading:
    return QuotaReading(CpuQuota(quota, period), source, f"cpu.max {quota} {period}")


@pytest.mark.parametrize("affinity, quota, cpus, source", [
    (4, 150000, 2, CPU_QUOTA),  # 1.5 CPUs: 2 workers use it in full
    (2, 150000, 2, AFFINITY),  # the quota rounds up to the mask: the mask binds
    (2, 50000, 1, CPU_QUOTA),
    (2, 800000, 2, AFFINITY),
    (8, 1000, 1, CPU_QUOTA),  # 0.01 CPUs still gets one worker
    (1, 50000, 1, AFFINITY),
])
def test_budget_is_the_smaller_of_mask_and_rounded_up_quota(affinity, quota, cpus, source):
    budget = cpu_budget(affinity, reading(quota))
    assert (budget.cpus, budget.affinity, budget.source) == (cpus, affinity, source)
    assert budget.quota == quota / 100000


def test_budget_detail():
    assert cpu_budget(4, reading(150000)).detail == (
        "4 CPUs in the affinity mask; cgroup /cg/job allows 1.50 CPUs (cpu.max 150000 100000) -> 2 workers")
    assert cpu_budget(2, QuotaReading(None, "", "")) == CpuBudget(
        2, 2, None, AFFINITY, "2 CPUs in the affinity mask; no cgroup CPU quota -> 2 workers")
    unknown = cpu_budget(1, None)
    assert unknown.cpus == 1 and unknown.quota is None and unknown.source == AFFINITY
    assert unknown.detail == "1 CPU in the affinity mask; cgroup CPU quota unknown (no cpu cgroup found) -> 1 worker"
    assert "unknown (1 level(s) unreadable)" in cpu_budget(2, QuotaReading(None, "", "", 1)).detail


# -- locating the cpu cgroup -----------------------------------------------------------------

def test_v1_hierarchy_has_cpu_among_its_controllers():
    hierarchy = cpu_hierarchy(V1_CGROUP, V1_MOUNTINFO, "/x")
    # not the cpuacct or cpuset mounts, and not the unified hierarchy of this hybrid layout
    assert hierarchy == CpuHierarchy(1, ("/x/sys/fs/cgroup/cpu,cpuacct/jobs/job42",
                                         "/x/sys/fs/cgroup/cpu,cpuacct/jobs", "/x/sys/fs/cgroup/cpu,cpuacct"))


def test_v2_hierarchy_is_the_unified_one():
    assert cpu_hierarchy(V2_CGROUP, V2_MOUNTINFO) == CpuHierarchy(
        2, ("/sys/fs/cgroup/user.slice/job.scope", "/sys/fs/cgroup/user.slice", "/sys/fs/cgroup"))


def test_container_mount_root_and_nothing_mounted():
    mount = "1 0 0:1 /docker/abc /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n"
    assert cpu_hierarchy("2:cpu:/docker/abc\n", mount) == CpuHierarchy(1, ("/sys/fs/cgroup/cpu",))
    assert cpu_hierarchy("2:cpu:/docker/other\n", mount) is None  # not below the mount's root
    assert cpu_hierarchy(None, None) is None
    assert cpu_hierarchy(V1_CGROUP, "24 1 0:22 / /proc rw - proc proc rw\n") is None


def v1_tree(tmp_path: Path, **quotas: tuple[str, str]) -> Path:
    """A v1 tree; ``quotas`` maps ``root``, ``jobs`` or ``job42`` to (cfs_quota_us, cfs_period_us)."""
    files = {"proc/self/cgroup": V1_CGROUP, "proc/self/mountinfo": V1_MOUNTINFO}
    levels = {"root": V1_CPU, "jobs": f"{V1_CPU}/jobs", "job42": f"{V1_CPU}/jobs/job42"}
    for level, (quota, period) in quotas.items():
        files[f"{levels[level]}/cpu.cfs_quota_us"] = quota
        files[f"{levels[level]}/cpu.cfs_period_us"] = period
    write(tmp_path, files)
    return tmp_path


def test_an_ancestor_quota_binds_an_unlimited_leaf(tmp_path):
    root = v1_tree(tmp_path, root=("-1\n", "100000\n"), jobs=("50000\n", "100000\n"), job42=("-1\n", "100000\n"))
    budget = read_cpu_budget(str(root))
    assert budget.quota == 0.5 and budget.cpus == 1
    assert budget.source == (CPU_QUOTA if AFFINITY_NOW > 1 else AFFINITY)
    assert f"cgroup {root}/{V1_CPU}/jobs allows 0.50 CPUs (cpu.cfs_quota_us 50000, cpu.cfs_period_us 100000)" \
        in budget.detail


def test_the_smallest_quota_in_cpus_wins_whatever_the_periods(tmp_path):
    root = v1_tree(tmp_path, jobs=("400000\n", "100000\n"), job42=("300000\n", "200000\n"))
    budget = read_cpu_budget(str(root) + "/")
    assert budget.quota == 1.5 and budget.cpus == min(AFFINITY_NOW, 2)
    assert f"{V1_CPU}/jobs/job42 allows 1.50 CPUs" in budget.detail


def test_v2_tree_skips_levels_without_cpu_max(tmp_path):
    write(tmp_path, {"proc/self/cgroup": V2_CGROUP, "proc/self/mountinfo": V2_MOUNTINFO,
                     "sys/fs/cgroup/user.slice/cpu.max": "max 100000\n",
                     "sys/fs/cgroup/user.slice/job.scope/cpu.max": "150000 100000\n"})
    budget = read_cpu_budget(str(tmp_path))
    assert budget.quota == 1.5 and budget.cpus == min(AFFINITY_NOW, 2)
    assert "(cpu.max 150000 100000)" in budget.detail


def test_unreadable_parts_are_unknown_not_errors(tmp_path):
    write(tmp_path, {"proc/self/cgroup": V2_CGROUP, "proc/self/mountinfo": V2_MOUNTINFO,
                     "sys/fs/cgroup/user.slice/job.scope/cpu.max": "garbage\n"})
    budget = read_cpu_budget(str(tmp_path))
    assert (budget.cpus, budget.quota, budget.source) == (AFFINITY_NOW, None, AFFINITY)
    assert "cgroup CPU quota unknown (1 level(s) unreadable)" in budget.detail
    nothing = read_cpu_budget(str(tmp_path / "missing"))
    assert nothing.cpus == AFFINITY_NOW and "no cpu cgroup found" in nothing.detail


def test_this_machine():
    budget = read_cpu_budget()
    assert budget.affinity == AFFINITY_NOW and 1 <= budget.cpus <= AFFINITY_NOW
    assert budget.source in (AFFINITY, CPU_QUOTA) and budget.detail.endswith("worker" + "s" * (budget.cpus > 1))


# -- the real kernel -------------------------------------------------------------------------

def budget_of(argv: list[str]) -> dict:
    proc = subprocess.run(argv, cwd=REPO, text=True, capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_a_process_pinned_to_one_cpu_gets_one():
    if AFFINITY_NOW < 2:
        pytest.skip("the affinity mask already has one CPU: pinning cannot narrow it")
    cpu = min(os.sched_getaffinity(0))
    code = f"import os; os.sched_setaffinity(0, {{{cpu}}})\n{PRINT_BUDGET}"
    budget = budget_of([sys.executable, "-c", code])
    assert (budget["cpus"], budget["affinity"], budget["source"]) == (1, 1, AFFINITY)


@dataclass
class CpuCgroup:
    """A child cpu cgroup (v1 or v2); ``wrap`` makes a command start inside it."""

    path: Path
    version: int
    children: list[Path] = field(default_factory=list)

    def set_quota(self, quota_us: int, period_us: int, path: Path | None = None) -> None:
        path = path or self.path
        if self.version == 2:
            (path / "cpu.max").write_text(f"{quota_us} {period_us}\n")
        else:
            (path / "cpu.cfs_period_us").write_text(f"{period_us}\n")
            (path / "cpu.cfs_quota_us").write_text(f"{quota_us}\n")

    def child(self, name: str) -> Path:
        """A nested cgroup, removed before this one."""
        if self.version == 2:
            (self.path / "cgroup.subtree_control").write_text("+cpu\n")
        path = self.path / name
        path.mkdir()
        self.children.append(path)
        return path

    def wrap(self, argv: list[str], path: Path | None = None) -> list[str]:
        """``argv`` run by a shell that first moves itself into the cgroup, then execs."""
        procs = (path or self.path) / "cgroup.procs"
        return ["sh", "-c", 'echo $$ > "$0" && exec "$@"', str(procs), *argv]


def _writable_cpu_hierarchy() -> tuple[Path, int]:
    """The mount point and version of this process's cpu hierarchy; skips saying why there is none."""
    if os.geteuid() != 0:
        pytest.skip("creating a cpu cgroup needs root")
    hierarchy = cpu_hierarchy(procfs.read_text("/proc/self/cgroup"), procfs.read_text("/proc/self/mountinfo"))
    if hierarchy is None:
        pytest.skip("no cpu cgroup hierarchy is mounted (cgroup v1 cpu, or v2 unified)")
    mount = Path(hierarchy.dirs[-1])
    if hierarchy.version == 2:
        controllers = (procfs.read_text(f"{mount}/cgroup.controllers") or "").split()
        if "cpu" not in controllers:
            pytest.skip(f"the cpu controller is not available in {mount} (cgroup.controllers: {controllers})")
        try:
            (mount / "cgroup.subtree_control").write_text("+cpu\n")
        except OSError as exc:
            pytest.skip(f"cannot enable the cpu controller in {mount}: {exc.strerror}")
    if not os.access(mount, os.W_OK):
        pytest.skip(f"the cpu hierarchy at {mount} is read-only")
    return mount, hierarchy.version


@pytest.fixture
def child_cpu_cgroup() -> Iterator[CpuCgroup]:
    """A fresh child cpu cgroup without a quota; nested ones and itself removed even on failure."""
    mount, version = _writable_cpu_hierarchy()
    path = mount / f"templ-test-cpu-{os.getpid()}-{uuid4().hex[:8]}"
    path.mkdir()
    cgroup = CpuCgroup(path, version)
    try:
        yield cgroup
    finally:
        try:
            for child in reversed(cgroup.children):
                destroy_cgroup(child)
        finally:
            destroy_cgroup(path)


def test_a_process_under_a_half_cpu_quota_gets_one(child_cpu_cgroup: CpuCgroup):
    child_cpu_cgroup.set_quota(50000, 100000)
    budget = budget_of(child_cpu_cgroup.wrap([sys.executable, "-c", PRINT_BUDGET]))
    assert budget["quota"] == 0.5 and budget["cpus"] == 1
    assert budget["source"] == (CPU_QUOTA if AFFINITY_NOW > 1 else AFFINITY)
    assert f"cgroup {child_cpu_cgroup.path} allows 0.50 CPUs" in budget["detail"]


def test_a_parent_quota_binds_an_unlimited_child(child_cpu_cgroup: CpuCgroup):
    child_cpu_cgroup.set_quota(50000, 100000)
    leaf = child_cpu_cgroup.child("leaf")
    budget = budget_of(child_cpu_cgroup.wrap([sys.executable, "-c", PRINT_BUDGET], leaf))
    assert budget["quota"] == 0.5 and budget["cpus"] == 1
    assert f"cgroup {child_cpu_cgroup.path} allows 0.50 CPUs" in budget["detail"]
