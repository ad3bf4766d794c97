"""Know which kernel limit would refuse the next thread or process, and size pools by it.

``RuntimeError: can't start new thread`` means the kernel refused a task. The limits
that can do it are the pids cgroup, ``RLIMIT_NPROC``, ``kernel.threads-max``,
``kernel.pid_max`` and memory for the thread's stack (``RLIMIT_AS`` and available
memory); :class:`ThreadResourceManager` reads all of them (see
``templ_pipeline.core.limits``), caches the snapshot briefly, grants worker counts
from their headroom and classifies a failed start. One manager per process: use
:func:`get_thread_manager`; a forked child gets a fresh one.
"""

from __future__ import annotations

import errno as errnos
import logging
import os
import threading
import time
import weakref
from dataclasses import replace

from templ_pipeline.core.limits.classify import (
    classify_errno,
    describe,
    errno_of,
    exhausted_limit,
    refusal_evidence,
)
from templ_pipeline.core.limits.collect import Collector
from templ_pipeline.core.limits.grant import RESERVE_TASKS, compute_grant, max_workers
from templ_pipeline.core.limits.ledger import Ledger, LedgerUnavailable
from templ_pipeline.core.limits.model import (
    LIMIT_NAMES,
    PIDS_CGROUP,
    RESERVED_BY_OTHERS,
    RLIMIT_NPROC,
    Claim,
    Classification,
    Limit,
    Snapshot,
    WorkerGrant,
)
from templ_pipeline.core.limits.probe import probe_native_thread
from templ_pipeline.core.limits.procfs import SECCOMP_FILTER, read_bytes, seccomp_mode
from templ_pipeline.core.limits.worker_cost import WorkerCost, worker_cost

__all__ = [
    "LIMIT_NAMES",
    "Classification",
    "Limit",
    "Snapshot",
    "ThreadResourceManager",
    "WorkerGrant",
    "classify_start_failure",
    "get_safe_worker_count",
    "get_thread_manager",
    "log_thread_status",
    "pressure",
    "probe_native_thread",
    "thread_status",
]

logger = logging.getLogger("templ_pipeline.thread_manager")

DEFAULT_CACHE_TTL = 0.5
"""Seconds a snapshot is reused; a fresh one costs well under 200 µs."""

SECCOMP = "seccomp"
"""The grant reason (and fallback cause) when a seccomp profile refuses every new thread."""

TASK_EXECUTOR_KINDS = {"conformers": "thread"}
"""Task types whose workers are threads (RDKit's native embedding threads); others: processes."""

TASK_HELPER_THREADS = {"conformers": 1}
"""Threads a task type adds once besides its workers: conformer generation runs RDKit in a
thread of its own so that the main thread stays free to handle SIGTERM and SIGINT."""

TASK_POOL_THREADS = {"screening": 0}
"""Pool helper threads of task types whose pool is not a ``ProcessPoolExecutor``: a campaign's
workers talk to the parent over pipes of their own, so its pool starts no thread in the parent
(the spawn start method's resource tracker still counts)."""

WARNING_PRESSURE = 0.80
CRITICAL_PRESSURE = 0.95


_manager: ThreadResourceManager | None = None
_manager_lock = threading.Lock()
_instances: weakref.WeakSet[ThreadResourceManager] = weakref.WeakSet()  # reset after fork


