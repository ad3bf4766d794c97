"""Shape and colour scoring of ligand conformers against a template ligand.

``score_and_align`` and ``select_best`` have the TEMPL API's names and signatures. The work runs
in batches (``templ_pipeline.core.batch``) on an executor chosen by the monitored
executor factory (``templ_pipeline.core.executor.get_executor``). Results never depend on the
executor: every score is computed from double-precision coordinates and ranking breaks ties by conformer id.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from rdkit import Chem
from rdkit.Chem import rdShapeAlign

from templ_pipeline.core.batch import (
    BatchResult,
    BatchTask,
    ConformerFailure,
    ConformerScore,
    batch_query,
    has_coordinates,
    mol_to_bytes,
    sanitized_copy_without_conformers,
    split_usable,
)
from templ_pipeline.core.best_pose import best_conformer
from templ_pipeline.core.events import (
    BatchResubmitted,
    CallDone,
    Emitter,
    ExecutorCreated,
    ExecutorEvent,
    ExecutorKind,
    FailureReason,
    Fallback,
    Observer,
    SelectBestFinished,
    SelectBestStarted,
    WorkersReduced,
    process_observers,
    reported,
    values,
)
from templ_pipeline.core.executor import get_executor, validate_executor
from templ_pipeline.core.trace_context import current_carrier
from templ_pipeline.core.vocabulary import Metric

METRICS: tuple[str, ...] = values(Metric)

Scores = dict[str, float]
BestPoses = dict[str, tuple[Chem.Mol | None, Scores]]
RankedPoses = list[tuple[int, Scores, Chem.Mol]]

# Batch sizing. A batch is the unit of work sent to a worker and the unit that is
# traced, timed and (after a broken pool) re-run. One alignment of a drug-like
# ligand takes 2-8 ms here, while sending a batch to a process worker and back
# costs about a millisecond whatever its size. So:
# - at least MIN_BATCH conformers, so the round trip stays a small share of the work;
# - about BATCHES_PER_WORKER batches per worker, so a slow batch or a worker that
#   dies late costs little and the progress bar moves;
# - at most MAX_BATCH conformers, so a batch lasts well under a second.
MIN_BATCH = 4
MAX_BATCH = 50
BATCHES_PER_WORKER = 4


def choose_batch_size(n_conformers: int, n_workers: int) -> int:
    """Conformers per batch for ``n_conformers`` spread over ``n_workers`` workers."""
    if n_conformers <= 0:
        return MIN_BATCH
    per_batch = math.ceil(n_conformers / (max(1, n_workers) * BATCHES_PER_WORKER))
    return max(MIN_BATCH, min(MAX_BATCH, per_batch))


@dataclass
class SelectionReport:
    """Accounting of one ``select_best`` call: every conformer is scored or failed.

    It observes the executor's events (it is passed to it as an observer): the
    reductions, fallbacks and resubmissions are the typed events themselves.
    """

    n_conformers: int
    n_scored: int = 0
    failures: list[ConformerFailure] = field(default_factory=list)
    n_batches: int = 0
    batch_size: int = 0
    workers_requested: int = 1
    workers_granted: int = 1
    executor_kinds: list[ExecutorKind] = field(default_factory=list)
    fallbacks: list[Fallback] = field(default_factory=list)
    reductions: list[WorkersReduced] = field(default_factory=list)
    resubmissions: list[BatchResubmitted] = field(default_factory=list)
    duration_seconds: float = 0.0

    def __call__(self, event: ExecutorEvent) -> None:
        """Collect what the report keeps of the executor's ``event``."""
        if isinstance(event, Fallback):
            self.fallbacks.append(event)
        elif isinstance(event, WorkersReduced):
            self.reductions.append(event)
        elif isinstance(event, BatchResubmitted):
            self.resubmissions.append(event)
        elif isinstance(event, ExecutorCreated) and event.kind == ExecutorKind.DASK:
            self.workers_granted = event.workers  # the cluster's own size, known once it is connected
        elif isinstance(event, CallDone):
            self.executor_kinds = list(event.kinds)

    @property
    def n_failed(self) -> int:
        return len(self.failures)

    @property
    def failed_by_reason(self) -> dict[str, int]:
        return dict(Counter(f.reason for f in self.failures))

    @property
    def conformers_per_second(self) -> float:
        return self.n_conformers / self.duration_seconds if self.duration_seconds > 0 else 0.0


