"""Read every limit into a :class:`Snapshot`.

A snapshot reads a handful of small files (``/proc/self/status``, ``/proc/loadavg``,
``/proc/meminfo``, the two sysctls and ``pids.max``/``pids.current``/``pids.events``
of each pids cgroup level) plus three ``getrlimit`` calls. Where a process sits in the cgroup
trees, its user namespace and the overcommit policy are resolved once, at
construction. The ``RLIMIT_NPROC`` user-task count lists /proc, so it is only done
when that limit is finite and enforced (otherwise the count cannot matter).
"""

from __future__ import annotations

import os
import resource
import threading
import time
from collections.abc import Callable

from templ_pipeline.core.limits import cgroup, procfs
from templ_pipeline.core.limits.model import (
    PID_MAX,
    PIDS_CGROUP,
    RLIMIT_NPROC,
    STACK_MEMORY,
    THREADS_MAX,
    Limit,
    Snapshot,
    StackInfo,
)
from templ_pipeline.core.limits.stack import (
    ARENA_HEAP_RESERVE,
    address_space_fit,
    default_thread_stack,
    new_malloc_arenas,
)

CAP_SYS_ADMIN = 21
CAP_SYS_RESOURCE = 24
_NPROC_EXEMPT_CAPS = (1 << CAP_SYS_ADMIN) | (1 << CAP_SYS_RESOURCE)
_INIT_USERNS_MAP = [(0, 0, 4294967295)]
_OVERCOMMIT_NEVER = 2
_PAGE = resource.getpagesize()  # the guard page glibc adds to every thread stack

THREAD_TOUCH_BYTES = 64 << 10
"""Memory a new thread is charged for in a memory cgroup. Measured here: 200 idle Python
threads added 16 KiB of RssAnon each, and the kernel charges each task's 16 KiB kernel
stack to the cgroup too; the rest is room for the first pages a working thread touches."""

GetRlimit = Callable[[int], tuple[int, int]]


def fmt_bytes(n: float) -> str:
    """``8388608`` -> ``"8.0 MiB"``."""
    if n < 1024:
        return f"{n:.0f} B"
    for unit in ("KiB", "MiB", "GiB"):
        n /= 1024
        if n < 1024:
            return f"{n:.1f} {unit}"
    return f"{n / 1024:.1f} TiB"


