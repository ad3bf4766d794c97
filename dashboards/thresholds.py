"""The thresholds the dashboard and the alert rules share, and the pool sizes behind them.

Headroom thresholds are in kernel tasks. Whether a pool of N process workers fits in
some headroom is what ``grant.max_workers`` decides from the worker cost model
(``worker_cost``) and the reserve (``grant.RESERVE_TASKS``); the pool sizes and task
counts the texts quote are asked of those, for the start method the project's pools use
(``pools.start_method()``). Shares of a limit are the thread manager's pressure levels
seen from the other side: pressure ``used / limit`` of p is headroom of ``1 - p`` of the limit.

``worker_cost`` charges a process worker ``1 + (BLAS threads - 1)`` tasks and reads the
BLAS threads from the environment of the machine that asks. The committed files must not
depend on the machine that generates them, so the texts take the cost of a worker with
BLAS_THREADS BLAS threads, which is how pools start workers (``pools.worker_env``) unless
the user sets ``OPENBLAS_NUM_THREADS`` and friends.

A campaign has stalled when no query finished for longer than the campaign runner's
query time limit, which ends every query (``runner.DEFAULT_QUERY_TIMEOUT``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from templ_pipeline.campaign.runner import DEFAULT_QUERY_TIMEOUT
from templ_pipeline.core import executor, grants, pools
from templ_pipeline.core.limits.grant import RESERVE_TASKS, max_workers
from templ_pipeline.core.limits.model import PIDS_CGROUP, Limit, Snapshot, StackInfo
from templ_pipeline.core.limits.worker_cost import START_METHOD_HELPER_TASKS, WorkerCost, worker_cost
from templ_pipeline.core.thread_manager import CRITICAL_PRESSURE, WARNING_PRESSURE
from templ_pipeline.dashboards.names import MANAGER_REASONS, SEQUENTIAL, value

WARNING_HEADROOM = 32
"""Tasks of headroom below which the warning fires: a pool of a few dozen workers no longer fits."""

FAILURE_RATIO = 0.10
"""Share of conformers failing to score above which the failure alert fires."""
FAILURE_MINUTES = 10
"""Minutes the failure ratio is measured over (the alert fires at once: a 10 s job has no minutes to hold)."""

CAMPAIGN_FAILURE_RATIO = 0.10
"""Share of a campaign's queries failing above which the campaign failure alert fires: a curated library
loses well under 1% to unparsable records and embeddings that fail, so 10% is a broken input or a sick host."""
CAMPAIGN_FAILURE_MINUTES = 10
"""Minutes the query failure ratio is measured over (the alert fires at once, like the conformer one)."""
CAMPAIGN_STALL_WINDOW = 5
"""Minutes of the window in which the stall alert looks for a finished query."""
CAMPAIGN_STALL_MINUTES = math.ceil(DEFAULT_QUERY_TIMEOUT / 60) + CAMPAIGN_STALL_WINDOW
"""Minutes without a finished query, while queries are in flight or remain, after which a campaign has stalled.

A query ends by the runner's time limit at the latest (``--query-timeout``, default
DEFAULT_QUERY_TIMEOUT: a timeout is a finished query too), so a campaign with queries in
flight finishes one at least that often; one more window covers the pool's check and the
scrapes. A campaign run with a longer ``--query-timeout`` can be quiet longer than this."""

EVENT_WINDOW_MINUTES = 5
"""Window of the event alerts ("this counter rose within the window") and of the gauge alerts' min/max over
time: a 10 s job that ends between two rule evaluations is still in the window at the next one, and its alert
clears at the first evaluation more than this after its last bad sample."""
PUSH_FRESH_MINUTES = 5
"""Pushed series older than this (the group's push_time_seconds) no longer feed the gauge alerts: a Pushgateway
keeps a group's last values until it is deleted, so a finished job's last value would otherwise hold for hours."""
MISSED_PUSHES = 3
"""Push intervals (templ_push_interval_seconds) without a push after which a group with no end timestamp
belongs to a job that died: one late push (a slow Pushgateway, a long garbage collection) is not a death."""
PUSH_SLACK_SECONDS = 60
"""Seconds added to MISSED_PUSHES push intervals before a group counts as dead. The age of push_time_seconds at a
rule evaluation is the push's own age plus the Pushgateway's scrape interval (up to 15 s in prometheus.yml) plus
the evaluation's lag behind that scrape (up to 15 s): with --push-interval 5 a live job's last push can read 19 s
and more old, past 3 intervals. 60 s covers both lags twice over, and a push that takes its full timeout."""
DEAD_GROUP_HOURS = 24
"""Hours after a group's last push at which the dead-job alert clears on its own: a page that nobody can act on
any more (the job is long gone, its group not deleted) should not page for days."""
NODE_PRESSURE = CRITICAL_PRESSURE
"""Share of a node's (or container's) thread or pid limit in use above which the node-level alerts fire: the
thread manager's critical pressure, where every program on the node is close to "can't start new thread"."""

BLAS_THREADS = 1
"""BLAS threads of a process worker as pools start it (``pools.worker_env``)."""

