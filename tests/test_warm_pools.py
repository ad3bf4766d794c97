"""A loop of small scoring calls gets its pool and keeps it; one small call alone still runs in the caller.

Real pools, real RDKit: the events each call reports (``observers=``) say where it ran.
"""

from __future__ import annotations

import time

import pytest
from rdkit import Chem

from templ_pipeline.core.events import ExecutorCreated, ReductionReason, TaskType, WorkersGranted, WorkersReduced
from templ_pipeline.core.executor import get_executor, shutdown_pools
from templ_pipeline.core.limits.cpu import read_cpu_budget
from templ_pipeline.core.recent_work import NO_RECENT_WORK, SCORING_HISTORY, RecentWork, WorkHistory
from templ_pipeline.core.scoring import select_best_with_report
from templ_pipeline.core.sizing import (
    ALIGN_SECONDS_PER_CONFORMER,
    COLD_POOL_SECONDS,
    EXACT_WORKERS_ENV,
    plan_workers,
    pool_serves,
    small_scoring_cap,
)

pytestmark = [pytest.mark.fast,
              pytest.mark.skipif(read_cpu_budget().cpus < 2, reason="a pool of 2 needs 2 CPUs for this process")]

CALL = 216
"""Conformers a call: a loop's typical call (about 200), alone too small to repay a cold pool of 2."""


@pytest.fixture
def sized(monkeypatch):
    """Sizing on (the suite insists on its worker counts), no pool warm and no call remembered; the same after."""
    monkeypatch.delenv(EXACT_WORKERS_ENV, raising=False)
    shutdown_pools()
    SCORING_HISTORY.forget()
    yield
    shutdown_pools()
    SCORING_HISTORY.forget()


@pytest.fixture(scope="module")
def call_confs(query_confs) -> Chem.Mol:
    """The session's 24 query conformers, nine times over: 216 conformers, copies scored as the originals."""
    mol = Chem.Mol(query_confs)
    originals = [Chem.Conformer(conf) for conf in query_confs.GetConformers()]
    for _ in range(CALL // len(originals) - 1):
        for conf in originals:
            mol.AddConformer(Chem.Conformer(conf), assignId=True)
    assert mol.GetNumConformers() == CALL
    return mol


def _call(confs: Chem.Mol, template: Chem.Mol) -> tuple[list, list]:
    """One ``select_best`` call of 2 workers: its events, and what it scored (ids, scores and best pose)."""
    events: list = []
    selection = select_best_with_report(confs, template, n_workers=2, observers=(events.append,))
    best = selection.best["combo"][0].GetConformer().GetPositions().round(6).tolist()
    return events, [[s.conf_id, s.shape, s.color] for s in selection.ordered] + [best]


def _created(events: list) -> list[ExecutorCreated]:
    return [event for event in events if isinstance(event, ExecutorCreated)]


def _small_work(events: list) -> list[WorkersReduced]:
    return [event for event in events
            if isinstance(event, WorkersReduced) and event.reason == ReductionReason.SMALL_WORK]


def test_a_loop_of_small_calls_starts_its_pool_at_the_second_call_and_reuses_it(sized, call_confs, template):
    calls = [_call(call_confs, template) for _ in range(5)]
    started = next(turn for turn, (events, _) in enumerate(calls) if _created(events))
    assert started == 1
    for events, _ in calls[:started]:
        assert not _created(events) and len(_small_work(events)) == 1  # scored in the caller, and why
    events, _ = calls[started]
    assert [(e.kind, e.workers, e.reused) for e in _created(events)] == [("process", 2, False)]
    granted = [event for event in events if isinstance(event, WorkersGranted)]
    assert len(granted) == 1 and "as one stream" in granted[0].detail and not _small_work(events)
    for events, _ in calls[started + 1:]:
        assert [(e.kind, e.workers, e.reused) for e in _created(events)] == [("process", 2, True)]
        assert not _small_work(events)
    assert all(scored == calls[0][1] for _, scored in calls)  # the same rows and pose, wherever they ran


def test_a_single_small_call_runs_in_the_caller_and_scores_as_a_pool_does(sized, call_confs, template):
    events, alone = _call(call_confs, template)
    assert not _created(events)
    (cut,) = _small_work(events)
    assert (cut.requested, cut.granted) == (2, 1) and "no other call in the last 30 s" in cut.detail
    pooled = select_best_with_report(call_confs, template, n_workers=2, exact_workers=True)
    assert pooled.report.executor_kinds == ["process"]
    best = pooled.best["combo"][0].GetConformer().GetPositions().round(6).tolist()
    assert [[s.conf_id, s.shape, s.color] for s in pooled.ordered] + [best] == alone


def test_the_history_forgets_calls_older_than_its_window(sized):
    history = WorkHistory(window=0.2)
    assert history.record(CALL) == RecentWork(0, 0, 0.2)
    assert history.record(CALL) == RecentWork(1, CALL, 0.2)
    time.sleep(0.3)
    assert history.record(CALL) == RecentWork(0, 0, 0.2)
    history.forget()
    assert history.record(CALL) == RecentWork(0, 0, 0.2)


def test_calls_further_apart_than_the_window_are_each_sized_alone(sized):
    spaced = WorkHistory(window=0.2)
    for _ in range(3):
        with get_executor(2, conformers=CALL, history=spaced) as executor:
            assert executor.workers == 1
        time.sleep(0.3)
    close = WorkHistory(window=0.2)
    workers = []
    for _ in range(3):
        with get_executor(2, conformers=CALL, history=close) as executor:
            workers.append(executor.workers)
    assert workers == [1, 2, 2]  # planned only: building an executor starts nothing


def test_a_stream_is_forecast_to_ask_for_as_much_again_and_a_call_alone_for_nothing_more():
    assert pool_serves(CALL, NO_RECENT_WORK) == CALL
    assert pool_serves(CALL, RecentWork(1, 200)) == CALL + 200 + CALL
    # twenty small calls are not yet worth a pool; the stream's forecast grows with it until it is
    assert small_scoring_cap(2, 20, warm=False, recent=RecentWork(1, 20)) is not None
    break_even = int(2 * COLD_POOL_SECONDS / ALIGN_SECONDS_PER_CONFORMER)
    assert small_scoring_cap(2, 20, warm=False, recent=RecentWork(23, break_even)) is None


def test_a_stream_that_repays_a_pool_is_planned_one_with_the_reason_in_its_note():
    alone = plan_workers(2, TaskType.SCORING, conformers=CALL, cpu_budget=(2, ""))
    assert alone.workers == 1 and not alone.note
    stream = plan_workers(2, TaskType.SCORING, conformers=CALL, recent=RecentWork(1, CALL), cpu_budget=(2, ""))
    assert stream.workers == 2 and not stream.reductions
    assert "1 call(s) in the last 30 s asked for 216 more" in stream.note
    # a call that repays a pool alone, or finds one warm, needs no note
    assert not plan_workers(2, TaskType.SCORING, conformers=5000, recent=RecentWork(2, 2 * CALL),
                            cpu_budget=(2, "")).note
    assert not plan_workers(2, TaskType.SCORING, conformers=CALL, warm=(2,), recent=RecentWork(2, 2 * CALL),
                            cpu_budget=(2, "")).note