@dataclass
class Selection:
    """What one call produced: the scored conformers, best first, and the report.

    Poses (molecule copies) are built only for what is asked: three for ``best``,
    all of them for ``ranked``.
    """

    ordered: list[ConformerScore]
    report: SelectionReport
    query: Chem.Mol
    no_realign: bool = False

    @cached_property
    def best(self) -> BestPoses:
        """The TEMPL API's shape: the best pose per metric; (None, -1 scores) when nothing scored."""
        best: BestPoses = {m: (None, {"shape": -1.0, "color": -1.0, "combo": -1.0}) for m in METRICS}
        for metric in METRICS:
            top = best_conformer(self.ordered, metric)
            if top is not None:
                best[metric] = (self._pose(top), top.scores())
        return best

    @cached_property
    def ranked(self) -> RankedPoses:
        """All scored poses as ``(conf_id, scores, mol)``, best first."""
        return [(item.conf_id, item.scores(), self._pose(item)) for item in self.ordered]

    def _pose(self, item: ConformerScore) -> Chem.Mol:
        """A single-conformer copy of the query holding the input or the aligned pose."""
        pose = Chem.Mol(self.query, confId=item.conf_id)
        if not self.no_realign:
            pose.GetConformer(item.conf_id).SetPositions(item.positions)
        return pose


def score_and_align(conf: Chem.Mol, tpl: Chem.Mol) -> tuple[Scores, Chem.Mol]:
    """Align a copy of ``conf`` onto ``tpl``; return its scores and the aligned copy.

    ``combo`` is the mean of the shape and colour Tanimoto scores.
    """
    if conf is None or tpl is None:
        raise ValueError("score_and_align needs a conformer and a template, got None")
    aligned = Chem.Mol(conf)
    shape, color = rdShapeAlign.AlignMol(tpl, aligned, useColors=True)
    return {"shape": shape, "color": color, "combo": 0.5 * (shape + color)}, aligned


def select_best(
    confs: Chem.Mol,
    tpl: Chem.Mol,
    no_realign: bool = False,
    n_workers: int = 1,
    return_all_ranked: bool = False,
    align_metric: str = "combo",
    *,
    executor: str = "auto",
    scheduler: str | None = None,
    exact_workers: bool = False,
) -> BestPoses | RankedPoses:
    """Best pose per metric (default) or all poses ranked by ``align_metric``.

    Returns ``{"shape"|"color"|"combo": (mol, scores)}``, or with
    ``return_all_ranked=True`` a list of ``(conf_id, scores, mol)``, best first.
    With ``no_realign=True`` the poses are the input coordinates, not the aligned
    ones. ``executor="dask"`` scores on the Dask scheduler at ``scheduler`` (default
    ``$DASK_SCHEDULER_ADDRESS``, else a LocalCluster of ``n_workers``); the results are
    the same. ``n_workers`` is a request: work too small to repay a cold pool runs
    here, and no more workers start than there are CPUs, unless ``exact_workers``.
    Use ``select_best_with_report`` to also get the per-conformer accounting.
    """
    selection = select_best_with_report(
        confs, tpl, no_realign=no_realign, n_workers=n_workers, align_metric=align_metric,
        executor=executor, scheduler=scheduler, exact_workers=exact_workers,
    )
    return selection.ranked if return_all_ranked else selection.best


