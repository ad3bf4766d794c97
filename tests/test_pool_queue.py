"""A campaign worker holds the next queries behind the one it runs: real workers, real pipes, real kills.

Every query still runs once, or once more only when it was running on a worker that died; a time limit
still ends only the query that ran over it; a recycled worker still ends between queries; and a query too
large to wait in a pipe waits in the parent, which never blocks on a worker that is busy.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import psutil
import pytest
from rdkit import Chem

from templ_pipeline.campaign.pool import DEPTH, QUEUE_BYTES, Arrivals, QueryPool
from templ_pipeline.campaign.recycling import RecyclePolicy
from templ_pipeline.campaign.task import CampaignSettings, QueryTask
from templ_pipeline.core.batch import mol_to_bytes
from templ_pipeline.core.events import QueryFailureReason, ReplacementReason, WorkerReplaced

SMALL = ["CCO", "CCCO", "CC(C)O", "CCCCO", "OCCO"]
SLOW = "C" + "OCC" * 60 + "O"  # several seconds to embed even at 4 conformers
DEADLINE = 120.0
NO_RECYCLING = RecyclePolicy(0, 0)


@pytest.fixture
def events() -> list[object]:
    return []


@pytest.fixture
def pool_of(template, events) -> Iterator:
    """A one-worker pool factory (recycling off unless given); every pool made is shut down."""
    made: list[QueryPool] = []

    def make(query_timeout: float | None = 60, recycle: RecyclePolicy = NO_RECYCLING) -> QueryPool:
        settings = CampaignSettings((mol_to_bytes(template),), ("t",), 4, 42, "combo")
        pool = QueryPool(1, settings, events.append, query_timeout=query_timeout, recycle=recycle)
        made.append(pool)
        pool.start()
        _until(pool, lambda arrivals: bool(pool.idle()))
        return pool

    yield make
    for pool in made:
        pool.shutdown(terminate=True)


def _until(pool: QueryPool, done, arrivals: Arrivals | None = None) -> Arrivals:
    """Wait on ``pool``, gathering what arrives, until ``done(arrivals)``."""
    arrivals = arrivals if arrivals is not None else Arrivals()
    deadline = time.monotonic() + DEADLINE
    while not done(arrivals):
        assert time.monotonic() < deadline, f"nothing came: {arrivals}"
        more = pool.wait(0.2)
        arrivals.finished += more.finished
        arrivals.retry += more.retry
    return arrivals


def _give(pool: QueryPool, tasks: list[QueryTask]) -> None:
    """Hand ``tasks`` to the pool's one worker, the first to run and the rest to wait behind it."""
    places = pool.idle(ahead=True)
    assert len(places) >= len(tasks), places
    for worker, task in zip(places[:len(tasks)], tasks, strict=True):
        assert pool.dispatch(worker, task)


def _running(pool: QueryPool) -> psutil.Process:
    """The pool's one worker, once it has used 0.3 s of CPU more than now (it is embedding its query)."""
    (worker,) = pool._workers
    process = psutil.Process(worker.pid)
    before, deadline = sum(process.cpu_times()[:2]), time.monotonic() + DEADLINE
    while sum(process.cpu_times()[:2]) < before + 0.3:
        assert time.monotonic() < deadline, "the worker does not run its query"
        time.sleep(0.05)
    return process


def _small(start: int, count: int) -> list[QueryTask]:
    return [QueryTask(start + n, f"small_{start + n}", smiles) for n, smiles in enumerate(SMALL[:count])]


def test_a_worker_holds_its_next_queries_and_runs_each_once_in_order(pool_of, events):
    pool = pool_of()
    (worker,) = pool.idle()
    assert pool.idle(ahead=True) == [worker] * DEPTH
    _give(pool, _small(0, DEPTH))
    assert pool.idle() == [] and pool.idle(ahead=True) == []  # it holds all it may
    arrivals = _until(pool, lambda arrivals: len(arrivals.finished) == DEPTH)
    assert [(task.index, outcome.index, outcome.status) for task, outcome in arrivals.finished] == [
        (n, n, "ok") for n in range(DEPTH)]
    assert arrivals.retry == [] and not [event for event in events if isinstance(event, WorkerReplaced)]
    assert pool.idle() == [worker]  # the same worker, nothing held


