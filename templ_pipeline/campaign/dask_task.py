"""One campaign query as a Dask task: what runs on the Dask worker.

:func:`run_query` says on the worker event topic ``templ-query-started`` that the
query started and where (the driver's time limit counts from then, not from when the
query waited in the scheduler's queue), then runs it with the same
:class:`~templ_pipeline.campaign.task.QueryRunner` as the local campaign workers, so
the rows do not depend on where a query ran.

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

from distributed import Worker
from distributed.diagnostics.plugin import WorkerPlugin

from templ_pipeline.campaign.task import CampaignSettings, QueryOutcome, QueryRunner, QueryTask
from templ_pipeline.core.conformers import EmbeddingThreads, embed_conformers
from templ_pipeline.core.events import Fallback, WorkersReduced

QUERY_THREADS_ENV = "TEMPL_QUERY_THREADS"
"""Set in a Dask worker's environment, the most ETKDG threads one query may use there (several workers
started on one node with ``dask worker --nworkers N`` each see all of its CPUs)."""
START_TOPIC = "templ-query-started"
TASK_PREFIX = "templ-query"
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


def run_query(settings: CampaignSettings | str, task: QueryTask) -> QueryOutcome:
    """Run ``task`` on this Dask worker; never raises (as :meth:`QueryRunner.run`). ``settings`` is the
    campaign's, or the key its :class:`CampaignSettingsPlugin` installed them under."""
    nthreads = _announce_start()
    if isinstance(settings, str):
        settings = _settings[settings]
    runner = _runner(settings)
    events: list[object] = []
    threads = EmbeddingThreads(_threads_wanted(nthreads, settings.query_threads), events.append)
    try:
        runner.embed = lambda with_hs, count, seed, random_coords, pins=None: embed_conformers(
            with_hs, count, seed, threads, random_coords=random_coords, pins=pins, prune_rms=settings.prune_rms)
        runner.threads = lambda: threads.count
        outcome = runner.run(task)
    finally:
        threads.release()
    outcome.events = [event for event in events if isinstance(event, (WorkersReduced, Fallback))]
    return outcome


def _announce_start() -> int:
    """Tell the driver (through the scheduler) which worker (address and process) started this task; the
    worker's thread count."""
    from distributed import get_worker

    try:
        worker = get_worker()
    except ValueError:  # not on a Dask worker (called directly): nobody to tell
        return 1
    worker.log_event(START_TOPIC, {"key": worker.get_current_task(), "worker": worker.address, "pid": os.getpid()})
    return max(1, worker.state.nthreads)


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