def select_best_with_report(
    confs: Chem.Mol,
    tpl: Chem.Mol,
    *,
    no_realign: bool = False,
    n_workers: int = 1,
    align_metric: str = "combo",
    on_batch: Callable[[BatchResult], Any] | None = None,
    executor: str = "auto",
    scheduler: str | None = None,
    observers: Sequence[Observer] = (),
    exact_workers: bool = False,
    worker_timeout: float | None = None,
    align: bool = True,
) -> Selection:
    """``select_best`` with a ``SelectionReport``; ``on_batch`` sees each finished batch and
    ``observers`` every executor event (after the process's observers and the report have), and the call's
    start and end (``SelectBestStarted``, ``SelectBestFinished``).

    Work too small to repay a cold pool is scored here, and no more workers start
    than the CPUs this process may use (each a recorded reduction), unless
    ``exact_workers`` (:mod:`templ_pipeline.core.sizing`). With ``executor="dask"``, a
    scheduler without a worker for ``worker_timeout`` seconds is a ``no_workers``
    fallback to the local ladder. ``align=False`` scores each conformer where it is (a pose pinned on the
    template's core, :mod:`templ_pipeline.core.pinning`) instead of aligning it onto the template.
    """
    return select_best_each([ScoringPart(confs, tpl, align)], no_realign=no_realign, n_workers=n_workers,
                            align_metric=align_metric, on_batch=on_batch, executor=executor, scheduler=scheduler,
                            observers=observers, exact_workers=exact_workers, worker_timeout=worker_timeout)[0]


@dataclass(frozen=True, slots=True)
class ScoringPart:
    """One template's share of a call: conformers to score against it, aligned onto it first or not."""

    confs: Chem.Mol
    template: Chem.Mol
    align: bool = True


CALL_CONFORMERS = 20_000
"""Conformers of one :func:`select_best_each` call at most, as :func:`part_groups` groups its parts: a call makes
every batch's molecule before it runs (62 kB per 50 conformers of a drug-like ligand, measured here), so a
query scored against every template of a library of 10,000 would hold 2.5 GB at once; in groups of 20,000
conformers it holds about 25 MB, and each group's call reuses the pool the first one started."""


def part_groups(parts: Sequence[ScoringPart], limit: int = CALL_CONFORMERS) -> list[list[ScoringPart]]:
    """``parts`` in order, in groups of at most ``limit`` conformers (a larger part alone)."""
    groups: list[list[ScoringPart]] = []
    size = 0
    for part in parts:
        count = part.confs.GetNumConformers()
        if not groups or size + count > limit:
            groups.append([])
            size = 0
        groups[-1].append(part)
        size += count
    return groups


