"""A campaign's queries as tasks on a Dask cluster: the rung above the local process pool.

:class:`DaskQueryPool` offers the campaign's dispatch loop what
:class:`~templ_pipeline.campaign.pool.QueryPool` offers: free slots, ``dispatch``,
a bounded ``wait`` that brings finished queries, ``gone`` when the rung is over. The
queries in flight are bounded (two blocks per worker thread: each thread has its next
block at hand while the driver writes rows), so memory stays flat whatever the size of
the input. A task is a block of up to ``BLOCK_QUERIES`` queries
(:func:`~templ_pipeline.campaign.dask_task.run_block`): conformer generation and
scoring on the worker, the outcomes back to the driver, which writes and counts them.

What travels, and how often: the campaign's settings (its template library) once per worker, as a
worker plugin the scheduler also gives every worker that joins later; per block, the task (the
queries' text, their trace contexts and the campaign's key: a few hundred bytes a query whatever the
library) and its outcomes. The blocks cut between two waits go to the scheduler in one
message, and the outcomes that finished together come back in one request. Each task costs
the driver about six messages whatever its size, so blocks, not queries, bound its CPU.

What can go wrong, and what the campaign sees:

- a worker dies under a block: Dask runs the block again elsewhere; the driver hears it from
  the scheduler's ``remove-worker`` event, reads the lost worker's event log for the query that
  was running and emits :class:`~templ_pipeline.core.events.QueryResubmitted` for it (and, as
  ``result_lost``, for the block's queries that had finished there). A second loss under the same
  query (or Dask's ``KilledWorker``) makes it a ``worker_lost`` row, as on the local pool; the rest
  of its block runs again in a new task (``task_cancelled``);
- a query runs over its time limit (counted from its start on a worker, which the worker itself
  announces when the limit passes): a ``timeout`` row, its block is cancelled, the rest of the block
  runs again in a new task, and the scheduler is asked to restart the worker (a native embedding cannot
  be stopped otherwise). The driver does not wait for the restart: the other queries' results keep
  arriving and are written while the worker process is killed and its nanny starts a new one (a
  worker without a nanny is removed);
- the scheduler is lost, or has no worker for the worker timeout (at the start, or after
  every worker left): a fallback (``scheduler_lost``, ``no_workers``) and ``gone``; the
  campaign runs the queries in flight again on the local ladder.
"""

from __future__ import annotations

import concurrent.futures
import queue
import uuid
from concurrent.futures import CancelledError
from dataclasses import dataclass

from distributed import KilledWorker, as_completed

from templ_pipeline.campaign.dask_task import OVERDUE_TOPIC, TASK_PREFIX, CampaignSettingsPlugin, run_block
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
"""Blocks handed to the cluster per worker thread: one running, one waiting for the thread."""

BLOCK_QUERIES = 4
"""The most queries one task carries. Each task costs the driver about six messages (about 3 ms of its CPU
on a loaded 2-core machine), so four queries a task bring it under 2 ms a query; the queries go out
largest first, so the last blocks, which decide how long the cluster's threads wait at the end, are
the shortest. Fewer when there are fewer queries than threads to keep busy."""

RESTART_SECONDS = 30.0
"""How long the scheduler may take to kill a worker whose query ran over its time limit, and how long a
campaign that finished waits, at most, for the kills it asked for."""


