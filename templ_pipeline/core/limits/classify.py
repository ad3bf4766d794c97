"""Map a failed thread or process start to the limit (or filter) that refused it."""

from __future__ import annotations

import errno as errnos
import os

from templ_pipeline.core.limits.model import PIDS_CGROUP, STACK_MEMORY, Classification, Limit, Snapshot

EXHAUSTED_HEADROOM = 1
"""A limit with this headroom or less is taken as the cause without probing: a failed start
usually frees nothing, but a thread of the failed pool may have exited meanwhile."""


# C++ libraries report a refused std::thread as std::system_error, which reaches Python
# as a RuntimeError carrying only strerror's text: measured with RDKit's
# EmbedMultipleConfs(numThreads=4) in a full pids cgroup, RuntimeError('Resource
# temporarily unavailable'). Python's own "can't start new thread" has no errno at all.
_STRERROR_ERRNOS = {os.strerror(err): err for err in (errnos.EAGAIN, errnos.EPERM, errnos.ENOMEM)}


def errno_of(exc: BaseException | None) -> int | None:
    """The errno of ``exc`` or of the OSError it was raised from; for a RuntimeError whose
    message is exactly a strerror text (a C++ ``std::system_error``), that errno."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, OSError) and exc.errno:
            return exc.errno
        if isinstance(exc, RuntimeError) and str(exc) in _STRERROR_ERRNOS:
            return _STRERROR_ERRNOS[str(exc)]
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def is_start_refusal(exc: BaseException) -> bool:
    """Whether ``exc`` says the kernel refused a new thread or process (EAGAIN, EPERM, ENOMEM)."""
    if isinstance(exc, RuntimeError) and "can't start new thread" in str(exc):
        return True
    return errno_of(exc) in _STRERROR_ERRNOS.values()


def refusal_evidence(before: int | None, after: int | None) -> Classification | None:
    """The pids controller's own count of refused forks rose between two readings: it refused."""
    if before is None or after is None or after <= before:
        return None
    return Classification(PIDS_CGROUP, errnos.EAGAIN, f"pids.events: the pids controller refused "
                          f"{after - before} fork(s) during the attempt (max count {before} -> {after})")


def exhausted_limit(snapshot: Snapshot) -> Limit | None:
    """The binding limit when its headroom is at most EXHAUSTED_HEADROOM."""
    binding = snapshot.binding
    headroom = None if binding is None else binding.enforced_headroom
    return binding if headroom is not None and headroom <= EXHAUSTED_HEADROOM else None


def describe(lim: Limit) -> str:
    """``"pids_cgroup: 0 headroom (12 of 12 used; /sys/fs/cgroup/pids/x/pids.max)"``."""
    return f"{lim.name}: {lim.headroom} headroom ({lim.used} of {lim.limit} used; {lim.source})"


def classify_errno(err: int, exhausted: Limit | None) -> Classification:
    """Classify by errno, given the exhausted limit of a fresh snapshot (if any)."""
    if err == errnos.EPERM:
        return Classification("seccomp", err, "EPERM: a seccomp profile rejects clone3/clone "
                              "(older container engines with glibc >= 2.34); update the engine "
                              "or its seccomp profile")
    if err == errnos.ENOMEM:
        return Classification(STACK_MEMORY, err, "ENOMEM: no memory for the new thread's stack")
    if err == errnos.EAGAIN and exhausted is not None:
        return Classification(exhausted.name, err, f"EAGAIN; {describe(exhausted)}")
    if err == errnos.EAGAIN:
        return Classification("unknown", err, "EAGAIN but every visible limit shows headroom: "
                              "a limit this process cannot see (an ancestor cgroup outside its "
                              "namespace) or one freed meanwhile")
    return Classification("unknown", err, f"errno {err} ({errnos.errorcode.get(err, '?')})")
