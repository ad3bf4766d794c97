"""Work-aware sizing: no more CPU-bound workers than CPUs, and no cold pool for work too small to repay it.

The kernel's limits say how many workers *can* start (the thread resource
manager); this module says how many are *worth* starting, before the limits are
asked. Each cut is a :class:`~templ_pipeline.core.events.WorkersReduced` event
with its own reason, so a run that used fewer workers than asked says why:

- ``cpu_limit``: scoring, embedding and screening are CPU-bound (AlignMol and
  ETKDG keep a core busy), so workers beyond the CPUs this process may use
  (its affinity mask and its cgroup's CPU quota,
  :func:`~templ_pipeline.core.limits.cpu.read_cpu_budget`) only take turns, each
  costing a process, memory and tasks of the shared budget;
- ``small_work``: a cold process pool costs its start-up before the first result,
  and work shorter than that start-up gains nothing from it. A call alone is
  judged by its own work; a call that follows others of this process
  (:mod:`templ_pipeline.core.recent_work`) is part of a stream, judged by the
  stream's forecast, so a loop of 200-conformer calls starts its pool at its
  second call, and the grant says so in its detail. That call alone does not repay
  the start (:func:`repays_cold_pool`), so it does not wait for it: the pool starts in
  the background and the call scores in the caller (``pool_starting``, emitted by
  :mod:`templ_pipeline.core.executor`); later calls find the pool warm.

The user who knows better insists with ``exact_workers`` (``--exact-workers``, or
``TEMPL_EXACT_WORKERS=1``): then only the kernel's limits cut the request.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from templ_pipeline.core.events import ReductionReason, TaskType, WorkersReduced
from templ_pipeline.core.recent_work import NO_RECENT_WORK, RecentWork

EXACT_WORKERS_ENV = "TEMPL_EXACT_WORKERS"

COLD_POOL_SECONDS = 0.5
"""Start-up of a cold 2-worker spawn pool until it can score: 0.24-0.50 s measured here
(``benchmarks/bench_worker_start.py``: each worker imports RDKit and numpy, 154 ms alone, and on
2 cores the workers' imports compete with each other and with the parent)."""

ALIGN_SECONDS_PER_CONFORMER = 0.002
"""One shape-and-colour alignment of a drug-like ligand: 1.2 ms for the bundled Mpro query, up to
8 ms for larger ones (``benchmarks/bench_select_best.py``); 2 ms is a typical drug-like figure."""


@dataclass(frozen=True, slots=True)
class WorkPlan:
    """Workers worth starting for some work, the reductions that led there (in order), and ``note``:
    why no ``small_work`` cut was made where the call alone would have had one (empty otherwise)."""

    workers: int
    reductions: tuple[WorkersReduced, ...] = ()
    note: str = ""


def insists_on_workers(explicit: bool = False) -> bool:
    """Whether the user insists on the worker count: the option, or ``TEMPL_EXACT_WORKERS``."""
    return explicit or os.environ.get(EXACT_WORKERS_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def cpu_cap(requested: int, task_type: TaskType, cpus: int, detail: str) -> WorkersReduced | None:
    """A ``cpu_limit`` reduction when more workers are requested than ``cpus``."""
    if requested <= cpus:
        return None
    return WorkersReduced(task_type, requested, cpus, ReductionReason.CPU_LIMIT,
                          f"{requested} CPU-bound workers requested, this process may use {cpus} CPUs: {detail}")


def _scoring_saves(requested: int, conformers: int) -> tuple[float, float]:
    """``(work, saved)``: the seconds of scoring ``conformers``, and what ``requested`` workers save of them."""
    work = conformers * ALIGN_SECONDS_PER_CONFORMER
    return work, work * (1.0 - 1.0 / requested)


def pool_serves(conformers: int, recent: RecentWork) -> int:
    """The conformers a pool started now would score: this call's, and the calls forecast after it.

    A call alone forecasts nothing. A call that follows others shows a stream, and
    a stream is forecast to ask for as much again as it has so far, this call
    included (the best guess of a loop's length from how long it has run).
    """
    return conformers + (recent.conformers + conformers if recent.calls else 0)


def _recent(recent: RecentWork) -> str:
    """The recent calls, in words, for a decision's detail."""
    if not recent.calls:
        return f"no other call in the last {recent.window:g} s"
    return (f"{recent.calls} call(s) in the last {recent.window:g} s asked for {recent.conformers} more, "
            "a stream forecast to ask for as much again")


def small_scoring_cap(requested: int, conformers: int, *, warm: bool,
                      recent: RecentWork = NO_RECENT_WORK) -> WorkersReduced | None:
    """A ``small_work`` reduction to 1 when scoring on a cold pool gains less than its start-up.

    With ``w`` workers the work's wall time falls by ``work * (1 - 1/w)``; a cold
    pool first costs :data:`COLD_POOL_SECONDS`. The work is what the pool would
    serve (:func:`pool_serves`): the call's ``conformers``, and after ``recent``
    calls the stream's forecast. A warm pool costs nothing more, so it is used
    whatever the size of the work.
    """
    if requested < 2 or warm:
        return None
    work, saved = _scoring_saves(requested, pool_serves(conformers, recent))
    if saved >= COLD_POOL_SECONDS:
        return None
    return WorkersReduced(
        TaskType.SCORING, requested, 1, ReductionReason.SMALL_WORK,
        f"{conformers} conformers, and {_recent(recent)}: about {work:.2f} s of scoring; {requested} workers "
        f"would save {saved:.2f} s, less than the {COLD_POOL_SECONDS:.2f} s a cold pool takes to start: scoring here")


def repays_cold_pool(workers: int, conformers: int) -> bool:
    """Whether ``conformers`` alone are worth waiting for a cold pool of ``workers``: a call that is
    waits for its pool to start; one that is not scores in the caller while the pool starts."""
    return small_scoring_cap(workers, conformers, warm=False) is None


def stream_note(requested: int, conformers: int, recent: RecentWork) -> str:
    """Why ``requested`` workers start for ``conformers`` that alone would be scored here: the stream of
    recent calls repays the pool (empty when the call alone repays it, or the stream does not)."""
    if requested < 2 or small_scoring_cap(requested, conformers, warm=False) is None:
        return ""
    if small_scoring_cap(requested, conformers, warm=False, recent=recent) is not None:
        return ""
    work, saved = _scoring_saves(requested, pool_serves(conformers, recent))
    return (f"{conformers} conformers alone would be scored here, but {_recent(recent)}: as one stream, about "
            f"{work:.2f} s of scoring, {requested} workers save {saved:.2f} s, more than the "
            f"{COLD_POOL_SECONDS:.2f} s a cold pool takes to start: starting the pool, which later calls reuse")


def few_queries_cap(requested: int, queries: int) -> WorkersReduced | None:
    """A ``small_work`` reduction when a campaign has fewer queries left than workers requested."""
    if queries >= requested:
        return None
    workers = max(1, queries)
    return WorkersReduced(TaskType.SCREENING, requested, workers, ReductionReason.SMALL_WORK,
                          f"{queries} queries to run keep at most {workers} worker(s) busy")


def plan_workers(
    requested: int,
    task_type: TaskType,
    *,
    exact: bool = False,
    conformers: int | None = None,
    queries: int | None = None,
    warm: Sequence[int] = (),
    recent: RecentWork = NO_RECENT_WORK,
    cpu_budget: tuple[int, str] | None = None,
) -> WorkPlan:
    """The workers worth starting for ``requested``: capped by the CPUs, then by the work.

    ``cpu_budget`` is ``(cpus, detail)`` (read from the system when None);
    ``conformers`` sizes scoring work, with the ``recent`` calls' added, and
    ``queries`` a campaign's; ``warm`` lists the sizes of pools already running.
    ``exact`` skips every cut.
    """
    if exact or requested < 2:
        return WorkPlan(requested)
    reductions: list[WorkersReduced] = []
    workers = requested
    cpus, detail = cpu_budget if cpu_budget is not None else _cpu_budget()
    for cut in (cpu_cap(workers, task_type, cpus, detail),
                few_queries_cap(workers, queries) if queries is not None else None):
        if cut is not None:
            reductions.append(cut)
            workers = cut.granted
    note = ""
    if task_type == TaskType.SCORING and conformers is not None:
        cut = small_scoring_cap(workers, conformers, warm=workers in warm, recent=recent)
        if cut is not None:
            reductions.append(cut)
            workers = cut.granted
        elif workers not in warm:
            note = stream_note(workers, conformers, recent)
    return WorkPlan(workers, tuple(reductions), note)


def _cpu_budget() -> tuple[int, str]:
    """``(cpus, detail)`` for this process (``read_cpu_budget`` never raises: what it cannot read is unknown)."""
    from templ_pipeline.core.limits.cpu import read_cpu_budget

    budget = read_cpu_budget()
    return budget.cpus, budget.detail