class ThreadResourceManager:
    """Snapshots of every limit (cached for ``cache_ttl`` s), worker grants, failure classification.

    Thread-safe: a cached snapshot is read without locking; refreshes are serialized.
    """

    def __init__(
        self,
        cache_ttl: float = DEFAULT_CACHE_TTL,
        collector: Collector | None = None,
        reserve: int = RESERVE_TASKS,
        ledger: Ledger | None = None,
    ) -> None:
        self.pid = os.getpid()
        self.cache_ttl = cache_ttl
        self.reserve = reserve
        self._collector = collector or Collector()
        self._ledger = ledger or Ledger()
        self._ledger_warned = False
        self._threads_blocked: str | None | bool = False  # False: not probed yet
        self._lock = threading.Lock()
        self._snapshot: Snapshot | None = None
        _instances.add(self)

    def _reset_after_fork(self) -> None:
        """Drop the parent's snapshot and a lock another parent thread may have held."""
        self.pid = os.getpid()
        self._lock = threading.Lock()
        self._snapshot = None

    def snapshot(self, fresh: bool = False) -> Snapshot:
        """The limits now; reuses a snapshot younger than ``cache_ttl`` unless ``fresh``."""
        snap = self._snapshot
        if not fresh and snap is not None and time.monotonic() - snap.taken_at < self.cache_ttl:
            return snap
        with self._lock:
            snap = self._snapshot
            if fresh or snap is None or time.monotonic() - snap.taken_at >= self.cache_ttl:
                snap = self._snapshot = self._collector.collect()
        return snap

    def threads_blocked(self) -> str | None:
        """``"seccomp"`` when no new thread can start in this process whatever the headroom, else None.

        A seccomp profile that rejects ``clone3`` with EPERM (container engines before
        Docker 20.10.10 with glibc >= 2.34, which does not fall back to ``clone``) refuses
        every thread. Without a filter (``Seccomp: 0`` in /proc/self/status) there is
        nothing to ask; with one, one native probe thread tells (about 120 µs here). A
        filter stays for the life of the process and its children, so a definite answer is kept.
        Processes still start (``fork`` and ``vfork`` use ``clone``), but a process pool
        needs threads of its own in the parent, so no pool can run either.
        """
        if self._threads_blocked is False:
            mode = seccomp_mode(read_bytes(self._collector.status_path))
            if mode is not None and mode != SECCOMP_FILTER:
                self._threads_blocked = None  # no filter: nothing to probe, and no task spent on it
                return None
            err = probe_native_thread()
            if err == errnos.EPERM:
                self._threads_blocked = SECCOMP
            elif err == 0:
                self._threads_blocked = None
            else:
                return None  # a limit refused the probe: the limits say so; ask again next time
        return self._threads_blocked  # type: ignore[return-value]

    def get_safe_worker_count(
        self,
        requested: int,
        task_type: str,
        *,
        executor_kind: str | None = None,
        snapshot: Snapshot | None = None,
    ) -> WorkerGrant:
        """How many of ``requested`` workers can start now, after a reserve of headroom.

        ``executor_kind`` is "process" or "thread"; None picks it from the task type
        ("conformers" -> thread, anything else -> process). Under a seccomp profile that
        refuses threads (:meth:`threads_blocked`) none can.
        """
        kind = executor_kind or TASK_EXECUTOR_KINDS.get(task_type, "process")
        blocked = self._blocked_grant(requested, kind)
        if blocked is not None:
            return blocked
        snap = snapshot or self.snapshot()
        grant = compute_grant(snap, requested, _task_cost(task_type, kind), self.reserve)
        logger.debug("worker grant for %s (%s): %s", task_type, kind, grant.detail)
        return grant

    def claim_workers(self, requested: int, task_type: str, *, executor_kind: str | None = None) -> WorkerGrant:
        """Like :meth:`get_safe_worker_count`, shared with the project's other processes under the same limit.

        Where a pids cgroup or ``RLIMIT_NPROC`` binds, the grant is taken under the
        ledger's lock (:mod:`~templ_pipeline.core.limits.ledger`): the tasks others
        reserved and have not started yet come off the headroom, and this grant's
        tasks are reserved in turn (``grant.claim``; give it back with
        :meth:`release` once the workers run). A grant cut by others' reservations has
        reason ``reserved_by_others``. Where the ledger is unusable it grants alone.
        """
        kind = executor_kind or TASK_EXECUTOR_KINDS.get(task_type, "process")
        blocked = self._blocked_grant(requested, kind)
        if blocked is not None:
            return blocked
        cost = _task_cost(task_type, kind)
        alone = compute_grant(self.snapshot(), requested, cost, self.reserve)
        shared = _shared_limit(self.snapshot())
        if shared is None or alone.granted == 0:
            return alone
        limit, key = shared
        try:
            with self._ledger.book(key) as book:
                snap = self.snapshot(fresh=True)
                alone = compute_grant(snap, requested, cost, self.reserve)
                others = book.reserved_by_others()
                grant = compute_grant(_less_headroom(snap, limit, others), requested, cost, self.reserve)
                tasks = cost.fixed_tasks + cost.per_worker * grant.granted if grant.granted else 0
                claim = Claim(key, book.reserve(tasks)) if tasks else None
        except (LedgerUnavailable, OSError) as why:
            self._warn_ledger(why)
            return alone
        detail = grant.detail + (f"; {others} tasks reserved by other processes under {limit}" if others else "")
        reason = RESERVED_BY_OTHERS if grant.granted < alone.granted else grant.reason
        logger.debug("shared worker grant for %s (%s): %s", task_type, kind, detail)
        return replace(grant, reason=reason, detail=detail, claim=claim)

    def _blocked_grant(self, requested: int, kind: str) -> WorkerGrant | None:
        """No workers at all where threads cannot start (a pool needs them too), else None."""
        if requested <= 0 or self.threads_blocked() is None:
            return None
        needs = "a process pool needs threads of its own" if kind == "process" else "each worker is a thread"
        return WorkerGrant(requested, 0, SECCOMP, None,
                           f"seccomp: new threads are refused with EPERM (a seccomp profile rejects clone3), and "
                           f"{needs}: no {kind} worker can run; granted 0 of {requested}")

    def release(self, grant: WorkerGrant) -> None:
        """Give back the ledger reservation of ``grant`` (its workers run now, or never will)."""
        if grant.claim is not None:
            self._ledger.release(grant.claim.key, grant.claim.entry)

    def _warn_ledger(self, why: BaseException) -> None:
        if not self._ledger_warned:
            self._ledger_warned = True
            logger.warning("the shared grant ledger is unusable (%s); grants here ignore other processes' "
                           "reservations", why)

    def max_workers(
        self, task_type: str, *, executor_kind: str | None = None, snapshot: Snapshot | None = None
    ) -> int | None:
        """The most workers of this kind the limits allow, None when none constrains them."""
        kind = executor_kind or TASK_EXECUTOR_KINDS.get(task_type, "process")
        return max_workers(snapshot or self.snapshot(), _task_cost(task_type, kind), self.reserve)

    def pids_refusals(self) -> int | None:
        """Forks the pids controller has refused in this cgroup so far (read now, not cached).

        Read it before an attempt to start threads or processes and pass it to
        :meth:`classify_start_failure` afterwards.
        """
        return self._collector.pids_refusals()

    def classify_start_failure(
        self, exc: BaseException | None = None, *, refusals_before: int | None = None
    ) -> Classification:
        """Why a thread or process failed to start.

        A rise of the pids controller's refusal count since ``refusals_before`` names
        the pids cgroup (that evidence lasts; the pressure itself is often gone by
        now). Otherwise ``exc``'s errno when it has one; otherwise a fresh snapshot names
        an exhausted limit, and when every limit shows headroom a native probe thread
        gets the errno.
        """
        snap = self.snapshot(fresh=True)
        exhausted = exhausted_limit(snap)
        err = errno_of(exc)
        evidence = refusal_evidence(refusals_before, snap.pids_refusals)
        if evidence is not None and err in (None, errnos.EAGAIN):
            return evidence
        if err is None:
            if exhausted is not None:
                return Classification(exhausted.name, None, describe(exhausted))
            err = probe_native_thread()
            if err == 0:
                return Classification("unknown", 0, "every limit shows headroom and a probe thread "
                                      "started: the failure was transient")
        return classify_errno(err, exhausted)

    def health(self) -> dict[str, object]:
        """Threads of this process, the binding limit with its headroom and pressure, and a status
        ("ok" | "warning" | "critical", see :func:`thread_status`)."""
        snap = self.snapshot()
        binding = snap.binding
        return {
            "threads": snap.threads,
            "python_threads": threading.active_count(),
            "binding_limit": binding.name if binding else None,
            "limit": binding.limit if binding else None,
            "used": binding.used if binding else None,
            "headroom": binding.headroom if binding else None,
            "pressure": pressure(binding),
            "status": thread_status(snap, self.reserve),
        }


