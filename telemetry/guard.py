"""Start background telemetry machinery (threads, servers) without ever crashing the pipeline."""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import TypeVar

from templ_pipeline.telemetry import state
from templ_pipeline.telemetry.catalog import DEGRADED_COMPONENTS, DEGRADED_REASONS, normalize_label
from templ_pipeline.telemetry.logs import get_logger
from templ_pipeline.telemetry.metrics import get_metrics

T = TypeVar("T")

__all__ = ["classify_start_error", "start_guarded"]

_ERRNO_REASONS = {
    errno.EAGAIN: "resource_unavailable",
    errno.ENOMEM: "out_of_memory",
    errno.EPERM: "permission_denied",
}


def classify_start_error(exc: BaseException) -> str | None:
    """Degraded-reason for an exception raised while starting a thread/server, or None if not ours."""
    if isinstance(exc, RuntimeError) and "can't start new thread" in str(exc):
        return "thread_start_failed"
    if isinstance(exc, OSError) and exc.errno in _ERRNO_REASONS:
        return _ERRNO_REASONS[exc.errno]
    return None


def _degrade(component: str, reason: str, exc: BaseException | None) -> None:
    comp_label = normalize_label(component, DEGRADED_COMPONENTS + ("other",))
    reason_label = normalize_label(reason, DEGRADED_REASONS + ("other",))
    get_metrics().telemetry_degraded.labels(component=comp_label, reason=reason_label).inc()
    current = state.current()
    with current.lock:
        first = component not in current.degraded_warned
        current.degraded_warned.add(component)
    if first:
        get_logger("templ.telemetry").warning(
            "telemetry.degraded",
            component=component,
            reason=reason,
            error_type=type(exc).__name__ if exc is not None else None,
            error=str(exc) if exc is not None else None,
        )


def start_guarded(
    component: str,
    start: Callable[[], T],
    *,
    headroom: int | None = None,
    min_headroom: int = 1,
) -> T | None:
    """Run ``start()``; on a thread/resource start failure degrade instead of raising.

    Catches ``RuntimeError("can't start new thread")`` and ``OSError`` with
    EAGAIN/ENOMEM/EPERM. If ``headroom`` (threads the kernel still allows) is
    given and below ``min_headroom``, ``start`` is not attempted (reason
    ``no_headroom``). On failure: increments
    ``templ_telemetry_degraded_total{component,reason}`` every time, logs
    ``telemetry.degraded`` once per component per process, returns ``None``.
    Any other exception propagates.
    """
    if headroom is not None and headroom < min_headroom:
        _degrade(component, "no_headroom", None)
        return None
    try:
        return start()
    except (RuntimeError, OSError) as exc:
        reason = classify_start_error(exc)
        if reason is None:
            raise
        _degrade(component, reason, exc)
        return None

