"""A loop of small scoring calls gets its pool and keeps it; one small call alone still runs in the caller.

The stream's pool starts in the background: the call that starts it runs in the caller until the pool
is ready (the pool then takes its batches left), and the first call that finds it ready leases it.
Real pools, real RDKit: the events each call reports (``observers=``) and the pool registry say where
it ran, never a clock.
"""

from __future__ import annotations

import multiprocessing
import time

import pytest
from rdkit import Chem

from templ_pipeline.core.batch import score_batch
from templ_pipeline.core.events import (
    BatchDone,
    ExecutorCreated,
    ReductionReason,
    TaskType,
    WorkersGranted,
    WorkersReduced,
)
from templ_pipeline.core.executor import get_executor, shutdown_pools
from templ_pipeline.core.limits.cpu import read_cpu_budget
from templ_pipeline.core.pools import POOLS, READY_SECONDS, BackgroundStart, PoolRegistry
from templ_pipeline.core.recent_work import NO_RECENT_WORK, SCORING_HISTORY, RecentWork, WorkHistory
from templ_pipeline.core.scoring import choose_batch_size, select_best_with_report
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


def _pool_starting(events: list) -> list[WorkersReduced]:
    return [event for event in events
            if isinstance(event, WorkersReduced) and event.reason == ReductionReason.POOL_STARTING]


def test_a_loop_starts_its_pool_in_the_background_at_the_second_call_which_runs_in_the_caller(
        sized, call_confs, template):
    first, second = _call(call_confs, template), _call(call_confs, template)
    assert not _created(first[0]) and len(_small_work(first[0])) == 1  # alone: scored in the caller, and why
    events, _ = second
    assert not _small_work(events)  # the stream wants the pool; the call did not wait for it
    granted = [event for event in events if isinstance(event, WorkersGranted)]
    assert len(granted) == 1 and "as one stream" in granted[0].detail
    (starting,) = _pool_starting(events)
    assert (starting.requested, starting.granted) == (2, 1)
    assert "is starting in the background; this call runs in the caller until the pool is ready" in starting.detail
    assert events.index(starting) < min((events.index(e) for e in _created(events)), default=len(events))
    assert POOLS.settle(READY_SECONDS) and POOLS.warm_sizes("process") == (2,)
    later = [_call(call_confs, template) for _ in range(2)]
    leased = len(_created(events))  # the second call's last batches went to the pool if it was ready in time
    assert [[(e.kind, e.workers, e.reused) for e in _created(events)] for events, _ in later] == [
        [("process", 2, bool(leased))], [("process", 2, True)]]  # the first call that finds it ready leases it
    assert not any(_small_work(events) or _pool_starting(events) for events, _ in later)
    assert all(scored == first[1] for _, scored in [second, *later])  # the same rows and pose, wherever they ran


def test_a_call_that_finds_the_pool_still_starting_runs_in_the_caller_and_says_so(sized, call_confs, template):
    _call(call_confs, template)
    assert POOLS.start_in_background("process", 2) == BackgroundStart.STARTED  # as a call before this one did
    events, scored = _call(call_confs, template)
    (starting,) = _pool_starting(events)
    assert "is still starting in the background" in starting.detail
    assert scored == _call(call_confs, template)[1]


def test_a_pool_ready_during_a_call_in_the_caller_takes_the_batches_left(sized, call_confs, template):
    _call(call_confs, template)
    assert POOLS.start_in_background("process", 2) == BackgroundStart.STARTED  # as a call before this one did
    events: list = []

    def after_a_batch(result) -> None:
        if not _created(events):  # still in the caller: wait here until the pool is up
            assert POOLS.settle(READY_SECONDS)

    selection = select_best_with_report(call_confs, template, n_workers=2, observers=(events.append,),
                                        on_batch=after_a_batch)
    (starting,) = _pool_starting(events)
    assert [(e.kind, e.workers, e.reused) for e in _created(events)] == [("process", 2, False)]
    assert events.index(starting) < events.index(_created(events)[0])
    assert selection.report.executor_kinds == ["sequential", "process"]  # a batch here, the rest on the pool
    # the batches are cut for the pool that takes them, not for the caller: enough left to keep both workers busy
    assert selection.report.batch_size == choose_batch_size(CALL, 2)
    done = [event.kind for event in events if isinstance(event, BatchDone)]
    assert done == ["sequential"] + ["process"] * (selection.report.n_batches - 1) and len(done) >= 2 * 2 + 1
    best = selection.best["combo"][0].GetConformer().GetPositions().round(6).tolist()
    assert [[s.conf_id, s.shape, s.color] for s in selection.ordered] + [best] == _call(call_confs, template)[1]


def test_a_big_call_waits_for_the_pool_starting_in_the_background_and_starts_no_second_one(sized):
    registry = PoolRegistry()
    try:
        assert registry.start_in_background("process", 2) == BackgroundStart.STARTED
        assert registry.start_in_background("process", 2) == BackgroundStart.STARTING
        pool, reused = registry.acquire("process", 2)
        assert not reused and len(pool._processes) == 2  # the background pool, leased for the first time
        assert registry.start_in_background("process", 2) == BackgroundStart.READY
        registry.release(pool)
        assert registry.acquire("process", 2) == (pool, True)
        registry.release(pool)
    finally:
        registry.shutdown_all()
    assert not multiprocessing.active_children()


def test_shutdown_ends_a_pool_still_starting_and_reports_no_failure(sized, call_confs, template):
    registry = PoolRegistry()
    assert registry.start_in_background("process", 2, preload=score_batch) == BackgroundStart.STARTED
    registry.shutdown_all()  # at once: the pool is still starting
    assert registry.settle(0) and not registry.warm_sizes("process")
    assert registry.take_start_failure("process") is None  # ended on purpose: nothing to report
    assert not multiprocessing.active_children()
    _call(call_confs, template)
    events, _ = _call(call_confs, template)  # through the process registry: the same, by shutdown_pools
    assert _pool_starting(events)
    shutdown_pools()
    assert POOLS.settle(0) and not POOLS.warm_sizes("process") and not multiprocessing.active_children()


def test_a_single_small_call_runs_in_the_caller_and_scores_as_a_pool_does(sized, call_confs, template):
    events, alone = _call(call_confs, template)
    assert not _created(events) and not _pool_starting(events)
    assert POOLS.settle(0) and not multiprocessing.active_children()  # no pool, not even one starting
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
            assert executor.grant.granted == executor.workers == 1
        time.sleep(0.3)
    close = WorkHistory(window=0.2)
    granted = []
    for _ in range(3):
        with get_executor(2, conformers=CALL, history=close) as executor:
            granted.append((executor.grant.granted, executor.workers))
    # the stream's pool is granted from the second call; the call itself, too small to wait for it, runs here
    assert granted == [(1, 1), (2, 1), (2, 1)]
    assert POOLS.settle(0) and not multiprocessing.active_children()  # planned only: building one starts nothing


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
