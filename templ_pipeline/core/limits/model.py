"""Data types shared by the limit readers, the thread manager and ``templ doctor``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict

PIDS_CGROUP = "pids_cgroup"
RLIMIT_NPROC = "rlimit_nproc"
THREADS_MAX = "threads_max"
PID_MAX = "pid_max"
STACK_MEMORY = "stack_memory"
RESERVED_BY_OTHERS = "reserved_by_others"
"""Reduction reason: other processes of this project sharing the limit reserved the headroom."""

LIMIT_NAMES: tuple[str, ...] = (PIDS_CGROUP, RLIMIT_NPROC, THREADS_MAX, PID_MAX, STACK_MEMORY)
"""Stable identifiers of the limits (also the Prometheus ``limit`` label values)."""

TASK_LIMITS: frozenset[str] = frozenset({PIDS_CGROUP, RLIMIT_NPROC, THREADS_MAX, PID_MAX})
"""Limits counted in kernel tasks: every thread and every process costs one."""


class LimitJSON(TypedDict):
    """One entry of ``limits`` in ``templ doctor --json``."""

    name: str
    limit: int | None
    used: int | None
    headroom: int | None
    binding: bool
    enforced: bool | None
    source: str
    note: str


@dataclass(frozen=True, slots=True)
class Limit:
    """One limit that can refuse a new thread, in tasks (or, for ``stack_memory``, thread stacks).

    Unknown (file missing or unreadable): ``limit``, ``used``, ``headroom`` and
    ``enforced`` are None. Unlimited or not enforced: ``enforced`` is False and
    ``headroom`` None. Only a limit with ``enforced`` True and a headroom can bind.
    """

    name: str
    limit: int | None
    used: int | None
    headroom: int | None
    enforced: bool | None
    source: str
    note: str = ""

    @property
    def enforced_headroom(self) -> int | None:
        """The headroom when this limit is known, enforced and finite, else None."""
        return self.headroom if self.enforced is True else None

    @property
    def constrains(self) -> bool:
        """Whether this limit is known, enforced and finite."""
        return self.enforced_headroom is not None

    def as_dict(self, binding: bool) -> LimitJSON:
        """The JSON form used by ``templ doctor --json``."""
        return {
            "name": self.name,
            "limit": self.limit,
            "used": self.used,
            "headroom": self.headroom,
            "binding": binding,
            "enforced": self.enforced,
            "source": self.source,
            "note": self.note,
        }


@dataclass(frozen=True, slots=True)
class StackInfo:
    """Per-thread stack cost and how many more stacks fit (None: unknown or unlimited)."""

    stack_bytes: int  # what the next thread gets: threading.stack_size() or the libc default
    rlimit_stack: int  # soft RLIMIT_STACK (resource.RLIM_INFINITY when unlimited)
    rlimit_as: int  # soft RLIMIT_AS
    as_fit: int | None  # stacks that fit in RLIMIT_AS - VmSize (per process)
    memory_fit: int | None  # stacks that fit in available memory (shared by all processes)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Every limit at one moment (``taken_at`` is ``time.monotonic()``)."""

    taken_at: float
    threads: int | None  # OS threads of this process (/proc/self/status), native ones included
    uid: int | None
    limits: tuple[Limit, ...]  # in LIMIT_NAMES order
    stack: StackInfo
    pids_refusals: int | None = None  # forks refused by the pids controller so far (pids.events)
    #: the same per level: (pids.events path, count), for a count that follows the process across cgroups
    pids_refusals_by_level: tuple[tuple[str, int], ...] = ()

    def limit(self, name: str) -> Limit:
        """The limit called ``name`` (one of LIMIT_NAMES)."""
        return self.limits[LIMIT_NAMES.index(name)]

    @property
    def binding(self) -> Limit | None:
        """The enforced, known limit with the least headroom (ties: first in LIMIT_NAMES)."""
        best: Limit | None = None
        best_headroom = 0
        for lim in self.limits:
            headroom = lim.enforced_headroom
            if headroom is not None and (best is None or headroom < best_headroom):
                best, best_headroom = lim, headroom
        return best


@dataclass(frozen=True, slots=True)
class WorkerGrant:
    """How many workers may start. ``reason`` names the binding limit when ``granted < requested``
    (or ``reserved_by_others`` when other processes' reservations cut it); ``headroom`` is the
    headroom of the limit that allows the fewest workers (None if none); ``claim`` is the ledger
    reservation of the granted tasks, to release once the workers have started."""

    requested: int
    granted: int
    reason: str | None
    headroom: int | None
    detail: str
    claim: Claim | None = None


@dataclass(frozen=True, slots=True)
class Claim:
    """A reservation in the shared ledger: the book it is in and its entry."""

    key: str
    entry: str


@dataclass(frozen=True, slots=True)
class Classification:
    """Why a thread or process failed to start: ``cause`` is one of LIMIT_NAMES, ``"seccomp"``
    or ``"unknown"``."""

    cause: str
    errno: int | None
    detail: str