def _shared_limit(snapshot: Snapshot) -> tuple[str, str] | None:
    """(limit name, ledger key) of the task limit this process shares with others, None if none binds.

    A pids cgroup is keyed by its directory's device and inode (the same cgroup whatever
    namespace names it), ``RLIMIT_NPROC`` by the uid it counts. Of the two, the one with
    less headroom; a limit nobody shares (``threads_max``, ``pid_max``) needs no ledger.
    """
    candidates = []
    pids = snapshot.limit(PIDS_CGROUP)
    if pids.constrains:
        try:
            info = os.stat(os.path.dirname(pids.source))
            candidates.append((pids.headroom, PIDS_CGROUP, f"pids:{info.st_dev}:{info.st_ino}"))
        except OSError:
            pass
    nproc = snapshot.limit(RLIMIT_NPROC)
    if nproc.constrains and snapshot.uid is not None:
        candidates.append((nproc.headroom, RLIMIT_NPROC, f"nproc:{snapshot.uid}"))
    if not candidates:
        return None
    _, name, key = min(candidates)
    return name, key


def _less_headroom(snapshot: Snapshot, name: str, tasks: int) -> Snapshot:
    """``snapshot`` with ``tasks`` more in use under limit ``name``."""
    if tasks <= 0:
        return snapshot
    limits = tuple(
        replace(lim, used=(lim.used or 0) + tasks, headroom=max(0, (lim.headroom or 0) - tasks))
        if lim.name == name else lim for lim in snapshot.limits)
    return replace(snapshot, limits=limits)


