"""Sample /proc and cgroup trees under a tmp directory, for tests without mocks."""

from __future__ import annotations

import resource
from pathlib import Path

from templ_pipeline.core.limits.collect import Collector

INF = resource.RLIM_INFINITY
MIB = 1 << 20
STACK = 8 * MIB
PER_THREAD = STACK + resource.getpagesize()

V1_CGROUP = """\
9:name=systemd:/
8:pids:/jobs/job42
4:memory:/jobs/job42
2:cpu,cpuacct:/
0::/
"""
V1_MOUNTINFO = """\
24 1 0:22 / /proc rw,nosuid - proc proc rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime shared:7 - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime shared:11 - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
V2_CGROUP = "0::/user.slice/job.scope\n"
V2_MOUNTINFO = "30 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"
STATUS = """\
Name:\tpython
Umask:\t0022
State:\tS (sleeping)
Uid:\t{uid}\t{uid}\t{uid}\t{uid}
VmSize:\t  {vm_kib} kB
Threads:\t{threads}
CapEff:\t{cap:016x}
"""


def status_text(uid: int = 1000, threads: int = 3, vm_kib: int = 100_000, cap: int = 0) -> str:
    return STATUS.format(uid=uid, threads=threads, vm_kib=vm_kib, cap=cap)


def write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def make_tree(tmp_path: Path, **overrides: str | None) -> Path:
    """A /proc + /sys tree (v1 layout by default); an override of None leaves that file out."""
    files = {
        "proc/self/cgroup": V1_CGROUP,
        "proc/self/mountinfo": V1_MOUNTINFO,
        "proc/self/status": status_text(),
        "proc/self/uid_map": "         0          0 4294967295\n",
        "proc/loadavg": "0.11 0.09 0.03 1/84 2887\n",
        "proc/meminfo": "MemTotal:  2048000 kB\nMemAvailable:  1024000 kB\n",
        "proc/sys/kernel/threads-max": "192730\n",
        "proc/sys/kernel/pid_max": "32768\n",
        "proc/sys/vm/overcommit_memory": "0\n",
    }
    files.update({k.replace("__", "/"): v for k, v in overrides.items()})
    write(tmp_path, {k: v for k, v in files.items() if v is not None})
    return tmp_path


def rlimits(nproc: int = INF, as_: int = INF, stack: int = STACK):
    table = {resource.RLIMIT_NPROC: nproc, resource.RLIMIT_AS: as_, resource.RLIMIT_STACK: stack}
    return lambda which: (table[which], INF)


def collector(root: Path, **limits) -> Collector:
    return Collector(str(root / "proc"), str(root), rlimits(**limits), default_stack=STACK,
                     new_arenas=0)
