"""Pushes to the Pushgateway while a run lasts, and the count of pushes that failed.

On a cluster whose compute nodes Prometheus cannot scrape, the Pushgateway is the only
way a job's metrics get out; a campaign that pushed only at its end would be invisible
for its hours of screening, and a job killed on the way (SIGKILL, the OOM killer, a lost
node) would leave no trace. So a run with ``--pushgateway`` pushes every
``--push-interval`` seconds from one daemon thread, and once more at its end. Each push
replaces the group, so the Pushgateway's ``push_time_seconds`` of the group says when the
job was last heard of; with ``templ_push_interval_seconds`` in the push, a rule can tell a
group that stopped being refreshed (its job died) from one that ended (its end
timestamps are set).

The thread is started with :func:`~telemetry.guard.start_guarded`: where the kernel
refuses it the run goes on and pushes at its end only (``templ_telemetry_degraded_total``
says so). A failed push is counted (component ``pushgateway``, reason ``push_failed``) and
logged; the next push that gets through carries the count.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

from templ_pipeline.telemetry.export import PushError, push_metrics
from templ_pipeline.telemetry.guard import start_guarded
from templ_pipeline.telemetry.logs import get_logger
from templ_pipeline.telemetry.metrics import get_metrics

__all__ = ["DEFAULT_PUSH_INTERVAL", "PUSH_TIMEOUT", "PeriodicPusher", "push_once"]

DEFAULT_PUSH_INTERVAL = 30.0
"""Seconds between pushes while a run lasts: two Prometheus scrapes of the Pushgateway at the usual 15 s."""
PUSH_TIMEOUT = 10.0
"""Seconds one push may take before it counts as failed."""
COMPONENT = "pushgateway"

_log = get_logger("templ.telemetry")


def push_once(url: str, job: str, grouping_key: Mapping[str, str]) -> bool:
    """Push the delivered metrics; on failure count it, log ``telemetry.push_failed`` and return False."""
    try:
        push_metrics(url, job=job, registry=get_metrics().registry, grouping_key=dict(grouping_key),
                     timeout=PUSH_TIMEOUT)
    except PushError as exc:
        get_metrics().telemetry_degraded.labels(component=COMPONENT, reason="push_failed").inc()
        _log.warning("telemetry.push_failed", url=url, error=str(exc))
        return False
    return True


class PeriodicPusher:
    """A daemon thread that pushes every ``interval`` seconds until :meth:`stop`."""

    def __init__(self, url: str, job: str, grouping_key: Mapping[str, str], interval: float) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be positive, not {interval}")
        self.url, self.job, self.grouping_key, self.interval = url, job, dict(grouping_key), interval
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> bool:
        """Start the thread; False (and a degraded count) where the kernel refuses it."""
        thread = threading.Thread(target=self._run, name="templ-pusher", daemon=True)
        started = start_guarded(COMPONENT, lambda: (thread.start(), thread)[1])
        self._thread = started
        return started is not None

    def _run(self) -> None:
        while not self._stopped.wait(self.interval):
            push_once(self.url, self.job, self.grouping_key)

    def stop(self) -> None:
        """Stop pushing; waits for a push in flight, which its timeout bounds."""
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout=PUSH_TIMEOUT + 1)
            self._thread = None
