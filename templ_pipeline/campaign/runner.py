"""A screening campaign: queries streamed to process workers, one result yielded per query as it finishes.

:func:`screen` is the Python entry point (``templ screen`` writes what it yields).
Queries are read lazily and only as many are in flight as there are workers, so
a library of millions of ligands is never held in memory. Workers are sized for
the work (no more than the CPUs this process may use, no more than the queries
left), then granted from the kernel's limits for task type ``screening``: a
process whose RDKit embeds on one thread, so a node never runs processes times
RDKit threads.

The ladder is the executor's: with ``executor="dask"`` a Dask cluster first
(:class:`~templ_pipeline.campaign.dask_pool.DaskQueryPool`: each query a task; an
unreachable, lost or worker-less cluster is a fallback and the queries in flight run
again below), then process workers, fewer when some cannot start or a replacement
is refused, and this process when none is left. Every rung runs a query with the
same code (:class:`~templ_pipeline.campaign.task.QueryRunner`), so the results never
depend on the rung. Each query has its own span under the
campaign span, and its worker's conformer and scoring spans under it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from rdkit import Chem

from templ_pipeline.campaign.dispatch_order import TAIL_PER_WORKER, LargestFirst, isomers_embedded
from templ_pipeline.campaign.pool import SWEEP_SECONDS, NoWorkers, QueryPool, retry_first
from templ_pipeline.campaign.queries import QueryRecord
from templ_pipeline.campaign.task import (
    CampaignSettings,
    QueryOutcome,
    QueryRunner,
    QueryTask,
    TemplateResult,
    failed,
)
from templ_pipeline.core.batch import mol_to_bytes
from templ_pipeline.core.conformers import DEFAULT_SEED
from templ_pipeline.core.embedding import DEFAULT_PRUNE_RMS
from templ_pipeline.core.events import (
    CampaignDone,
    CampaignStarted,
    Emitter,
    ExecutorCreated,
    ExecutorKind,
    Fallback,
    Observer,
    PreparationAction,
    QueryFailureReason,
    QueryFinished,
    QueryPrepared,
    QueryStarted,
    QueryStatus,
    TaskType,
    TemplatesChosen,
    cause_of,
    no_room_reason,
    process_observers,
    reported,
)
from templ_pipeline.core.executor import validate_executor
from templ_pipeline.core.grants import Grant, grant_for_work, observe_limits, release_grant
from templ_pipeline.core.native_call import call_interruptibly
from templ_pipeline.core.preparation import PreparationOptions
from templ_pipeline.core.scoring import METRICS
from templ_pipeline.core.template_choice import ChoiceOptions
from templ_pipeline.core.template_library import TemplateLibrary, record_name, template_names

DEFAULT_QUERY_TIMEOUT = 600.0
"""Seconds one query may take. Conformer generation of large flexible ligands takes 15-35 s
here for 200 conformers (a PROTAC, an octapeptide, erythromycin); a query still running after
ten minutes is stuck in ETKDG, and its worker is ended so that the campaign goes on."""

WAIT_SECONDS = SWEEP_SECONDS
"""The longest the campaign waits for results at a time. A wait ends at once on a result, a worker's exit
(its sentinel), a query's or a start's deadline, or a signal (SIGINT and SIGTERM raise), so the bound only paces
the pool's liveness sweep, and is its period. At 0.5 s, the wake-ups with nothing to do cost a
campaign's parent about 150 us of CPU each on its cold caches: 2 of the 38 ms the bench library's 24
queries took it."""

LIMITS_SECONDS = 5.0
"""How often, at most, the thread limits are read and reported during a campaign. A reading
costs the parent about 0.6 ms of CPU here; once per query that was a third of all it spent per
query, and a scrape every 15 s or more sees a 5 s old reading at worst."""

TASK_TYPE = TaskType.SCREENING

if TYPE_CHECKING:  # Dask is an extra: imported only when a campaign runs on it
    from templ_pipeline.campaign.dask_pool import DaskQueryPool


@dataclass(frozen=True, slots=True)
class ScreenOptions:
    """How every query of a campaign is run."""

    num_conformers: int = 200
    seed: int = DEFAULT_SEED
    workers: int = 1
    metric: str = "combo"
    query_timeout: float | None = DEFAULT_QUERY_TIMEOUT
    use_input_conformers: bool = False
    exact_workers: bool = False
    preparation: PreparationOptions = PreparationOptions()
    executor: str = "auto"  # auto / process: the local ladder; dask: a Dask cluster on top of it
    scheduler: str | None = None  # the Dask scheduler (default $DASK_SCHEDULER_ADDRESS, else a LocalCluster)
    worker_timeout: float | None = None  # seconds without a Dask worker before going on locally
    choice: ChoiceOptions = ChoiceOptions()  # how each query's templates are chosen (top=None: all, free ETKDG)
    align: bool = True  # False: pinned poses are scored where they were made (--keep-pinned-pose)
    poses_per_query: int = 1  # distinct poses kept per prepared molecule (and template)
    prune_rms: float = DEFAULT_PRUNE_RMS  # A: ETKDG's RMSD pruning (--prune-rms; 0: off)

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"unknown metric {self.metric!r}: choose one of {', '.join(METRICS)}")
        if self.num_conformers < 1:
            raise ValueError(f"num_conformers must be at least 1, got {self.num_conformers}")
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")
        if self.prune_rms < 0:
            raise ValueError(f"prune_rms must be 0 (off) or more, got {self.prune_rms}")
        validate_executor(self.executor, self.scheduler)


@dataclass(frozen=True, slots=True)
class QueryResult:
    """One query's result: its record, what its worker found, and the rung that ran it."""

    record: QueryRecord
    outcome: QueryOutcome
    kind: ExecutorKind
    conformers_requested: int

    @property
    def query_id(self) -> str:
        return self.record.query_id

    @property
    def ok(self) -> bool:
        return self.outcome.status == QueryStatus.OK

    def best(self, metric: str) -> TemplateResult | None:
        """The best template's result by ``metric`` (None when the query failed)."""
        return self.outcome.best(metric)

    def pose(self, result: TemplateResult) -> Chem.Mol | None:
        """The query with ``result``'s best conformer aligned onto its template, with its properties
        (None when that template scored no conformer)."""
        if not result.record:
            return None
        supplier = Chem.SDMolSupplier()
        supplier.SetData(result.record, removeHs=False)
        return next(iter(supplier), None)


