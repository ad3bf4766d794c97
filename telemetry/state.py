"""Process-wide on/off switch for telemetry (used by the overhead benchmark)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

#: When False, per-call/per-batch helpers in ``telemetry.events`` return early and
#: ``telemetry.tracing.get_tracer()`` hands out a no-op tracer. Rare safety events
#: (worker reductions, fallbacks, degraded telemetry) are still counted and logged.
enabled: bool = True


def is_enabled() -> bool:
    """True when telemetry is on."""
    return enabled


def set_enabled(value: bool) -> None:
    """Turn telemetry on or off for the whole process."""
    global enabled
    enabled = bool(value)


@contextmanager
def disabled() -> Iterator[None]:
    """Temporarily turn telemetry off (restores the previous state on exit)."""
    global enabled
    previous = enabled
    enabled = False
    try:
        yield
    finally:
        enabled = previous
