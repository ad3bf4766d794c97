"""Map a failed thread or process start to the limit (or filter) that refused it."""

from __future__ import annotations

import errno as errnos

from templ_pipeline.core.limits.model import STACK_MEMORY, Classification, Limit, Snapshot

EXHAUSTED_HEADROOM = 1
"""A limit with this headroom or less is taken as the cause without probing: a failed start
usually frees nothing, but a thread of the failed pool may have exited meanwhile."""


def errno_of(exc: BaseException | None) -> int | None:
    """The errno of ``exc`` or of the OSError it was raised from (RuntimeError has none)."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, OSError) and exc.errno:
            return exc.errno
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def exhausted_limit(snapshot: Snapshot) -> Limit | None:
    """The binding limit when its headroom is at most EXHAUSTED_HEADROOM."""
    binding = snapshot.binding
    return binding if binding is not None and binding.headroom <= EXHAUSTED_HEADROOM else None


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