def as_library(templates: TemplateLibrary | Sequence[Chem.Mol]) -> TemplateLibrary:
    """``templates`` as a library (a list of molecules: records 1, 2, ... named as :func:`template_names`)."""
    if isinstance(templates, TemplateLibrary):
        return templates
    return TemplateLibrary([Chem.Mol(t, confId=t.GetConformer().GetId()) for t in templates],
                           template_names(templates))


def templates_digest(templates: TemplateLibrary | Sequence[Chem.Mol]) -> str:
    """A digest of the templates' molecules and poses: a resumed campaign must use the same ones."""
    digest = hashlib.sha256()
    for mol in (templates.mols if isinstance(templates, TemplateLibrary) else templates):
        digest.update(Chem.MolToMolBlock(mol).encode())
    return digest.hexdigest()


def as_records(queries: Iterable[QueryRecord | str | Chem.Mol]) -> Iterator[QueryRecord]:
    """Queries given as records, SMILES or molecules, as records (ids ``query_<n>`` where none is given)."""
    for number, query in enumerate(queries, start=1):
        if isinstance(query, QueryRecord):
            yield query
        elif isinstance(query, Chem.Mol):
            yield QueryRecord(number, record_name(query) or f"query_{number}", None, (Chem.MolToMolBlock(query),))
        else:
            yield QueryRecord(number, f"query_{number}", str(query), ())


def campaign_settings(library: TemplateLibrary, options: ScreenOptions) -> CampaignSettings:
    """What every worker of a campaign against ``library`` receives once: the templates and the options a query
    needs."""
    return CampaignSettings(tuple(mol_to_bytes(mol) for mol in library.mols), tuple(library.names),
                            options.num_conformers, options.seed, options.metric, options.use_input_conformers,
                            options.preparation, choice=options.choice, align=options.align,
                            template_records=tuple(library.records), poses_per_query=options.poses_per_query,
                            prune_rms=options.prune_rms)