def select_best_each(
    parts: Sequence[ScoringPart],
    *,
    no_realign: bool = False,
    n_workers: int = 1,
    align_metric: str = "combo",
    on_batch: Callable[[BatchResult], Any] | None = None,
    executor: str = "auto",
    scheduler: str | None = None,
    observers: Sequence[Observer] = (),
    exact_workers: bool = False,
    worker_timeout: float | None = None,
) -> list[Selection]:
    """:func:`select_best_with_report` of each part, as one call: one executor sized for all their conformers,
    one ``SelectBestStarted`` and ``SelectBestFinished``, and the same scores as one call per part.

    A query posed against its K templates is then one scoring call in the telemetry and the sizing, not
    K (telemetry is per query, never per template). Every batch is made before the call runs: for thousands of
    templates, call it on :func:`part_groups`. Each part's report has its own conformers, scores,
    failures and batches, the call's workers and executor kinds, and its share of the call's time (by
    conformers); the call's reductions, fallbacks and resubmissions are in the first part's report only,
    so that summing the parts' reports counts each once.
    """
    if not parts:
        raise ValueError("select_best_each needs at least one part")
    for part in parts:
        _validate(part.confs, part.template, align_metric, n_workers)
    validate_executor(executor, scheduler)
    started = time.perf_counter()
    conf_ids = [[conf.GetId() for conf in part.confs.GetConformers()] for part in parts]
    total = sum(len(ids) for ids in conf_ids)
    call = SelectionReport(n_conformers=total, workers_requested=n_workers)
    scored: list[dict[int, ConformerScore]] = [{} for _ in parts]
    failures: list[list[ConformerFailure]] = [[] for _ in parts]
    batches = [0] * len(parts)

    listeners: tuple[Observer, ...] = (*process_observers(), *observers)
    everyone: tuple[Observer, ...] = (call, *listeners)
    emit = Emitter(listeners)

    def finished(error: BaseException | None) -> SelectBestFinished:
        reasons: Counter[str] = Counter(failure.reason for found in failures for failure in found)
        return SelectBestFinished(total, n_workers, call.workers_granted,
                                  call.executor_kinds[-1] if call.executor_kinds else None,
                                  sum(len(found) for found in scored), dict(reasons), time.perf_counter() - started,
                                  error)

    with reported(emit, SelectBestStarted(total, n_workers), finished):
        planned: list[tuple[int, Chem.Mol, Chem.Mol, str, list[int]]] = []  # part, base, template, key, usable
        for number, (part, ids) in enumerate(zip(parts, conf_ids, strict=True)):
            base = sanitized_copy_without_conformers(part.confs)
            if base is None:
                failures[number] = [ConformerFailure(cid, FailureReason.SANITIZATION_FAILED,
                                                     "query molecule failed sanitization") for cid in ids]
                continue
            template = Chem.Mol(part.template, confId=part.template.GetConformer().GetId())
            usable, failures[number] = split_usable(part.confs, ids)  # checked here: workers never load numpy
            planned.append((number, base, template, hashlib.sha1(mol_to_bytes(template)).hexdigest(), usable))
        if planned:
            usable_total = sum(len(usable) for *_, usable in planned)
            with get_executor(n_workers, executor=executor, scheduler=scheduler, conformers=usable_total,
                              exact_workers=exact_workers, worker_timeout=worker_timeout) as runner:
                for observer in everyone:
                    runner.subscribe(observer)
                call.batch_size = choose_batch_size(usable_total, runner.batch_workers)
                carrier = current_carrier()  # workers time their batch spans under this call's trace
                tasks: list[BatchTask] = []
                owner: list[int] = []  # the part of each task, by its index
                for number, base, template, key, usable in planned:
                    for chunk in _chunks(usable, call.batch_size):
                        tasks.append(BatchTask(len(tasks), template, key, batch_query(base, parts[number].confs, chunk),
                                               tuple(chunk), carrier, align=parts[number].align))
                        owner.append(number)
                        batches[number] += 1
                call.n_batches = len(tasks)
                call.workers_granted = runner.workers
                try:
                    for result in runner.run(tasks):
                        number = owner[result.index]
                        for item in result.scored:
                            scored[number][item.conf_id] = item
                        failures[number].extend(result.failed)
                        if on_batch is not None:
                            on_batch(result)
                finally:
                    for observer in everyone:
                        runner.unsubscribe(observer)

    call.duration_seconds = time.perf_counter() - started
    selections = []
    for number, part in enumerate(parts):
        report = dataclasses.replace(
            call, n_conformers=len(conf_ids[number]), n_scored=len(scored[number]),
            failures=sorted(failures[number], key=lambda failure: failure.conf_id), n_batches=batches[number],
            executor_kinds=list(call.executor_kinds),
            fallbacks=list(call.fallbacks) if number == 0 else [],
            reductions=list(call.reductions) if number == 0 else [],
            resubmissions=list(call.resubmissions) if number == 0 else [],
            duration_seconds=call.duration_seconds * len(conf_ids[number]) / total if total else 0.0)
        ordered = sorted(scored[number].values(), key=lambda item: (-getattr(item, align_metric), item.conf_id))
        selections.append(Selection(ordered=ordered, report=report, query=part.confs, no_realign=no_realign))
    return selections


def _validate(confs: Any, tpl: Any, align_metric: str, n_workers: int) -> None:
    if align_metric not in METRICS:
        raise ValueError(f"unknown align_metric {align_metric!r}: choose one of {', '.join(METRICS)}")
    if not isinstance(n_workers, int) or n_workers < 1:
        raise ValueError(f"n_workers must be a positive integer, got {n_workers!r}")
    if not isinstance(confs, Chem.Mol):
        raise ValueError(f"confs must be an RDKit molecule with conformers, got {type(confs).__name__}")
    if confs.GetNumConformers() == 0:
        raise ValueError("confs has no conformers to score")
    if not isinstance(tpl, Chem.Mol):
        raise ValueError(f"template must be an RDKit molecule, got {type(tpl).__name__}")
    if tpl.GetNumConformers() == 0 or not has_coordinates(tpl.GetConformer().GetPositions()):
        raise ValueError("template has no 3D coordinates")
    if not tpl.GetConformer().Is3D():
        raise ValueError("template has 2D coordinates only; it needs a 3D pose")


def _chunks(items: Sequence[int], size: int) -> list[list[int]]:
    return [list(items[start:start + size]) for start in range(0, len(items), size)]
