"""How many CPUs this process may use: its affinity mask and the cgroup CPU quota.

Two things cap the CPU time CPU-bound work gets here:

- the affinity mask (``os.sched_getaffinity``): the CPUs the scheduler may run this
  process on. A cpuset cgroup shows up here too: measured (Linux 6.18, cgroup v1), a
  process started in a cpuset child with ``cpuset.cpus`` 1 gets the mask ``{1}``, and
  ``os.cpu_count()`` still says 2, so the mask is read, not the CPU count;
- the CFS bandwidth quota of the cpu controller: cgroup v2 ``cpu.max``
  (``"$QUOTA $PERIOD"``, ``max`` for none) or v1 ``cpu.cfs_quota_us`` (``-1`` for none)
  over ``cpu.cfs_period_us``. The cgroup's tasks together may run ``quota`` microseconds
  in every ``period``, then they wait for the next period.

Parsers take file contents and the reader a root path, so tests feed samples without mocks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from templ_pipeline.core.limits import cgroup, procfs

AFFINITY = "affinity"
CPU_QUOTA = "cpu_quota"
"""Values of :attr:`CpuBudget.source`: which of the two limits sets the CPU count."""


@dataclass(frozen=True, slots=True)
class CpuQuota:
    """A CFS bandwidth limit: ``quota_us`` of CPU time in every ``period_us`` of wall time."""

    quota_us: int
    period_us: int

    @property
    def cpus(self) -> float:
        """The quota in CPUs (``150000`` per ``100000`` is 1.5)."""
        return self.quota_us / self.period_us

    @property
    def whole_cpus(self) -> int:
        """The quota rounded up to whole CPUs (see :func:`cpu_budget` for why up)."""
        return -(-self.quota_us // self.period_us)


def _text(data: bytes | str | None) -> str | None:
    return data.decode("ascii", "replace") if isinstance(data, bytes) else data


def _positive(text: str) -> int | None:
    value = procfs.parse_int(text)
    return value if value else None  # 0 is no quota or period the kernel accepts


def parse_cpu_max(data: bytes | str | None) -> CpuQuota | None:
    """cgroup v2 ``cpu.max``: ``"150000 100000"`` -> 1.5 CPUs; ``"max 100000"`` (no limit),
    unreadable or malformed -> None."""
    text = _text(data)
    parts = text.split() if text else []
    if len(parts) != 2:
        return None
    quota, period = _positive(parts[0]), _positive(parts[1])
    return CpuQuota(quota, period) if quota and period else None


def parse_cfs_quota(quota_data: bytes | str | None, period_data: bytes | str | None) -> CpuQuota | None:
    """cgroup v1 ``cpu.cfs_quota_us`` and ``cpu.cfs_period_us``: ``"50000"``, ``"100000"`` ->
    0.5 CPUs; a quota of ``-1`` (no limit), unreadable or malformed -> None."""
    quota_text, period_text = _text(quota_data), _text(period_data)
    if quota_text is None or period_text is None:
        return None
    quota, period = _positive(quota_text), _positive(period_text)
    return CpuQuota(quota, period) if quota and period else None


def _says_unlimited(version: int, quota_data: bytes) -> bool:
    """Whether a readable quota file says "no limit" (rather than something unparseable)."""
    fields = quota_data.split()
    if version == 2:
        return bool(fields) and fields[0] == b"max"
    return len(fields) == 1 and fields[0].startswith(b"-") and fields[0][1:].isdigit()


@dataclass(frozen=True, slots=True)
class CpuHierarchy:
    """This process's cgroup in the hierarchy that has the cpu controller."""

    version: int  # 1: a v1 hierarchy with ``cpu`` among its controllers; 2: the unified one
    dirs: tuple[str, ...]  # the cgroup's directory, then its ancestors up to the mount point


def cpu_hierarchy(proc_cgroup: str | None, mountinfo: str | None, sys_root: str = "") -> CpuHierarchy | None:
    """Locate this process's cpu cgroup from ``/proc/self/cgroup`` and ``/proc/self/mountinfo``.

    A v1 hierarchy whose controllers include ``cpu`` (often ``cpu,cpuacct``) comes
    first: a controller is bound to one hierarchy at a time, so where v1 has it the
    unified hierarchy of a hybrid layout does not. Otherwise the v2 unified hierarchy.
    ``sys_root`` is prefixed to mount points (tests point it at a tree). None when
    neither is mounted where this process can see its cgroup.
    """
    entries = cgroup.parse_proc_cgroup(proc_cgroup)
    mounts = cgroup.parse_mountinfo(mountinfo)
    for controller, version in (("cpu", 1), ("", 2)):
        dirs = cgroup.controller_dirs(controller, entries, mounts, sys_root)
        if dirs:
            return CpuHierarchy(version, tuple(dirs))
    return None


@dataclass(frozen=True, slots=True)
class QuotaReading:
    """The tightest CPU quota over a cgroup and its ancestors.

    ``quota`` None with ``source`` empty: no level sets one. ``unreadable`` counts the
    levels whose quota files exist but could not be read or parsed.
    """

    quota: CpuQuota | None
    source: str  # the directory of the level that sets ``quota``
    files: str  # that level's file contents as the detail shows them
    unreadable: int = 0