def test_queries_waiting_behind_one_whose_worker_dies_run_again_without_counting_a_run(pool_of, events):
    pool = pool_of()
    slow = QueryTask(0, "slow", SLOW)
    for lost in (1, 2):
        _give(pool, [slow, *_small(1, 2)])
        _running(pool).kill()
        arrivals = _until(pool, lambda arrivals: arrivals.retry or arrivals.finished)
        if lost == 1:  # the running query has a second run; those waiting never ran
            assert sorted(task.index for task in arrivals.retry) == [0, 1, 2] and not arrivals.finished
        else:  # the running query was lost twice: given up; those waiting still never ran, and run again
            assert sorted(task.index for task in arrivals.retry) == [1, 2]
            ((task, outcome),) = arrivals.finished
            assert (task.index, outcome.reason) == (0, QueryFailureReason.WORKER_LOST)
        _until(pool, lambda arrivals: bool(pool.idle()))
    _give(pool, _small(1, 2))
    arrivals = _until(pool, lambda arrivals: len(arrivals.finished) == 2)
    assert [(task.index, outcome.status) for task, outcome in arrivals.finished] == [(1, "ok"), (2, "ok")]
    replaced = [event.reason for event in events if isinstance(event, WorkerReplaced)]
    assert replaced == [ReplacementReason.WORKER_LOST] * 2, replaced


def test_a_query_over_its_limit_ends_its_worker_and_those_waiting_behind_it_run_again(pool_of, events):
    pool = pool_of(query_timeout=2)
    _give(pool, [QueryTask(0, "slow", SLOW), *_small(1, 2)])
    arrivals = _until(pool, lambda arrivals: bool(arrivals.finished))
    ((task, outcome),) = arrivals.finished
    assert (task.index, outcome.reason) == (0, QueryFailureReason.TIMEOUT)
    assert sorted(task.index for task in arrivals.retry) == [1, 2]
    _until(pool, lambda arrivals: bool(pool.idle()))
    _give(pool, arrivals.retry)
    again = _until(pool, lambda arrivals: len(arrivals.finished) == 2)
    assert [(task.index, outcome.status) for task, outcome in again.finished] == [(1, "ok"), (2, "ok")]
    assert [event.reason for event in events if isinstance(event, WorkerReplaced)] == [ReplacementReason.TIMEOUT]


def test_a_worker_recycled_with_queries_waiting_runs_them_first_then_ends(pool_of, events):
    pool = pool_of(recycle=RecyclePolicy(max_queries=1, growth=0))
    (worker,) = pool.idle()
    _give(pool, _small(0, 3))
    arrivals = _until(pool, lambda arrivals: len(arrivals.finished) == 3)
    assert [(task.index, outcome.status) for task, outcome in arrivals.finished] == [(0, "ok"), (1, "ok"), (2, "ok")]
    assert arrivals.retry == []  # each ran once, on the worker it was sent to
    assert not psutil.pid_exists(worker.pid) or psutil.Process(worker.pid).status() == psutil.STATUS_ZOMBIE
    replaced = [event for event in events if isinstance(event, WorkerReplaced)]
    assert [event.reason for event in replaced] == [ReplacementReason.RECYCLED], replaced
    assert f"worker {worker.pid} recycled" in replaced[0].detail


def test_a_query_too_large_to_wait_in_a_pipe_waits_in_the_parent_which_never_blocks(pool_of, template):
    pool = pool_of(query_timeout=3)
    mol = Chem.AddHs(Chem.MolFromSmiles("CCO"))
    lines = Chem.MolToMolBlock(mol).split("\n")
    lines[2] = "x" * (64 * QUEUE_BYTES)  # the comment line: 2 MB, more than any socket buffer holds
    large = QueryTask(1, "large", None, ("\n".join(lines),))
    _give(pool, [QueryTask(0, "slow", SLOW)])
    process = _running(pool)
    _give(pool, [large])  # a send into the busy worker's pipe would block until the slow query ends
    assert process.is_running() and pool.wait(0).finished == []  # still running its first query
    arrivals = _until(pool, lambda arrivals: bool(arrivals.finished))
    ((task, outcome),) = arrivals.finished
    assert (task.index, outcome.reason) == (0, QueryFailureReason.TIMEOUT)
    assert [task.query_id for task in arrivals.retry] == ["large"]  # never sent: it runs on the next worker
    _until(pool, lambda arrivals: bool(pool.idle()))
    _give(pool, arrivals.retry)
    again = _until(pool, lambda arrivals: bool(arrivals.finished))
    assert [(task.query_id, outcome.status) for task, outcome in again.finished] == [("large", "ok")]