def screen(
    queries: Iterable[QueryRecord | str | Chem.Mol],
    templates: TemplateLibrary | Sequence[Chem.Mol],
    options: ScreenOptions = ScreenOptions(),
    *,
    total: int | None = None,
    skipped: int = 0,
    observers: Sequence[Observer] = (),
) -> Iterator[QueryResult]:
    """Run every query against ``templates``; yield one :class:`QueryResult` per query, as each finishes.

    ``templates`` is a :class:`~templ_pipeline.core.template_library.TemplateLibrary` (or a list of template
    molecules): each query's templates are chosen from it as ``options.choice`` says. ``queries`` may be
    ``QueryRecord``s (from :func:`~templ_pipeline.campaign.queries.read_queries`),
    SMILES strings or RDKit molecules, and is read lazily. ``total`` (the queries
    to run, when known) sizes the workers; ``skipped`` says how many of the input's
    an earlier run did (progress counts both). Results come in the order queries finish. Closing the
    generator, or an exception in it (such as an interrupt), ends the workers at
    once: queries in flight are abandoned, never half-reported.
    """
    if not len(templates):
        raise ValueError("screen needs at least one template")
    emit = Emitter((*process_observers(), *observers))
    library = as_library(templates)
    campaign = _Campaign(campaign_settings(library, options), options, emit)
    whole = None if total is None else total + skipped  # the input's size, as progress and alerts count it

    def done(error: BaseException | None) -> CampaignDone:
        # a signal, or the caller that stopped reading (GeneratorExit), ends it early: not an error
        return CampaignDone(campaign.done, campaign.ok, campaign.done - campaign.ok,
                            time.monotonic() - campaign.started, not campaign.finished, campaign.workers,
                            error if isinstance(error, Exception) else None)

    with reported(emit, CampaignStarted(whole, skipped, len(templates), options.workers), done):
        yield from campaign.run(as_records(queries), total)


_Slot = TypeVar("_Slot")


class _Dispatching(Protocol[_Slot]):
    """What the dispatch loop needs of a pool: its idle places (workers, or Dask slots) and a hand-off."""

    def idle(self, ahead: bool = False) -> list[_Slot]: ...

    def dispatch(self, slot: _Slot, task: QueryTask) -> bool: ...

    def starting(self) -> bool: ...


