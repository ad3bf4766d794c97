"""A campaign's queries as tasks on a Dask cluster: the rung above the local process pool.

:class:`DaskQueryPool` offers the campaign's dispatch loop what
:class:`~templ_pipeline.campaign.pool.QueryPool` offers: free slots, ``dispatch``,
a bounded ``wait`` that brings finished queries, ``gone`` when the rung is over. The
queries in flight are bounded (twice the cluster's worker threads: each thread has
its next query at hand while the driver writes a row), so memory stays flat whatever
the size of the input. Each query is one task
(:func:`~templ_pipeline.campaign.dask_task.run_query`): conformer generation and
scoring on the worker, the outcome back to the driver, which writes it and counts it.

What travels, and how often: the campaign's settings (its template library) once per worker, as a
worker plugin the scheduler also gives every worker that joins later; per query, the task (the
query's text, its trace context and the campaign's key: the same few hundred bytes whatever the
library) and its outcome. The queries dispatched between two waits go to the scheduler in one
message, and the outcomes that finished together come back in one request.

What can go wrong, and what the campaign sees:

- a worker dies under a query: Dask runs it again elsewhere; the driver hears it from
  the scheduler's ``remove-worker`` event and emits
  :class:`~templ_pipeline.core.events.QueryResubmitted`. A second loss under the same
  query (or Dask's ``KilledWorker``) makes it a ``worker_lost`` row, as on the local pool;
- a query runs over its time limit (counted from its start on a worker, which the worker
  announces): a ``timeout`` row, its task is cancelled and the scheduler is asked to restart
  its worker (a native embedding cannot be stopped otherwise). The driver does not wait for
  the restart: the other queries' results keep arriving and are written while the worker
  process is killed and its nanny starts a new one (a worker without a nanny is removed);
- the scheduler is lost, or has no worker for the worker timeout (at the start, or after
  every worker left): a fallback (``scheduler_lost``, ``no_workers``) and ``gone``; the
  campaign runs the queries in flight again on the local ladder.
"""

from __future__ import annotations

import concurrent.futures
import queue
import time
import uuid
from concurrent.futures import CancelledError
from dataclasses import dataclass

from distributed import KilledWorker, as_completed

from templ_pipeline.campaign.dask_task import START_TOPIC, TASK_PREFIX, CampaignSettingsPlugin, run_query
from templ_pipeline.campaign.pool import MAX_ATTEMPTS, Arrivals, NoWorkers
from templ_pipeline.campaign.task import CampaignSettings, QueryOutcome, QueryTask, failed
from templ_pipeline.core.dask_backend import (
    CLOSE_TIMEOUT,
    RESUBMIT_REASONS,
    SESSIONS,
    WAIT_SECONDS,
    ClusterWatch,
    DaskFailure,
    DaskSession,
    arrived,
    drain,
    worker_timeout,
)
from templ_pipeline.core.events import (
    ExecutorKind,
    Fallback,
    FallbackCause,
    FallbackReason,
    Observer,
    QueryFailureReason,
    QueryResubmitted,
    ResubmissionReason,
    WorkersReduced,
)

IN_FLIGHT_PER_THREAD = 2
"""Queries handed to the cluster per worker thread: one running, one waiting for the thread."""

RESTART_SECONDS = 30.0
"""How long the scheduler may take to kill a worker whose query ran over its time limit, and how long a
campaign that finished waits, at most, for the kills it asked for."""


@dataclass(eq=False)
class _Submitted:
    task: QueryTask
    future: object  # distributed.Future
    started: float | None = None  # driver clock, when its worker announced the start
    worker: str = ""
    losses: int = 0


