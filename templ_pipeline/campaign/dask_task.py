"""A block of campaign queries as one Dask task: what runs on the Dask worker.

:func:`run_block` runs a few queries one after the other with the same
:class:`~templ_pipeline.campaign.task.QueryRunner` as the local campaign workers, so
the rows do not depend on where a query ran. A block, not a query, is the task because
every task costs the driver about six messages (the graph update, the key in memory,
the gather and its reply, the scheduler's echo of the gather, the release): four queries
a task bring the driver's CPU per query to a third or two fifths of one query a task.

What the driver learns, and how:

- each query's start goes to the scheduler's event log under ``templ-query-started`` and
  under the worker's address, which the driver does not subscribe to: it costs the driver
  nothing per query, and when a worker is lost the driver reads that worker's log once
  to find the query that was running there;
- a query that runs over its time limit is announced by the worker itself, on
  ``templ-query-overdue``, which the driver subscribes to: a timer on the worker's own event
  loop (no thread to start) fires at the limit unless the query ended first. ETKDG releases
  the GIL, so the loop runs while it embeds; a task that held the GIL would also stop the
  worker's heartbeats, and the scheduler would remove the worker.

The worker sizes ETKDG's threads from its own machine: the CPUs it may use shared
among the worker's task threads (or among a LocalCluster's workers, which the driver
says in ``CampaignSettings.query_threads``; or at most ``$TEMPL_QUERY_THREADS`` of the
worker's environment), granted by its own thread resource manager
for task type ``conformers``; a refused thread start is retried on fewer threads, down to one.
ETKDG gives the same conformers at any thread count. The reductions and fallbacks the
worker decides travel back in the outcome (``QueryOutcome.events``) and the driver
emits them, so every metric is counted once, in the driver.
"""

from __future__ import annotations

import os
import time

from distributed import Worker
from distributed.diagnostics.plugin import WorkerPlugin

from templ_pipeline.campaign.task import CampaignSettings, QueryOutcome, QueryRunner, QueryTask
from templ_pipeline.core.conformers import EmbeddingThreads, embed_conformers
from templ_pipeline.core.events import Fallback, WorkersReduced

QUERY_THREADS_ENV = "TEMPL_QUERY_THREADS"
"""Set in a Dask worker's environment, the most ETKDG threads one query may use there (several workers
started on one node with ``dask worker --nworkers N`` each see all of its CPUs)."""
START_TOPIC = "templ-query-started"
"""Where each query's start is logged (and under its worker's address); nobody needs to listen."""
OVERDUE_TOPIC = "templ-query-overdue"
"""Where a worker announces a query still running at its time limit; the driver listens."""
TASK_PREFIX = "templ-queries"
_RUNNERS_KEPT = 4

_runners: dict[CampaignSettings, QueryRunner] = {}
_settings: dict[str, CampaignSettings] = {}  # campaign key -> its settings, installed by CampaignSettingsPlugin


class CampaignSettingsPlugin(WorkerPlugin):
    """A Dask worker plugin holding a campaign's settings (its template library): the scheduler sends it to
    every worker once, and to every worker that joins later, so a task carries the campaign's key only.

    Registered by the driver (``Client.register_plugin``); ``setup`` runs on each worker before it runs
    the campaign's tasks, ``teardown`` when the driver unregisters it at the campaign's end.
    """

    def __init__(self, key: str, settings: CampaignSettings) -> None:
        super().__init__()
        self.name = f"templ-campaign-{key}"
        self.key = key
        self.settings = settings

    def setup(self, worker: Worker) -> None:
        _settings[self.key] = self.settings

    def teardown(self, worker: Worker) -> None:
        _settings.pop(self.key, None)
        _runners.pop(self.settings, None)


def run_block(settings: CampaignSettings | str, tasks: tuple[QueryTask, ...],
              time_limit: float | None = None) -> list[QueryOutcome]:
    """Run ``tasks`` one after the other on this Dask worker, their outcomes in order; never raises (as
    :meth:`QueryRunner.run`). ``settings`` is the campaign's, or the key its :class:`CampaignSettingsPlugin`
    installed them under; a query still running ``time_limit`` seconds after its start is announced."""
    place = _Place.here()
    if isinstance(settings, str):
        settings = _settings[settings]
    runner = _runner(settings)
    outcomes = []
    for task in tasks:
        place.started(task)
        with _Overdue(place, task, time_limit):
            outcomes.append(_run(runner, settings, task, place.nthreads))
    return outcomes