@dataclass(eq=False)
class _Block:
    tasks: tuple[QueryTask, ...]
    future: object  # distributed.Future


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
        self._submitted: dict[str, _Block] = {}
        self._orphans: list[QueryTask] = []  # queries to submit again in new blocks
        self._dropped: dict[int, int] = {}  # query index -> times the scheduler dropped it
        self._losses: dict[int, int] = {}  # query index -> workers lost while it ran
        self._session: DaskSession | None = None
        self._watch: ClusterWatch | None = None
        self._stream: as_completed | None = None
        self._lost_workers: queue.SimpleQueue | None = None
        self._overdue: queue.SimpleQueue | None = None
        self._settings_ref: CampaignSettings | str = settings  # the plugin's key once installed
        self._plugin: str | None = None
        self._outbox: list[QueryTask] = []  # dispatched, sent in blocks with the next wait
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
        self._lost_workers = self._session.losses.listen()
        self._overdue = self._session.relay(OVERDUE_TOPIC).listen()

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

    def idle(self, ahead: bool = False) -> list[None]:
        """One slot per query the cluster may take now (a slot is a place, not a worker); its blocks already
        queue ahead, so ``ahead`` changes nothing."""
        if self.gone is not None:
            return []
        capacity = max(1, self.workers) * IN_FLIGHT_PER_THREAD * BLOCK_QUERIES
        in_flight = sum(len(block.tasks) for block in self._submitted.values()) + len(self._outbox)
        return [None] * max(0, capacity - in_flight)

    def starting(self) -> bool:
        """Workers come and go on their own; the campaign never waits for one to start here."""
        return False

    def dispatch(self, slot: None, task: QueryTask) -> bool:
        """Queue ``task`` for the scheduler (sent in a block at the next ``wait``); False when the client
        is closed (``wait`` finds out and says so)."""
        assert self._session is not None
        if self._session.client.status != "running":
            return False
        self._outbox.append(task)
        return True

    def _send(self) -> None:
        """The queued queries to the scheduler, in blocks, in one message; kept for the next wait when they
        cannot be sent."""
        assert self._session is not None and self._stream is not None
        if not self._outbox:
            return
        blocks = cut_blocks(self._outbox, max(1, self.workers) * IN_FLIGHT_PER_THREAD - len(self._submitted))
        keys = []
        for block in blocks:
            self._submissions += 1  # a key per submission: a block dropped by the scheduler is submitted anew
            keys.append(f"{TASK_PREFIX}-{block[0].index}-{self._run_id}-{self._submissions}")
        try:
            futures = self._session.client.map(run_block, [self._settings_ref] * len(blocks), blocks,
                                               [self._timeout] * len(blocks), key=keys, pure=False)
        except Exception:  # a closed client: the cluster check names the loss, the campaign runs them again
            return
        self._outbox.clear()
        for key, block, future in zip(keys, blocks, futures, strict=True):
            self._submitted[key] = _Block(block, future)
            self._stream.add(future)

    def wait(self, timeout: float) -> Arrivals:
        """Up to ``timeout`` seconds for finished queries; handle lost workers, late queries, a lost cluster."""
        arrivals = Arrivals()
        if self.gone is not None or self._stream is None:
            return arrivals
        self._send()
        done = arrived(self._stream, min(timeout, WAIT_SECONDS))
        self._handle_losses(arrivals)  # a loss is announced before the rerun's result
        results = self._session.gather(  # type: ignore[union-attr]
            future for future in done if future.key in self._submitted and future.status == "finished")
        fetched: dict[str, _Block] = {}
        for future in done:
            block = self._submitted.pop(future.key, None)
            if block is not None:
                finished = self._outcomes(block, results.get(future.key))
                arrivals.finished.extend(finished)
                if finished:
                    fetched[future.key] = block
            future.release()
        # fetching a result can take a while: what the scheduler announced meanwhile; a worker that died while
        # its finished result was being fetched means Dask computed that result again
        self._handle_losses(arrivals, fetched)
        self._handle_overdue(arrivals)
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
        if self._lost_workers is not None:
            session.losses.forget(self._lost_workers)
        if self._overdue is not None:
            session.relay(OVERDUE_TOPIC).forget(self._overdue)
        if submitted and session.client.status == "running":
            try:
                session.client.cancel([block.future for block in submitted])
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

    def _outcomes(self, block: _Block, fetched: list[QueryOutcome] | None) -> list[tuple[QueryTask, QueryOutcome]]:
        """The finished block's outcomes, ``fetched`` or asked for now (a failed task is a failed outcome per
        query, never an exception); the queries the scheduler dropped run again, here or, when the cluster is
        gone, on the local ladder."""
        try:
            outcomes = fetched or block.future.result(timeout=CLOSE_TIMEOUT)  # type: ignore[attr-defined]
        except KilledWorker as error:
            # Dask counts every loss of a worker the task was assigned to, also while it only waited there
            # behind another block: a query that never ran on a lost worker is submitted again
            given_up = []
            for task in block.tasks:
                if self._losses.get(task.index, 0) or not self._drop(task):
                    given_up.append(task)
            self._resubmitted(tuple(task for task in block.tasks if task not in given_up),
                              ResubmissionReason.TASK_CANCELLED, "")
            return [(task, self._worker_lost(task, f"Dask gave up on it after losing workers under it ({error})"))
                    for task in given_up]
        except (CancelledError, OSError, TimeoutError):
            return [(task, self._worker_lost(task, f"its Dask task was dropped {MAX_ATTEMPTS} times"))
                    for task in block.tasks if not self._drop(task)]
        except Exception as error:  # the task itself raised on its worker (its arguments broke)
            return [(task, failed(task.index, QueryFailureReason.ERROR,
                                  f"{type(error).__name__} on its Dask worker: {error}", smiles=task.smiles or ""))
                    for task in block.tasks]
        for outcome in outcomes:
            for event in outcome.events:
                if isinstance(event, (WorkersReduced, Fallback)):
                    self._emit(event)  # the worker's thread reductions and fallbacks, counted here, once
            outcome.events = []
        return list(zip(block.tasks, outcomes, strict=True))

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

    def _handle_losses(self, arrivals: Arrivals, fetched: dict[str, _Block] | None = None) -> None:
        """The scheduler's worker losses: blocks in flight run again (or their running query fails); ``fetched``
        ones (their result arrived after Dask computed it again) are only counted."""
        for message in drain(self._lost_workers) if self._lost_workers is not None else ():
            worker = str(message.get("worker", ""))
            for field, reason in RESUBMIT_REASONS.items():
                for key in sorted(map(str, message.get(field, ()))):
                    block = self._submitted.get(key)
                    if block is not None and reason == ResubmissionReason.WORKER_LOST:
                        self._lost(key, block, worker, arrivals)
                    elif block is not None:  # its finished result went with the worker: Dask computes it again
                        self._resubmitted(block.tasks, reason, worker)
                    elif fetched and key in fetched and reason == ResubmissionReason.RESULT_LOST:
                        self._resubmitted(fetched[key].tasks, reason, worker)

    def _lost(self, key: str, block: _Block, worker: str, arrivals: Arrivals) -> None:
        """The worker running ``block`` left: Dask runs the block again, and the query that was running there
        has had one loss; a second fails it, and the rest of the block runs again in a new task.

        A block only queued on that worker (the scheduler hands a one-thread worker two) never started
        there: Dask gives it to another worker, and nothing is counted.
        """
        running = self._running_on(worker, key)
        at = next((at for at, task in enumerate(block.tasks) if task.index == running), None)
        if at is None:
            return
        task = block.tasks[at]
        self._losses[task.index] = self._losses.get(task.index, 0) + 1
        if self._losses[task.index] < MAX_ATTEMPTS:
            self._emit(QueryResubmitted(ExecutorKind.DASK, task.index, ResubmissionReason.WORKER_LOST, worker))
            self._resubmitted(block.tasks[:at], ResubmissionReason.RESULT_LOST, worker)
            return
        self._end_in_block(key, task, self._worker_lost(task, f"Dask worker {worker} was lost under it"), worker,
                           arrivals)

    def _running_on(self, worker: str, key: str) -> int | None:
        """The query of block ``key`` that last started on ``worker``, from the worker's event log on the
        scheduler (one bounded round trip, only when a worker is lost); None when none started there, or
        when the log does not come in time (the block then runs again without a loss counted)."""
        for _, message in reversed(self._session.events(worker)):  # type: ignore[union-attr]
            if isinstance(message, dict) and message.get("key") == key and "index" in message:
                return int(message["index"])
        return None

    def _handle_overdue(self, arrivals: Arrivals) -> None:
        """Queries a worker announced still running at their time limit: a ``timeout`` row each, their block
        cancelled and run again without them, their worker restarted."""
        for message in drain(self._overdue) if self._overdue is not None else ():
            key = str(message.get("key"))
            block = self._submitted.get(key)
            index = message.get("index")
            task = next((task for task in block.tasks if task.index == index), None) if block is not None else None
            if block is None or task is None:  # it finished, or was cancelled, meanwhile
                continue
            worker, seconds = str(message.get("worker", "")), float(message.get("seconds", 0.0))
            self._end_in_block(key, task, failed(
                task.index, QueryFailureReason.TIMEOUT,
                f"still running after {seconds:.1f} s (limit {self._timeout or 0:g} s) on Dask worker {worker}; "
                "its task was cancelled and its worker restarted", smiles=task.smiles or "", seconds=seconds),
                worker, arrivals)
            self._restart(worker, key)

    def _end_in_block(self, key: str, ended: QueryTask, outcome: QueryOutcome, worker: str,
                      arrivals: Arrivals) -> None:
        """``ended`` gets ``outcome``; its block ``key`` is cancelled and the rest of it runs again in a new task
        (each such end ends one query for good, so requeueing cannot go on forever)."""
        block = self._submitted.pop(key)
        self._cancel(block)
        arrivals.finished.append((ended, outcome))
        rest = tuple(task for task in block.tasks if task is not ended)
        self._resubmitted(rest, ResubmissionReason.TASK_CANCELLED, worker)
        self._orphans.extend(rest)

    def _resubmitted(self, tasks: tuple[QueryTask, ...], reason: ResubmissionReason, worker: str) -> None:
        for task in tasks:
            self._emit(QueryResubmitted(ExecutorKind.DASK, task.index, reason, worker))

    def _cancel(self, block: _Block) -> None:
        try:
            block.future.cancel()  # type: ignore[attr-defined]
        except Exception:  # the client is closing: the task goes with it
            pass

    def _restart(self, worker: str, cancelled: str) -> None:
        """Ask the scheduler to restart the worker stuck in a query, once it has let the query's cancelled
        task go (else it would hand it to another worker), without waiting: the campaign goes on."""
        if not worker or self._session is None:
            return
        restart = self._session.restart([worker], RESTART_SECONDS, cancelled=[cancelled])
        if restart is not None:
            self._restarts.append(restart)

    def _give_up(self, failure: DaskFailure) -> None:
        """The cluster cannot run the campaign: a fallback to the local ladder, and ``gone``."""
        where = self._address or "a LocalCluster"
        detail = f"Dask ({where}): {failure.error}; the campaign goes on locally"
        self.gone = Fallback(ExecutorKind.DASK, ExecutorKind.PROCESS, failure.reason, FallbackCause.NONE, detail,
                             failure.error)
        self._emit(self.gone)


def cut_blocks(tasks: list[QueryTask], free: int) -> list[tuple[QueryTask, ...]]:
    """``tasks`` in order, cut into blocks of at most ``BLOCK_QUERIES``, of even sizes, and into at least
    ``free`` blocks (the blocks the cluster's threads may take now) when there are that many tasks, so that
    a few queries are spread over the threads rather than queued on one."""
    count = max(-(-len(tasks) // BLOCK_QUERIES), min(len(tasks), free))
    size = -(-len(tasks) // count) if count else 1
    return [tuple(tasks[start:start + size]) for start in range(0, len(tasks), size)]