class DaskQueryPool:
    """The campaign's queries on the Dask scheduler at ``address`` (None: a LocalCluster of ``local_workers``)."""

    kind = ExecutorKind.DASK

    def __init__(self, address: str | None, settings: CampaignSettings, emit: Observer, *,
                 query_timeout: float | None, wait_for_workers: float | None = None, local_workers: int = 1) -> None:
        self._address = address
        self._settings = settings
        self._emit = emit
        self._timeout = query_timeout if query_timeout and query_timeout > 0 else None
        self._worker_wait = worker_timeout(wait_for_workers)
        self._local_workers = max(1, local_workers)
        self._run_id = uuid.uuid4().hex
        self._submissions = 0
        self._submitted: dict[str, _Submitted] = {}
        self._orphans: list[QueryTask] = []  # tasks the scheduler dropped or gave up on: submitted again
        self._dropped: dict[int, int] = {}  # query index -> times the driver submitted it again
        self._session: DaskSession | None = None
        self._watch: ClusterWatch | None = None
        self._stream: as_completed | None = None
        self._losses: queue.SimpleQueue | None = None
        self._starts: queue.SimpleQueue | None = None
        self._settings_ref: CampaignSettings | str = settings  # the plugin's key once installed
        self._plugin: str | None = None
        self._outbox: list[tuple[str, QueryTask]] = []  # dispatched, sent with the next wait
        self._restarts: list[concurrent.futures.Future[object]] = []  # restarts asked of the scheduler
        self.gone: Fallback | None = None
        self.reused = False

    @property
    def workers(self) -> int:
        """Worker threads of the cluster at the last check."""
        return self._watch.threads if self._watch is not None else 0

    def start(self) -> None:
        """Connect (or start the LocalCluster) and wait for a worker; a fallback and ``NoWorkers`` when not."""
        try:
            self._session, self.reused = SESSIONS.acquire(self._address, self._local_workers)
            self._watch = ClusterWatch(self._session, self._worker_wait)
            self._watch.wait_for_workers()
        except DaskFailure as failure:
            self._give_up(failure)
            raise NoWorkers(self.gone) from failure  # type: ignore[arg-type]
        self._install_settings()
        self._stream = as_completed(loop=self._session.client.loop)
        self._losses = self._session.losses.listen()
        self._starts = self._session.relay(START_TOPIC).listen()

    def _install_settings(self) -> None:
        """Send the settings (the template library) to every worker once, as a worker plugin, so that each task
        carries the campaign's key instead of the library; a scheduler that refuses the plugin gets the
        settings with every task, as before."""
        assert self._session is not None
        plugin = CampaignSettingsPlugin(self._run_id, self._settings)
        try:
            self._session.client.register_plugin(plugin, name=plugin.name)
        except Exception:  # an old scheduler or a lost one: tasks carry the settings
            return
        self._plugin, self._settings_ref = plugin.name, plugin.key

    def idle(self) -> list[None]:
        """One slot per query the cluster may take now (a slot is a place, not a worker)."""
        if self.gone is not None:
            return []
        capacity = max(1, self.workers) * IN_FLIGHT_PER_THREAD
        return [None] * max(0, capacity - len(self._submitted) - len(self._outbox))

    def starting(self) -> bool:
        """Workers come and go on their own; the campaign never waits for one to start here."""
        return False

    def dispatch(self, slot: None, task: QueryTask) -> bool:
        """Queue ``task`` for the scheduler (sent with the others at the next ``wait``); False when the client
        is closed (``wait`` finds out and says so)."""
        assert self._session is not None
        if self._session.client.status != "running":
            return False
        self._submissions += 1  # a key per submission: a query dropped by the scheduler is submitted anew
        self._outbox.append((f"{TASK_PREFIX}-{task.index}-{self._run_id}-{self._submissions}", task))
        return True

    def _send(self) -> None:
        """The queued tasks to the scheduler, in one message; kept for the next wait when it cannot be sent."""
        assert self._session is not None and self._stream is not None
        if not self._outbox:
            return
        keys, tasks = zip(*self._outbox, strict=True)
        try:
            futures = self._session.client.map(run_query, [self._settings_ref] * len(tasks), list(tasks),
                                               key=list(keys), pure=False)
        except Exception:  # a closed client: the cluster check names the loss, the campaign runs them again
            return
        self._outbox.clear()
        for key, task, future in zip(keys, tasks, futures, strict=True):
            self._submitted[key] = _Submitted(task, future)
            self._stream.add(future)

    def wait(self, timeout: float) -> Arrivals:
        """Up to ``timeout`` seconds for finished queries; handle lost workers, late queries, a lost cluster."""
        arrivals = Arrivals()
        if self.gone is not None or self._stream is None:
            return arrivals
        self._send()
        done = arrived(self._stream, min(timeout, WAIT_SECONDS, self._next_deadline()))
        self._take_announcements(arrivals)  # a loss is announced before the rerun's result
        results = self._session.gather(  # type: ignore[union-attr]
            future for future in done if future.key in self._submitted and future.status == "finished")
        fetched: dict[str, _Submitted] = {}
        for future in done:
            entry = self._submitted.pop(future.key, None)
            outcome = self._outcome(entry, results.get(future.key)) if entry is not None else None
            if outcome is not None:
                arrivals.finished.append((entry.task, outcome))  # type: ignore[union-attr]
                fetched[future.key] = entry  # type: ignore[assignment]
            future.release()
        # fetching a result can take a while: what the scheduler announced meanwhile; a worker that died while
        # its finished result was being fetched means Dask computed that result again
        self._take_announcements(arrivals, fetched)
        self._enforce_deadlines(arrivals)
        self._restarts = [restart for restart in self._restarts if not restart.done()]
        try:
            self._watch.check()  # type: ignore[union-attr]
        except DaskFailure as failure:
            self._give_up(failure)
        if self.gone is None:
            orphans, self._orphans = self._orphans, []
            for task in orphans:
                if not self.dispatch(None, task):
                    self._orphans.append(task)
        return arrivals

    def shutdown(self, *, terminate: bool = False) -> None:
        """Cancel what is still in flight and stop listening; the session stays for the next campaign."""
        session, submitted = self._session, list(self._submitted.values())
        self._submitted.clear()
        self._outbox.clear()
        if session is None:
            return
        if not terminate and session.client.status == "running":  # the stuck workers are down before it ends
            concurrent.futures.wait(self._restarts, timeout=RESTART_SECONDS)
        self._restarts.clear()
        if self._losses is not None:
            session.losses.forget(self._losses)
        if self._starts is not None:
            session.relay(START_TOPIC).forget(self._starts)
        if submitted and session.client.status == "running":
            try:
                session.client.cancel([entry.future for entry in submitted])
            except Exception:  # the scheduler went away meanwhile: nothing is left to cancel
                pass
        if self._plugin is not None and session.client.status == "running":
            try:  # the workers drop the campaign's settings
                session.client.unregister_worker_plugin(self._plugin)
            except Exception:  # the scheduler went away meanwhile: so did the workers' copies
                pass
            self._plugin = None
        if self.gone is not None and self.gone.reason == FallbackReason.SCHEDULER_LOST:
            SESSIONS.discard(session)

    # --- inside ---------------------------------------------------------------------------------

    def _outcome(self, entry: _Submitted, fetched: QueryOutcome | None) -> QueryOutcome | None:
        """The finished query's outcome, ``fetched`` or asked for now (a failed task is a failed outcome,
        never an exception); None when the scheduler dropped the task: it runs again, here or, when the
        cluster is gone, on the local ladder."""
        task, future = entry.task, entry.future
        try:
            outcome = fetched or future.result(timeout=CLOSE_TIMEOUT)  # type: ignore[attr-defined]
        except KilledWorker as error:
            # Dask counts every loss of a worker the task was assigned to, also while it only waited there
            # behind another query: a query that never started on a lost worker is submitted again
            if entry.losses == 0 and self._drop(task):
                return None
            return self._worker_lost(task, f"Dask gave up on it after losing workers under it ({error})")
        except (CancelledError, OSError, TimeoutError):
            if self._drop(task):
                return None
            return self._worker_lost(task, f"its Dask task was dropped {MAX_ATTEMPTS} times")
        except Exception as error:  # the task itself raised on its worker (its arguments broke)
            return failed(task.index, QueryFailureReason.ERROR, f"{type(error).__name__} on its Dask worker: {error}",
                          smiles=task.smiles or "")
        for event in outcome.events:
            if isinstance(event, (WorkersReduced, Fallback)):
                self._emit(event)  # the worker's thread reductions and fallbacks, counted here, once
        outcome.events = []
        return outcome

    def _drop(self, task: QueryTask) -> bool:
        """Queue ``task`` to be submitted again (True), at most ``MAX_ATTEMPTS`` times per query."""
        times = self._dropped.get(task.index, 0)
        if times >= MAX_ATTEMPTS:
            return False
        self._dropped[task.index] = times + 1
        self._orphans.append(task)
        return True

    def _worker_lost(self, task: QueryTask, why: str) -> QueryOutcome:
        return failed(task.index, QueryFailureReason.WORKER_LOST, f"{why}, after {MAX_ATTEMPTS} runs",
                      smiles=task.smiles or "")

    def _take_announcements(self, arrivals: Arrivals, fetched: dict[str, _Submitted] | None = None) -> None:
        """The scheduler's news in the order it sent them: starts first, so a loss finds its query's worker."""
        self._note_starts()
        self._handle_losses(arrivals, fetched)

    def _note_starts(self) -> None:
        now = time.monotonic()
        for message in drain(self._starts) if self._starts is not None else ():
            entry = self._submitted.get(str(message.get("key")))
            if entry is not None:
                entry.started, entry.worker = now, str(message.get("worker", ""))

    def _handle_losses(self, arrivals: Arrivals, fetched: dict[str, _Submitted] | None = None) -> None:
        """The scheduler's worker losses: queries in flight run again (or fail); ``fetched`` ones (their
        result arrived after Dask computed it again) are only counted."""
        for message in drain(self._losses) if self._losses is not None else ():
            worker = str(message.get("worker", ""))
            for field, reason in RESUBMIT_REASONS.items():
                for key in sorted(map(str, message.get(field, ()))):
                    entry = self._submitted.get(key)
                    if entry is not None:
                        self._lost(key, entry, reason, worker, arrivals)
                    elif fetched and key in fetched and reason == ResubmissionReason.RESULT_LOST:
                        self._emit(QueryResubmitted(ExecutorKind.DASK, fetched[key].task.index, reason, worker))

    def _lost(self, key: str, entry: _Submitted, reason: ResubmissionReason, worker: str, arrivals: Arrivals) -> None:
        """The worker under (or holding) a query left: Dask runs it again once; a second loss fails it.

        A query only queued on that worker (the scheduler hands a one-thread worker two) never started
        there: Dask gives it to another worker, and nothing is run again.
        """
        if reason == ResubmissionReason.WORKER_LOST and entry.worker != worker:
            return
        entry.losses += 1
        entry.started, entry.worker = None, ""  # its time limit counts again from the rerun's start
        if entry.losses < MAX_ATTEMPTS:
            self._emit(QueryResubmitted(ExecutorKind.DASK, entry.task.index, reason, worker))
            return
        del self._submitted[key]
        self._cancel(entry)
        arrivals.finished.append((entry.task, self._worker_lost(entry.task, f"Dask worker {worker} was lost under it")))

    def _enforce_deadlines(self, arrivals: Arrivals) -> None:
        if self._timeout is None:
            return
        now = time.monotonic()
        for key, entry in list(self._submitted.items()):
            if entry.started is not None and now - entry.started > self._timeout:
                del self._submitted[key]
                seconds = now - entry.started
                self._cancel(entry)
                self._restart(entry.worker)
                arrivals.finished.append((entry.task, failed(
                    entry.task.index, QueryFailureReason.TIMEOUT,
                    f"still running after {seconds:.1f} s (limit {self._timeout:g} s) on Dask worker {entry.worker}; "
                    "its task was cancelled and its worker restarted", smiles=entry.task.smiles or "",
                    seconds=seconds)))

    def _next_deadline(self) -> float:
        if self._timeout is None:
            return WAIT_SECONDS
        now = time.monotonic()
        left = [entry.started + self._timeout - now for entry in self._submitted.values() if entry.started is not None]
        return max(0.0, min(left, default=WAIT_SECONDS))

    def _cancel(self, entry: _Submitted) -> None:
        try:
            entry.future.cancel()  # type: ignore[attr-defined]
        except Exception:  # the client is closing: the task goes with it
            pass

    def _restart(self, worker: str) -> None:
        """Ask the scheduler to restart the worker stuck in a query, without waiting: the campaign goes on."""
        if not worker or self._session is None:
            return
        restart = self._session.restart([worker], RESTART_SECONDS)
        if restart is not None:
            self._restarts.append(restart)

    def _give_up(self, failure: DaskFailure) -> None:
        """The cluster cannot run the campaign: a fallback to the local ladder, and ``gone``."""
        where = self._address or "a LocalCluster"
        detail = f"Dask ({where}): {failure.error}; the campaign goes on locally"
        self.gone = Fallback(ExecutorKind.DASK, ExecutorKind.PROCESS, failure.reason, FallbackCause.NONE, detail,
                             failure.error)
        self._emit(self.gone)