_LARGEST_HEADROOM = 1 << 20  # the search for the critical threshold gives up beyond this


def _headroom_share(pressure: float) -> float:
    """``1 - pressure``, rounded: in binary floating point 1 - 0.8 is 0.19999999999999996."""
    return round(1 - pressure, 6)


@dataclass(frozen=True, slots=True)
class Thresholds:
    """The numbers of the headroom alerts and panels, for one start method."""

    start_method: str
    cost: WorkerCost  # one process worker with BLAS_THREADS BLAS threads
    reserve: int
    smallest_pool: int  # the fewest workers the executor starts a process pool with
    critical_tasks: int  # below this, a pool of smallest_pool workers no longer fits
    warning_tasks: int
    largest_pool_below_warning: int  # the most workers that fit in warning_tasks - 1
    warning_pressure: float  # used / limit at which the thread manager reports "warning"
    critical_pressure: float  # ... and "critical"

    @property
    def warning_share(self) -> float:
        """Headroom, as a share of the limit, below which the warning fires."""
        return _headroom_share(self.warning_pressure)

    @property
    def critical_share(self) -> float:
        """Headroom, as a share of the limit, below which the critical alert fires."""
        return _headroom_share(self.critical_pressure)

    def pool_tasks(self, workers: str | int) -> str:
        """What a pool of ``workers`` (a number, or "N") needs, in tasks: workers, pool helpers and reserve."""
        per_worker = self.cost.per_worker
        worker_tasks = f"{workers} tasks" if per_worker == 1 else f"{per_worker}x{workers} tasks"
        return f"{worker_tasks} + {self.cost.fixed_tasks} pool helper tasks + a reserve of {self.reserve}"

    def cost_text(self) -> str:
        """The cost model in words, for a panel description."""
        cost = self.cost
        processes = "process" if cost.helper_processes == 1 else "processes"
        return (f"N process workers need {self.pool_tasks('N')} (a worker with {BLAS_THREADS} BLAS thread "
                f"is {cost.per_worker} task; the helpers are {cost.pool_helpers} threads of the pool in the "
                f"parent and {cost.helper_processes} helper {processes} of the {self.start_method} start method)")


def process_cost(start_method: str) -> WorkerCost:
    """The cost model of a process worker under ``start_method``, with BLAS_THREADS BLAS threads."""
    return replace(worker_cost("process", start_method), per_worker=BLAS_THREADS)


def workers_that_fit(headroom: int, cost: WorkerCost, reserve: int = RESERVE_TASKS) -> int:
    """Process workers the grant allows when one task limit has ``headroom`` tasks left."""
    limit = Limit(PIDS_CGROUP, headroom, 0, headroom, True, "thresholds")
    snapshot = Snapshot(0.0, None, None, (limit,), StackInfo(0, 0, 0, None, None))
    allowed = max_workers(snapshot, cost, reserve)
    if allowed is None:
        raise ValueError(f"process workers costing {cost.per_worker} task(s) are not constrained by a task limit")
    return allowed


def smallest_pool() -> int:
    """The fewest workers for which the executor's ladder has a pool rung (fewer run sequentially)."""
    return next(n for n in range(1, 1 << 10)
                if any(rung.kind != SEQUENTIAL for rung in executor.plan_ladder(n, in_daemon=False)))


def thresholds(start_method: str | None = None) -> Thresholds:
    """The thresholds for ``start_method`` (default: the one the project's pools use)."""
    method = start_method or pools.start_method()
    cost = process_cost(method)
    pool = smallest_pool()
    critical = next(h for h in range(_LARGEST_HEADROOM) if workers_that_fit(h, cost) >= pool)
    return Thresholds(
        start_method=method,
        cost=cost,
        reserve=RESERVE_TASKS,
        smallest_pool=pool,
        critical_tasks=critical,
        warning_tasks=WARNING_HEADROOM,
        largest_pool_below_warning=workers_that_fit(WARNING_HEADROOM - 1, cost),
        warning_pressure=WARNING_PRESSURE,
        critical_pressure=CRITICAL_PRESSURE,
    )


def as_percent(share: float) -> float | int:
    """``0.2`` -> ``20``: a whole number stays an int, as the dashboard JSON writes it."""
    number = round(100 * share, 6)
    return int(number) if number.is_integer() else number


def percent(share: float) -> str:
    """``0.2`` -> ``"20%"``."""
    return f"{as_percent(share)}%"


#: Worker caps the grants apply when the thread manager cannot answer, by reduction reason.
MANAGER_CAPS: dict[str, int] = {
    value("manager_unavailable", MANAGER_REASONS): grants.CAP_MANAGER_UNAVAILABLE,
    value("manager_failed", MANAGER_REASONS): grants.CAP_MANAGER_FAILED,
}


def helper_tasks_by_start_method() -> dict[str, int]:
    """Pool helper tasks (parent threads and start-method processes) per start method the cost model knows."""
    return {method: process_cost(method).fixed_tasks for method in START_METHOD_HELPER_TASKS}