def _run(runner: QueryRunner, settings: CampaignSettings, task: QueryTask, nthreads: int) -> QueryOutcome:
    events: list[object] = []
    threads = EmbeddingThreads(_threads_wanted(nthreads, settings.query_threads), events.append)
    try:
        runner.embed = lambda with_hs, count, seed, random_coords, pins=None, *, probe=False: embed_conformers(
            with_hs, count, seed, threads, random_coords=random_coords, pins=pins, prune_rms=settings.prune_rms)
        runner.threads = lambda: threads.count
        outcome = runner.run(task)
    finally:
        threads.release()
    outcome.events = [event for event in events if isinstance(event, (WorkersReduced, Fallback))]
    return outcome


class _Place:
    """Where a block runs: its Dask worker (None when called directly), task key and thread count."""

    def __init__(self, worker: Worker | None) -> None:
        self.worker = worker
        self.key = str(worker.get_current_task()) if worker is not None else ""
        self.nthreads = max(1, worker.state.nthreads) if worker is not None else 1

    @classmethod
    def here(cls) -> _Place:
        from distributed import get_worker

        try:
            return cls(get_worker())
        except ValueError:  # not on a Dask worker (called directly): nobody to tell
            return cls(None)

    def started(self, task: QueryTask) -> None:
        """Log the query's start on the scheduler, under the start topic and this worker's address."""
        if self.worker is not None:
            self.worker.log_event([START_TOPIC, self.worker.address], self.message(task))

    def message(self, task: QueryTask, **extra: object) -> dict[str, object]:
        return {"key": self.key, "index": task.index, "worker": self.worker.address if self.worker else "",
                "pid": os.getpid(), **extra}


class _Overdue:
    """Announces on ``OVERDUE_TOPIC`` a query still running at its time limit, from a timer on the worker's
    event loop (thread-safe: the timer is armed and disarmed through ``add_callback``)."""

    def __init__(self, place: _Place, task: QueryTask, limit: float | None) -> None:
        self._place, self._task, self._limit = place, task, limit
        self._handle: object | None = None
        self._done = False

    def __enter__(self) -> _Overdue:
        if self._place.worker is not None and self._limit:
            self._started = time.monotonic()
            self._place.worker.loop.add_callback(self._arm)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._done = True
        if self._place.worker is not None and self._limit:
            self._place.worker.loop.add_callback(self._disarm)

    def _arm(self) -> None:  # on the worker's event loop
        if not self._done:
            left = self._started + float(self._limit or 0) - time.monotonic()
            self._handle = self._place.worker.loop.call_later(max(0.0, left), self._fire)  # type: ignore[union-attr]

    def _disarm(self) -> None:  # on the worker's event loop
        if self._handle is not None:
            self._place.worker.loop.remove_timeout(self._handle)  # type: ignore[union-attr]
            self._handle = None

    def _fire(self) -> None:  # on the worker's event loop
        self._handle = None
        if not self._done:
            seconds = round(time.monotonic() - self._started, 3)
            self._place.worker.log_event(  # type: ignore[union-attr]
                OVERDUE_TOPIC, self._place.message(self._task, seconds=seconds))


def _runner(settings: CampaignSettings) -> QueryRunner:
    """The runner of ``settings`` in this worker process: templates are prepared once per campaign."""
    runner = _runners.get(settings)
    if runner is None:
        if len(_runners) >= _RUNNERS_KEPT:
            _runners.clear()
        runner = _runners[settings] = QueryRunner(settings)
    return runner


def _threads_wanted(task_threads: int, share: int) -> int:
    """ETKDG threads one query may use: this machine's CPUs shared among the worker's task threads, and
    no more than ``share`` when the driver knows the machine's CPUs are shared among several workers."""
    from templ_pipeline.core.limits.cpu import read_cpu_budget

    cpus = read_cpu_budget().cpus or len(os.sched_getaffinity(0)) or 1
    wanted = max(1, cpus // max(1, task_threads))
    configured = os.environ.get(QUERY_THREADS_ENV, "").strip()
    if configured.isdigit() and int(configured) > 0:
        wanted = min(wanted, int(configured))
    return min(wanted, share) if share > 0 else wanted