def read_quota(hierarchy: CpuHierarchy) -> QuotaReading:
    """Read the quota of every level of ``hierarchy`` and keep the smallest in CPUs.

    The smallest binds because a child cannot get more CPU time than its parent: the
    kernel charges a task's runtime to the bandwidth pool of every level from its cgroup
    up, and throttles it when any of them is empty. Measured (Linux 6.18, cgroup v1): a
    process busy for 1 s in a child with ``cpu.cfs_quota_us`` -1 under a parent with
    50000/100000 got 0.56 s of CPU, and writing 100000 to that child's quota failed
    with EINVAL (v1 refuses a child quota above its parent's; v2 accepts it in
    ``cpu.max`` and, as Documentation/scheduler/sched-bwc.rst describes, still
    throttles the child when the parent's pool runs dry). Ancestors above the mount point (a
    container's cgroup namespace) are invisible here and not counted. A level without
    the files (the root cgroup, a v2 level whose parent does not enable ``cpu``) is
    skipped; ``cpu.max.burst``/``cpu.cfs_burst_us`` are ignored (burst lends runtime
    saved in earlier periods; it does not raise the average).
    """
    best = QuotaReading(None, "", "")
    unreadable = 0
    quota_name = "cpu.max" if hierarchy.version == 2 else "cpu.cfs_quota_us"
    for directory in hierarchy.dirs:
        raw = procfs.read_bytes(f"{directory}/{quota_name}")
        if raw is None:
            # missing: no cpu controller at this level; present: unreadable
            unreadable += os.path.exists(f"{directory}/{quota_name}")
            continue
        if hierarchy.version == 2:
            quota = parse_cpu_max(raw)
            files = f"cpu.max {raw.decode('ascii', 'replace').strip()}"
        else:
            period = procfs.read_bytes(f"{directory}/cpu.cfs_period_us")
            quota = parse_cfs_quota(raw, period)
            files = (f"cpu.cfs_quota_us {raw.decode('ascii', 'replace').strip()}, cpu.cfs_period_us "
                     f"{(period or b'?').decode('ascii', 'replace').strip()}")
        if quota is None:
            if not _says_unlimited(hierarchy.version, raw):
                unreadable += 1
            continue
        if best.quota is None or quota.cpus < best.quota.cpus:
            best = QuotaReading(quota, directory, files)
    return QuotaReading(best.quota, best.source, best.files, unreadable)


@dataclass(frozen=True, slots=True)
class CpuBudget:
    """The CPUs CPU-bound work should use here, and why.

    ``cpus`` is the worker count; ``affinity`` the CPUs in the affinity mask; ``quota``
    the tightest cgroup CPU quota in CPUs (None: none, or unknown; ``detail`` says
    which); ``source`` is :data:`AFFINITY` or :data:`CPU_QUOTA`, whichever sets ``cpus``.
    """

    cpus: int
    affinity: int
    quota: float | None
    source: str
    detail: str


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def cpu_budget(affinity: int, reading: QuotaReading | None) -> CpuBudget:
    """Decide the CPU count from the affinity mask size and a quota reading (None: no cpu cgroup found).

    The quota is rounded up: a quota of 1.5 CPUs is used in full by 2 workers, each
    throttled to about 75%, while 1 worker leaves half a CPU idle. Measured (Linux 6.18,
    cgroup v1, 150000/100000): in 1 s, 1 busy worker got 0.99 s of CPU and 2 got 1.6 s.
    """
    affinity = max(1, affinity)
    mask = f"{_count(affinity, 'CPU')} in the affinity mask"
    if reading is None or reading.quota is None:
        if reading is None:
            why = "cgroup CPU quota unknown (no cpu cgroup found)"
        elif reading.unreadable:
            why = f"cgroup CPU quota unknown ({reading.unreadable} level(s) unreadable)"
        else:
            why = "no cgroup CPU quota"
        return CpuBudget(affinity, affinity, None, AFFINITY, f"{mask}; {why} -> {_count(affinity, 'worker')}")
    quota = reading.quota
    cpus = max(1, min(affinity, quota.whole_cpus))
    source = CPU_QUOTA if quota.whole_cpus < affinity else AFFINITY
    unknown = f", {reading.unreadable} level(s) unreadable" if reading.unreadable else ""
    detail = (f"{mask}; cgroup {reading.source} allows {quota.cpus:.2f} CPUs ({reading.files}{unknown}) "
              f"-> {_count(cpus, 'worker')}")
    return CpuBudget(cpus, affinity, quota.cpus, source, detail)


def _affinity() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def read_cpu_budget(root: str = "/") -> CpuBudget:
    """The CPU budget of this process now; ``root`` lets tests point at a tree with
    ``proc/self/cgroup``, ``proc/self/mountinfo`` and the cgroup files.

    Reads ``/proc/self/cgroup``, ``/proc/self/mountinfo`` and one (v2) or two (v1) files
    per level of the cpu cgroup, and asks for the affinity mask; never raises (anything
    unreadable is reported as unknown in ``detail``). The cgroup is located on every call,
    since a process can be moved to another cgroup while it runs.
    """
    base = root.rstrip("/")
    hierarchy = cpu_hierarchy(procfs.read_text(f"{base}/proc/self/cgroup"),
                              procfs.read_text(f"{base}/proc/self/mountinfo"), base)
    return cpu_budget(_affinity(), read_quota(hierarchy) if hierarchy else None)