class Collector:
    """Reads the limits of this process; ``proc_root``/``sys_root`` let tests point at a tree.

    ``default_stack`` and ``new_arenas`` default to what libc and the environment say
    (see :mod:`~templ_pipeline.core.limits.stack`).
    """

    def __init__(
        self,
        proc_root: str = "/proc",
        sys_root: str = "",
        getrlimit: GetRlimit = resource.getrlimit,
        default_stack: int | None = None,
        new_arenas: int | None = None,
    ) -> None:
        self._proc_root = proc_root
        self._getrlimit = getrlimit
        self.status_path = f"{proc_root}/self/status"
        self._loadavg_path = f"{proc_root}/loadavg"
        self._meminfo_path = f"{proc_root}/meminfo"
        self._sysctl_paths = {
            THREADS_MAX: f"{proc_root}/sys/kernel/threads-max",
            PID_MAX: f"{proc_root}/sys/kernel/pid_max",
        }
        entries = cgroup.parse_proc_cgroup(procfs.read_text(f"{proc_root}/self/cgroup"))
        mounts = cgroup.parse_mountinfo(procfs.read_text(f"{proc_root}/self/mountinfo"))
        v1_pids = cgroup.controller_dirs("pids", entries, mounts, sys_root)
        unified = cgroup.controller_dirs("", entries, mounts, sys_root)
        v1_memory = cgroup.controller_dirs("memory", entries, mounts, sys_root)
        self.cgroup_visible = bool(v1_pids or unified)
        self.pids_levels = cgroup.pids_levels(v1_pids) + cgroup.pids_levels(unified)
        self.memory_levels = cgroup.memory_levels(v1_memory, v2=False) + cgroup.memory_levels(
            unified, v2=True)
        self._uid_map = procfs.parse_uid_map(procfs.read_text(f"{proc_root}/self/uid_map"))
        overcommit = procfs.parse_int(procfs.read_bytes(f"{proc_root}/sys/vm/overcommit_memory"))
        self._strict_overcommit = overcommit == _OVERCOMMIT_NEVER
        self.default_stack = default_stack or default_thread_stack()
        self.new_arenas = new_malloc_arenas() if new_arenas is None else new_arenas

    def collect(self) -> Snapshot:
        """Read every limit now."""
        taken_at = time.monotonic()
        status = procfs.parse_status(procfs.read_bytes(self.status_path))
        tasks = procfs.parse_loadavg_tasks(procfs.read_bytes(self._loadavg_path))
        uid = status.real_uid if status.real_uid is not None else os.getuid()
        stack, memory_source = self._stack(status)
        limits = (
            self._pids(),
            self._nproc(uid, status.cap_eff),
            self._sysctl(THREADS_MAX, tasks),
            self._sysctl(PID_MAX, tasks),
            self._stack_limit(stack, status.threads, memory_source),
        )
        by_level = cgroup.read_pids_refusals_by_level(self.pids_levels)
        refusals = sum(count for _path, count in by_level) if by_level else None
        return Snapshot(taken_at, status.threads, uid, limits, stack, refusals, by_level)

    def pids_refusals(self) -> int | None:
        """Forks the pids controller has refused in this cgroup so far (``pids.events``), None if unknown."""
        return cgroup.read_pids_refusals(self.pids_levels)

    def _pids(self) -> Limit:
        if not self.cgroup_visible:
            return Limit(PIDS_CGROUP, None, None, None, None, "/proc/self/cgroup",
                         "cgroup of this process not found (files unreadable or not mounted)")
        if not self.pids_levels:
            return Limit(PIDS_CGROUP, None, None, None, False, "/proc/self/cgroup",
                         "no pids controller limits this cgroup")
        reading = cgroup.read_pids(self.pids_levels)
        if reading is None:
            return Limit(PIDS_CGROUP, None, None, None, None, self.pids_levels[0].limit_path,
                         "pids.max or pids.current unreadable")
        if reading.limit is None:
            return Limit(PIDS_CGROUP, None, reading.used, None, False, reading.source,
                         "pids.max is max at every level")
        return Limit(PIDS_CGROUP, reading.limit, reading.used, reading.limit - reading.used, True,
                     reading.source)

    def _nproc_exemption(self, uid: int, cap_eff: int | None) -> str | None:
        """Why the kernel would not enforce RLIMIT_NPROC for this process (None: it would)."""
        init_ns = self._uid_map in ([], _INIT_USERNS_MAP)  # unreadable map: assume the initial one
        if (uid if init_ns else procfs.kernel_uid(uid, self._uid_map)) == 0:
            return "uid 0 (root) is exempt"
        if init_ns and cap_eff is not None and cap_eff & _NPROC_EXEMPT_CAPS:
            return "CAP_SYS_RESOURCE or CAP_SYS_ADMIN in CapEff exempts this process"
        return None

    def _nproc(self, uid: int, cap_eff: int | None) -> Limit:
        soft = self._getrlimit(resource.RLIMIT_NPROC)[0]
        if soft == resource.RLIM_INFINITY:
            return Limit(RLIMIT_NPROC, None, None, None, False, "RLIMIT_NPROC", "unlimited")
        exemption = self._nproc_exemption(uid, cap_eff)
        if exemption:
            return Limit(RLIMIT_NPROC, soft, None, None, False, "RLIMIT_NPROC",
                         f"not enforced: {exemption}")
        used = procfs.count_user_tasks(uid, self._proc_root)
        source = f"RLIMIT_NPROC vs tasks of uid {uid}"
        if used is None:
            return Limit(RLIMIT_NPROC, soft, None, None, True, source, "cannot list /proc")
        return Limit(RLIMIT_NPROC, soft, used, soft - used, True, source)

    def _sysctl(self, name: str, tasks: int | None) -> Limit:
        path = self._sysctl_paths[name]
        limit = procfs.parse_int(procfs.read_bytes(path))
        source = f"{path} vs tasks in /proc/loadavg"
        if limit is None or tasks is None:
            return Limit(name, limit, tasks, None, None if limit is None else True, source,
                         "unreadable")
        return Limit(name, limit, tasks, limit - tasks, True, source)

    def _refusing_memory(self, per_thread: int) -> tuple[int | None, str]:
        """Threads that memory which can refuse them still fits, and where that is; None: nothing can.

        Under the default heuristic overcommit (``vm.overcommit_memory`` 0) a thread's
        stack mapping is refused only if it alone exceeded RAM plus swap, and its pages
        are committed one by one as they are touched, so ``MemAvailable`` limits nothing
        here. Two things can refuse a new thread for memory: strict overcommit, which
        charges the whole private stack mapping to ``Committed_AS`` at ``mmap``, and a
        memory cgroup at its limit, which charges what the thread really touches (its
        kernel stack and the first pages of its user stack) and fails the clone with
        ENOMEM when nothing can be reclaimed.
        """
        fits: list[tuple[int, str]] = []
        if self._strict_overcommit:
            meminfo = procfs.read_bytes(self._meminfo_path)
            commit_limit = procfs.meminfo_bytes(meminfo, b"CommitLimit:")
            committed = procfs.meminfo_bytes(meminfo, b"Committed_AS:")
            if commit_limit is not None and committed is not None:
                fits.append((max(0, commit_limit - committed) // per_thread, "CommitLimit - Committed_AS"))
        if self.memory_levels:
            room = cgroup.memory_headroom(self.memory_levels)
            if room is not None:
                fits.append((room[0] // THREAD_TOUCH_BYTES, f"memory cgroup {room[1]}"))
        if not fits:
            return None, ""
        return min(fits, key=lambda fit: fit[0])

    def _stack(self, status: procfs.ProcStatus) -> tuple[StackInfo, str]:
        stack_bytes = threading.stack_size() or self.default_stack
        per_thread = stack_bytes + _PAGE
        rlimit_as = self._getrlimit(resource.RLIMIT_AS)[0]
        as_fit = None
        if rlimit_as != resource.RLIM_INFINITY and status.vm_size is not None:
            as_fit = address_space_fit(rlimit_as - status.vm_size, per_thread, self.new_arenas)
        memory_fit, memory_source = self._refusing_memory(per_thread)
        info = StackInfo(stack_bytes, self._getrlimit(resource.RLIMIT_STACK)[0], rlimit_as, as_fit, memory_fit)
        return info, memory_source

    def _stack_limit(self, stack: StackInfo, threads: int | None, memory_source: str) -> Limit:
        per = f"{fmt_bytes(stack.stack_bytes)} stack per thread"
        fits = []
        if stack.as_fit is not None:
            arenas = (f" (+{fmt_bytes(ARENA_HEAP_RESERVE)} malloc arena for up to "
                      f"{self.new_arenas} of them)" if self.new_arenas else "")
            fits.append((stack.as_fit,
                         f"RLIMIT_AS {fmt_bytes(stack.rlimit_as)} - VmSize, {per}{arenas}"))
        if stack.memory_fit is not None:
            touched = f"{fmt_bytes(THREAD_TOUCH_BYTES)} touched per thread"
            unit = per if memory_source.startswith("CommitLimit") else touched
            fits.append((stack.memory_fit, f"{memory_source}, {unit}"))
        if not fits:
            return Limit(STACK_MEMORY, None, threads, None, False, per,
                         "not enforced: no RLIMIT_AS, no strict overcommit, no memory cgroup limit; "
                         "thread stacks are committed page by page as they are touched")
        headroom, source = min(fits, key=lambda fit: fit[0])
        limit = None if threads is None else threads + headroom
        return Limit(STACK_MEMORY, limit, threads, headroom, True, source)