class _Campaign:
    """The dispatch loop of one campaign: its pool (or this process), queries in flight, counts."""

    def __init__(self, settings: CampaignSettings, options: ScreenOptions, emit: Emitter) -> None:
        self._settings = settings
        self._options = options
        self._emit = emit
        self._retry: deque[QueryTask] = deque()
        self._in_flight: dict[int, tuple[QueryRecord, dict[str, str]]] = {}  # index -> (record, trace carrier)
        self._records: Iterator[QueryRecord] | None = None
        self._index = 0
        self.workers = 0
        self.done = self.ok = 0
        self.finished = False
        self.started = time.monotonic()
        self._limits_seen = 0.0

    def run(self, records: Iterator[QueryRecord], total: int | None) -> Iterator[QueryResult]:
        self._records = records
        pool: QueryPool | DaskQueryPool | None = None
        if self._options.executor == "dask":
            pool = self._start_dask(total)
        if pool is None:
            pool = self._start_pool(total)
        if pool is not None and pool.workers > 1:
            # the largest of the next few first, the last few by work
            self._records = LargestFirst(records, isomers=partial(isomers_embedded, options=self._options.preparation),
                                         tail=TAIL_PER_WORKER * pool.workers)
        try:
            while pool is not None:
                if not self._fill(pool):
                    break
                yield from self._collect(pool)
                if pool.gone is not None:
                    pool.shutdown(terminate=True)
                    self._requeue_in_flight()
                    left = None if total is None else max(0, total - self.done)
                    pool = self._start_pool(left) if pool.kind == ExecutorKind.DASK else None
            if pool is None:
                yield from self._run_here()
            self.finished = True
        finally:
            if pool is not None:
                pool.shutdown(terminate=not self.finished)

    # --- the pool rung ----------------------------------------------------------------------------

    def _start_pool(self, total: int | None) -> QueryPool | None:
        """Size, grant and start the workers; None when the campaign runs in this process."""
        if total == 0:
            return None  # nothing left to run (a finished campaign resumed): no worker to start
        # even one worker is a process: it can be ended when its query runs over the time limit,
        # and a query that crashes RDKit takes only its worker down
        grant = self._grant(total, ExecutorKind.PROCESS, ExecutorKind.PROCESS, ExecutorKind.SEQUENTIAL)
        if grant is None:
            return None
        try:
            pool = QueryPool(grant.granted, self._settings, self._emit, query_timeout=self._options.query_timeout)
            try:
                pool.start()
            except NoWorkers:
                return None
        finally:
            release_grant(grant)
        self.workers = pool.workers
        self._emit(ExecutorCreated(ExecutorKind.PROCESS, pool.workers, TASK_TYPE, False))
        return pool

    def _grant(self, total: int | None, cost: str, from_kind: ExecutorKind, to_kind: ExecutorKind) -> Grant | None:
        """Workers sized for the work, then granted from the limits at what a ``cost`` worker costs, each cut an
        event; None, after a fallback ``from_kind -> to_kind``, when no worker fits. The caller releases it."""
        # even one worker is a process, and costs tasks like any other
        work = grant_for_work(self._options.workers, TASK_TYPE, cost, exact_workers=self._options.exact_workers,
                              queries=total, one_starts_a_worker=True)
        for event in work.events:
            self._emit(event)
        grant = work.grant
        if grant.granted >= 1:
            return grant
        release_grant(grant)
        self._emit(Fallback(from_kind, to_kind, no_room_reason(grant.reason), cause_of(grant.reason), grant.detail))
        return None

    def _start_dask(self, total: int | None) -> DaskQueryPool | None:
        """Connect to the scheduler (or start a LocalCluster sized as its processes cost) and wait for a
        worker; None when the campaign goes on locally (the fallback says why)."""
        from templ_pipeline.campaign.dask_pool import DaskQueryPool
        from templ_pipeline.core.dask_backend import scheduler_address

        options = self._options
        if total == 0:
            return None
        address = scheduler_address(options.scheduler)
        grant = None
        if address is None:  # a LocalCluster: its nannies, worker processes and event loops, granted here
            grant = self._grant(total, ExecutorKind.DASK, ExecutorKind.DASK, ExecutorKind.PROCESS)
            if grant is None:
                return None
        settings = self._settings
        if grant is not None:  # the LocalCluster's workers share this machine's CPUs
            from templ_pipeline.core.limits.cpu import read_cpu_budget

            cpus = read_cpu_budget().cpus or 1
            settings = dataclasses.replace(settings, query_threads=max(1, cpus // max(1, grant.granted)))
        pool = DaskQueryPool(address, settings, self._emit, query_timeout=options.query_timeout,
                             wait_for_workers=options.worker_timeout,
                             local_workers=grant.granted if grant is not None else 1)
        try:
            pool.start()
        except NoWorkers:
            return None
        finally:
            if grant is not None:
                release_grant(grant)
        self.workers = pool.workers
        self._emit(ExecutorCreated(ExecutorKind.DASK, pool.workers, TASK_TYPE, pool.reused))
        return pool

    def _fill(self, pool: _Dispatching[Any]) -> bool:
        """Give each idle worker (or free Dask slot) a query, and each process worker its next few outside the
        campaign's tail (where the last queries go to whichever worker is free); False when nothing is left to
        run or to wait for."""
        for ahead in (False, True):
            for worker in pool.idle(ahead=ahead):
                if ahead and isinstance(self._records, LargestFirst) and self._records.in_tail():
                    break
                task = self._next_task()
                if task is None:  # nothing left to hand out: wait for what is in flight, not for a worker starting
                    return bool(self._in_flight)
                if not pool.dispatch(worker, task):
                    self._retry.appendleft(task)  # the worker is gone; wait() finds it and replaces it
        return bool(self._in_flight) or pool.starting()

    def _collect(self, pool: QueryPool | DaskQueryPool) -> Iterator[QueryResult]:
        arrivals = pool.wait(WAIT_SECONDS)
        retry_first(arrivals.retry, self._retry)
        # no longer in flight: the queries started next (the freed workers get theirs before these are written)
        # count without them
        landed = [(task.index, self._in_flight.pop(task.index)[0], outcome) for task, outcome in arrivals.finished]
        if landed and pool.gone is None:
            self._fill(pool)  # the freed workers get their next query first (a Dask one leaves at the next wait)
        for index, record, outcome in landed:
            yield self._finish(index, record, outcome, pool.kind)
        if arrivals.finished:
            self._observe_limits(f"{len(self._in_flight)} queries in flight on {pool.workers} workers")

    def _requeue_in_flight(self) -> None:
        """Queries that were on the last workers run again here (their spans go on)."""
        queued = {task.index for task in self._retry}
        retry_first([self._task(index, *self._in_flight[index]) for index in self._in_flight if index not in queued],
                    self._retry)

    # --- the sequential rung ----------------------------------------------------------------------

    def _run_here(self) -> Iterator[QueryResult]:
        """The rest of the campaign in this process (no process could start)."""
        runner = QueryRunner(self._settings)
        limit = self._options.query_timeout
        self.workers = max(self.workers, 1)
        while (task := self._next_task()) is not None:
            outcome = call_interruptibly(lambda: runner.run(task), name="templ-query")
            if limit and outcome.seconds > limit:
                # nothing can end a native embedding in this process; the outcome is still a timeout, as
                # it is on a worker, so the campaign's rows do not depend on the rung that ran it
                outcome = failed(task.index, QueryFailureReason.TIMEOUT,
                                 f"took {outcome.seconds:.1f} s (limit {limit:g} s), in this process",
                                 smiles=outcome.smiles, seconds=outcome.seconds)
            yield self._finish(task.index, self._in_flight.pop(task.index)[0], outcome, ExecutorKind.SEQUENTIAL)
            self._observe_limits("after a query run in this process")

    # --- shared -----------------------------------------------------------------------------------

    def _observe_limits(self, context: str) -> None:
        now = time.monotonic()
        if now - self._limits_seen >= LIMITS_SECONDS:
            self._limits_seen = now
            observe_limits(self._emit, context)

    def _next_task(self) -> QueryTask | None:
        if self._retry:
            return self._retry.popleft()
        record = next(self._records, None) if self._records is not None else None
        if record is None:
            return None
        index, self._index = self._index, self._index + 1
        started = QueryStarted(index, len(self._in_flight) + 1)
        self._emit(started)  # a tracing observer puts the query span's traceparent in started.carrier
        self._in_flight[index] = (record, started.carrier)
        return self._task(index, record, started.carrier)

    def _task(self, index: int, record: QueryRecord, carrier: dict[str, str]) -> QueryTask:
        return QueryTask(index, record.query_id, record.smiles, record.molblocks, carrier)

    def _finish(self, index: int, record: QueryRecord, outcome: QueryOutcome, kind: ExecutorKind) -> QueryResult:
        """The result of query ``index`` (no longer in flight), its events emitted."""
        options = self._options
        chosen_isomer, best = outcome.best_isomer(options.metric)
        scored = sum(result.scored for result in outcome.templates)
        failures = sum(result.failed for result in outcome.templates)
        stages, outcome.stages = tuple(outcome.stages), []
        self.done += 1
        self.ok += outcome.status == QueryStatus.OK
        requested = self._settings.conformers_requested(record.molblocks)
        if outcome.isomers or outcome.actions:  # it was read and prepared (or refused by preparation)
            self._emit(QueryPrepared(record.query_id, outcome.smiles, tuple(i.smiles for i in outcome.isomers),
                                     outcome.stereoisomers_possible, outcome.removed,
                                     tuple(PreparationAction(a) for a in outcome.actions),
                                     requested * len(outcome.isomers), outcome.conformers,
                                     "; ".join(outcome.warnings)))
        if chosen_isomer is not None and best is not None and best.choice is not None:
            choice = best.choice
            self._emit(TemplatesChosen(record.query_id, len(self._settings.templates), len(chosen_isomer.templates),
                                       self._settings.template_names[best.template], choice.similarity,
                                       choice.core_atoms, choice.core_smarts, choice.method, choice.fallback,
                                       choice.pinned_atoms, sum(i.mcs_timeouts for i in outcome.isomers),
                                       sum(i.choice_seconds for i in outcome.isomers)))
        # conformers asked and made over all the query's stereoisomers, so a shortfall of one isomer shows
        self._emit(QueryFinished(record.query_id, kind, outcome.status, outcome.reason, outcome.seconds,
                                 requested * max(1, len(outcome.isomers)), outcome.conformers,
                                 best.scored if best else scored,
                                 best.failed if best else failures, len(self._in_flight), outcome.detail, index,
                                 stages))
        return QueryResult(record, outcome, kind, requested)

