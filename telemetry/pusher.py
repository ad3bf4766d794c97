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
SIGNAL_PUSH_TIMEOUT = 2.0
"""Seconds the last push (and the delete) may take when a signal ends the run: Slurm's KillWait and a pod's
grace period are 30 s, and a hung Pushgateway must not use them up."""
COMPONENT = "pushgateway"

_log = get_logger("templ.telemetry")


def push_once(url: str, job: str, grouping_key: Mapping[str, str], timeout: float = PUSH_TIMEOUT) -> bool:
    """Push the delivered metrics; on failure count it, log ``telemetry.push_failed`` and return False."""
    try:
        push_metrics(url, job=job, registry=get_metrics().registry, grouping_key=dict(grouping_key),
                     timeout=timeout)
    except PushError as exc:
        get_metrics().telemetry_degraded.labels(component=COMPONENT, reason="push_failed").inc()
        _log.warning("telemetry.push_failed", url=url, error=str(exc))
        return False
    return True


class PeriodicPusher:
    """A daemon thread that pushes every ``interval`` seconds until :meth:`stop`.

    Pushes run under one lock, and the thread checks under it that it has not been
    stopped: once :meth:`stop` holds the lock, no periodic push can land after the
    run's last push (or the delete of its group) and bring the group back without its
    end timestamp.
    """

    def __init__(self, url: str, job: str, grouping_key: Mapping[str, str], interval: float) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be positive, not {interval}")
        self.url, self.job, self.grouping_key, self.interval = url, job, dict(grouping_key), interval
        self._stopped = threading.Event()
        self._lock = threading.Lock()

    def start(self) -> bool:
        """Start the thread; False (and a degraded count) where the kernel refuses it."""
        thread = threading.Thread(target=self._run, name="templ-pusher", daemon=True)

        def started() -> threading.Thread:
            thread.start()
            return thread

        return start_guarded(COMPONENT, started) is not None

    def _run(self) -> None:
        while not self._stopped.wait(self.interval):
            with self._lock:
                if self._stopped.is_set():
                    return
                try:
                    push_once(self.url, self.job, self.grouping_key)
                except Exception as exc:  # the thread must not die: a group no longer refreshed reads as a dead job
                    get_metrics().telemetry_degraded.labels(component=COMPONENT, reason="push_failed").inc()
                    _log.warning("telemetry.push_failed", url=self.url, error=f"{type(exc).__name__}: {exc}")

    def stop(self, timeout: float = PUSH_TIMEOUT) -> bool:
        """Stop pushing; True once no periodic push can land any more.

        Waits up to ``timeout`` for a push in flight (its own timeout bounds it); False when
        that push is still hung (in a name lookup, which the push timeout does not cover).
        """
        self._stopped.set()
        if not self._lock.acquire(timeout=timeout):
            return False
        self._lock.release()
        return True
