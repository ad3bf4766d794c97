"""Metrics Dask distributed exposes itself (not TEMPL's catalog): the scheduler's and workers' /metrics.

Checked against distributed 2026.8 on a LocalCluster. The scheduler serves them on its
dashboard port (8787 by default); a worker on its own dashboard port
(``dask worker ... --dashboard-address :8790``). The scrape config names the jobs below.
"""

from __future__ import annotations

SCHEDULER_JOB = "dask-scheduler"
WORKERS_JOB = "dask-workers"

#: name -> labels, as exposed
METRICS: dict[str, tuple[str, ...]] = {
    "dask_scheduler_tasks": ("state",),
    "dask_scheduler_workers": ("state",),
    "dask_scheduler_workers_removed_total": (),
    "dask_worker_threads": (),
}