def _task_cost(task_type: str, kind: str) -> WorkerCost:
    """The cost model of ``kind`` workers, with the pool threads and helper threads of ``task_type``."""
    cost = worker_cost(kind)
    pool_threads = TASK_POOL_THREADS.get(task_type, cost.pool_helpers) if kind == "process" else cost.pool_helpers
    return replace(cost, pool_helpers=pool_threads + TASK_HELPER_THREADS.get(task_type, 0))


def pressure(lim: Limit | None) -> float:
    """``used / limit`` of a limit, clamped to 0..1 (0 when unknown)."""
    if lim is None or lim.used is None or not lim.limit:
        return 0.0
    return min(1.0, max(0.0, lim.used / lim.limit))


def thread_status(snapshot: Snapshot, reserve: int = RESERVE_TASKS) -> str:
    """"critical" when the binding headroom is within the reserve or pressure >= 0.95,
    "warning" from pressure 0.80, else "ok"."""
    binding = snapshot.binding
    ratio = pressure(binding)
    headroom = None if binding is None else binding.enforced_headroom
    if headroom is not None and (headroom <= reserve or ratio >= CRITICAL_PRESSURE):
        return "critical"
    return "warning" if ratio >= WARNING_PRESSURE else "ok"


def get_thread_manager() -> ThreadResourceManager:
    """The manager of this process (created on first use, again in a forked child)."""
    global _manager
    manager = _manager
    if manager is None:
        with _manager_lock:
            if _manager is None:
                _manager = ThreadResourceManager()
            manager = _manager
    return manager


def reset_thread_manager() -> None:
    """Drop the process manager: the next one re-reads which cgroup this process is in.

    Call it after moving the process into another cgroup (the cgroup paths are
    resolved once per manager).
    """
    global _manager
    with _manager_lock:
        _manager = None


def _forget_manager_in_child() -> None:
    """A forked child has its own tasks and limits: it gets a fresh singleton, and managers
    the parent handed out by reference forget their snapshot."""
    global _manager, _manager_lock
    _manager = None
    _manager_lock = threading.Lock()
    for manager in list(_instances):
        manager._reset_after_fork()


os.register_at_fork(after_in_child=_forget_manager_in_child)


def get_safe_worker_count(
    requested: int, task_type: str, *, executor_kind: str | None = None
) -> WorkerGrant:
    """:meth:`ThreadResourceManager.get_safe_worker_count` of the process manager."""
    return get_thread_manager().get_safe_worker_count(
        requested, task_type, executor_kind=executor_kind)


def classify_start_failure(exc: BaseException | None = None, *, refusals_before: int | None = None) -> Classification:
    """:meth:`ThreadResourceManager.classify_start_failure` of the process manager."""
    return get_thread_manager().classify_start_failure(exc, refusals_before=refusals_before)


def log_thread_status(context: str) -> None:
    """Log the thread health at debug level on ``templ_pipeline.thread_manager``."""
    if logger.isEnabledFor(logging.DEBUG):
        health = get_thread_manager().health()
        logger.debug("%s: %s OS threads, binding limit %s with headroom %s, status %s",
                     context, health["threads"], health["binding_limit"], health["headroom"],
                     health["status"])
