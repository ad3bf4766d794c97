"""``templ screen --executor dask`` on real Dask clusters: the local campaign's rows, whatever the cluster does.

Clusters are real: LocalClusters of process workers (the fixture's, or one ``templ`` starts), a bare
``dask scheduler`` process without workers. Workers are killed with SIGKILL under chosen queries.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import time

import psutil
import pytest
from dask_fixtures import (  # noqa: F401  (fixture)
    QueryKiller,
    TaskSizes,
    bare_scheduler,
    dask_cluster,
    dask_workers,
    gated_cluster,
    task_sizes,
)
from distributed import LocalCluster
from templ_runs import run_templ
from test_screen import (
    BAD,
    SERIES,
    SLOW,
    _cleanup,
    _start,
    _wait_for_rows,
    rows_without_time,
    screen_args,
    write_smi,
)

from templ_pipeline.campaign.dask_pool import cut_blocks
from templ_pipeline.campaign.dask_task import START_TOPIC, TASK_PREFIX, CampaignSettingsPlugin, run_block
from templ_pipeline.campaign.queries import read_queries
from templ_pipeline.campaign.runner import ScreenOptions, screen
from templ_pipeline.campaign.task import CampaignSettings, QueryTask
from templ_pipeline.core.batch import mol_to_bytes
from templ_pipeline.core.events import (
    ExecutorCreated,
    ExecutorKind,
    Fallback,
    QueryFailureReason,
    QueryResubmitted,
    QueryStatus,
    ResubmissionReason,
)
from templ_pipeline.core.executor import shutdown_dask
from templ_pipeline.core.limits.cpu import read_cpu_budget

QUERIES = SERIES[:12] + BAD
N = 12


@pytest.fixture(scope="module")
def queries(tmp_path_factory):
    return write_smi(tmp_path_factory.mktemp("dask_library") / "queries.smi", QUERIES)


@pytest.fixture(scope="module")
def local_rows(tmp_path_factory, template_sdf, queries):
    """The campaign on local worker processes: what every Dask campaign must write."""
    out = tmp_path_factory.mktemp("dask_local") / "local"
    done = run_templ(*screen_args(template_sdf, queries, out, "-w", "2", "-n", N))
    assert done.returncode == 0, done.stderr
    return rows_without_time(out)


@pytest.fixture(scope="module")
def local_results(template, queries):
    return _signatures(screen(read_queries(queries), [template], ScreenOptions(num_conformers=N, workers=2)))


def _signatures(results) -> dict[str, tuple]:
    found: dict[str, tuple] = {}
    for result in results:
        assert result.query_id not in found, f"{result.query_id} came twice"
        found[result.query_id] = (result.outcome.status, result.outcome.reason,
                                  [(t.template, t.conf_id, t.shape, t.color) for t in result.outcome.templates])
    return found


def _options(**dask) -> ScreenOptions:
    return ScreenOptions(num_conformers=N, workers=2, executor="dask", **dask)


def test_a_local_cluster_campaign_writes_the_local_rows(template_sdf, queries, local_rows, tmp_path):
    out = tmp_path / "dask"
    done = run_templ(*screen_args(template_sdf, queries, out, "-w", "2", "-n", N, "--executor", "dask", "--json"))
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["executor_kinds"] == ["dask"] and not summary["fallbacks"], summary
    assert summary["queries"]["done"] == len(QUERIES)
    assert rows_without_time(out) == local_rows


def test_a_campaign_on_a_scheduler_is_one_trace_counted_once_in_the_driver(dask_cluster, template, queries,
                                                                           local_results, tel):
    results = list(screen(read_queries(queries), [template], _options(scheduler=dask_cluster.address)))
    assert _signatures(results) == local_results
    assert {result.kind for result in results} == {ExecutorKind.DASK}
    registry = tel.registry
    ok = registry.get_sample_value("templ_campaign_queries_total", {"status": "ok", "reason": "none"})
    assert ok == sum(result.ok for result in results)
    spans = tel.exporter.get_finished_spans()
    (campaign,) = [s for s in spans if s.name == "screen.campaign"]
    query_spans = [s for s in spans if s.name == "screen.query"]
    assert len(query_spans) == len(QUERIES)
    # each query is the root of a trace of its own, linked to the campaign span; its worker spans are in it
    assert all(s.parent is None and [link.context for link in s.links] == [campaign.context] for s in query_spans)
    by_id = {s.context.span_id: s.context.trace_id for s in query_spans}
    worker_spans = [s for s in spans if s.name in ("conformers.generate", "screen.score")]
    assert worker_spans and all(by_id.get(s.parent.span_id) == s.context.trace_id for s in worker_spans)
    pids = set(dask_cluster.worker_pids().values())
    assert {s.attributes["process.pid"] for s in worker_spans} <= pids
    # each worker sized ETKDG from its machine: the CPUs this process may use, per task thread of the worker
    cpus = read_cpu_budget().cpus
    threads = {s.attributes["templ.executor.workers_granted"] for s in worker_spans if s.name == "conformers.generate"}
    assert threads == {max(1, cpus)}


def _holds_settings(key: str) -> bool:
    from templ_pipeline.campaign import dask_task

    return key in dask_task._settings


def test_the_campaign_settings_reach_each_worker_once_as_a_plugin(dask_cluster, template):
    """A task carries the campaign's key: its settings (the template library) are on every worker already."""
    settings = CampaignSettings((mol_to_bytes(template),), ("mpro",), 6, 42, "combo")
    plugin = CampaignSettingsPlugin("plugin-test", settings)
    client = dask_cluster.client
    client.register_plugin(plugin, name=plugin.name)
    try:
        assert all(client.run(_holds_settings, plugin.key).values())  # every worker, before any task
        (outcome,) = client.submit(run_block, plugin.key, (QueryTask(0, "q", "CC(=O)Nc1ccc(O)cc1"),),
                                   pure=False).result(timeout=120)
        assert outcome.status == QueryStatus.OK and outcome.best("combo") is not None
    finally:
        client.unregister_worker_plugin(plugin.name)
    assert not any(client.run(_holds_settings, plugin.key).values())  # gone with the campaign


def test_a_task_carries_the_same_few_bytes_whatever_the_size_of_the_template_library(dask_cluster, template):
    """The library goes to each worker once, as the campaign's plugin: a task is the query and the campaign key."""
    client = dask_cluster.client
    client.register_plugin(TaskSizes(), name=TaskSizes.name)
    sizes: dict[int, int] = {}
    try:
        for count in (1, 50):
            before = set(task_sizes(client))
            results = list(screen(["CC(=O)Nc1ccc(O)cc1", "CC(C)Cc1ccc(cc1)C(C)C(=O)O"], [template] * count,
                                  ScreenOptions(num_conformers=2, workers=2, executor="dask",
                                                scheduler=dask_cluster.address)))
            assert [result.kind for result in results] == [ExecutorKind.DASK] * 2
            assert all(result.ok for result in results), [result.outcome.detail for result in results]
            tasks = {key: size for key, size in task_sizes(client).items()
                     if key not in before and key.startswith(TASK_PREFIX)}
            assert len(tasks) == 2, tasks
            sizes[count] = max(tasks.values())
    finally:
        client.unregister_scheduler_plugin(TaskSizes.name)
    library = len(pickle.dumps(CampaignSettings(tuple(mol_to_bytes(template) for _ in range(50)), ("mpro",) * 50,
                                                2, 42, "combo")))
    assert abs(sizes[50] - sizes[1]) <= 16, sizes  # the key's digits and the query's own text, nothing more
    assert sizes[50] < 4096 and library > 10 * sizes[50], (sizes, library)


def test_workers_that_replace_killed_ones_get_the_settings_and_run_the_campaign(dask_cluster, template, queries,
                                                                                 local_results):
    """Every worker is killed once the campaign's settings are installed, before its first query: the
    nannies' new workers receive the settings from the scheduler and run every query."""
    client = dask_cluster.client
    held: list[list[str]] = []

    def kill_every_worker_once_started(event: object) -> None:
        if isinstance(event, ExecutorCreated):
            old = set(dask_cluster.worker_pids().values())
            for pid in old:
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 120
            while not (len(pids := set(dask_cluster.worker_pids().values())) == 2 and not pids & old):
                assert time.monotonic() < deadline, "the nannies did not start new workers"
                time.sleep(0.2)
        elif type(event).__name__ == "QueryFinished" and not held:
            held.extend(client.run(_campaign_keys).values())

    results = list(screen(read_queries(queries), [template], _options(scheduler=dask_cluster.address),
                          observers=(kill_every_worker_once_started,)))
    assert _signatures(results) == local_results
    assert {result.kind for result in results} == {ExecutorKind.DASK}
    assert len(held) == 2 and all(len(keys) == 1 for keys in held) and held[0] == held[1], held


def _campaign_keys() -> list[str]:
    from templ_pipeline.campaign import dask_task

    return sorted(dask_task._settings)


def test_a_worker_killed_under_a_query_runs_it_once_more(dask_cluster, template, queries, local_results, tel):
    """Runs after the tests that count the fixture's workers: it kills one (its nanny starts another)."""
    killer = QueryKiller(dask_cluster.address, lambda index, start: index == 1 and start == 1)
    events: list = []
    try:
        results = list(screen(read_queries(queries), [template], _options(scheduler=dask_cluster.address),
                              observers=(events.append,)))
    finally:
        killer.close()
    assert [index for index, _ in killer.kills] == [1]
    assert _signatures(results) == local_results  # every query exactly once, the rerun's row as the local one
    resubmitted = [event for event in events if isinstance(event, QueryResubmitted)]
    # query 1 ran second in its task (queries 0-3): query 0 had finished on the killed worker and ran again
    assert [(event.index, event.reason) for event in resubmitted] == [(1, ResubmissionReason.WORKER_LOST),
                                                                      (0, ResubmissionReason.RESULT_LOST)]
    assert tel.registry.get_sample_value("templ_campaign_query_resubmissions_total", {"reason": "worker_lost"}) == 1


def test_a_query_that_kills_every_worker_is_a_worker_lost_row(template, queries, local_results):
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address="127.0.0.1:0", scheduler_kwargs={"allowed_failures": 1})
    killer = QueryKiller(cluster.scheduler_address, lambda index, start: index == 2)
    events: list = []
    try:
        results = list(screen(read_queries(queries), [template], _options(scheduler=cluster.scheduler_address),
                              observers=(events.append,)))
    finally:
        killer.close()
        shutdown_dask()
        cluster.close()
    found = _signatures(results)
    # the query handed out third (queries go out largest first, not in input order)
    victim = next(event.query_id for event in events if type(event).__name__ == "QueryFinished" and event.index == 2)
    assert found[victim][:2] == ("failed", QueryFailureReason.WORKER_LOST)
    assert {query: row for query, row in found.items() if query != victim} == {
        query: row for query, row in local_results.items() if query != victim}
    assert 2 <= len(killer.kills) <= 3  # the first run and its rerun (one more may start before it is cancelled)
    resubmitted = [(event.index, event.reason) for event in events if isinstance(event, QueryResubmitted)]
    # the victim once; a finished query whose result was still on a killed worker is computed again
    assert [index for index, reason in resubmitted if reason == ResubmissionReason.WORKER_LOST] == [2], resubmitted
    # the victim's task (queries 0-3) ran again with it, then without it in a new task (so may a task only
    # queued on both killed workers: Dask gives up on it too)
    cancelled = {index for index, reason in resubmitted if reason == ResubmissionReason.TASK_CANCELLED}
    assert {0, 1, 3} <= cancelled, resubmitted
    assert all(reason in (ResubmissionReason.RESULT_LOST, ResubmissionReason.TASK_CANCELLED)
               for index, reason in resubmitted if index != 2), resubmitted


def test_a_scheduler_without_workers_falls_back_within_the_timeout(template_sdf, local_rows, tmp_path):
    out = tmp_path / "no_workers"
    queries = write_smi(tmp_path / "three.smi", QUERIES[:3])
    with bare_scheduler() as address:
        started = time.monotonic()
        done = run_templ(*screen_args(template_sdf, queries, out, "-w", "2", "-n", N, "--executor", "dask",
                                      "--scheduler", address, "--worker-timeout", "2", "--json"))
        seconds = time.monotonic() - started
        best = run_templ("select-best", "--template", template_sdf, "--query", QUERIES[0][1], "-n", "8",
                         "--output", tmp_path / "best.sdf", "--no-metrics-server", "--executor", "dask",
                         "--scheduler", address, "--worker-timeout", "2", "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert [(f["from"], f["to"], f["reason"]) for f in summary["fallbacks"]] == [("dask", "process", "no_workers")]
    assert "had no worker for 2 s" in summary["fallbacks"][0]["detail"]
    assert summary["executor_kinds"] == ["process"]
    assert seconds < 60, f"the campaign took {seconds:.0f} s: the 2 s wait for a worker was not the bound"
    assert rows_without_time(out) == {name: local_rows[name] for name, _ in QUERIES[:3]}
    assert best.returncode == 0, best.stderr
    assert ("dask", "process", "no_workers") in [(f["from"], f["to"], f["reason"])
                                                  for f in json.loads(best.stdout)["fallbacks"]]


def test_a_scheduler_lost_mid_campaign_hands_the_rest_to_local_workers(template, queries, local_results):
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address="127.0.0.1:0")
    events: list = []

    def close_after_first(event: object) -> None:
        if type(event).__name__ == "QueryFinished" and cluster.status.name == "running":
            cluster.close()

    try:
        results = list(screen(read_queries(queries), [template], _options(scheduler=cluster.scheduler_address),
                              observers=(events.append, close_after_first)))
    finally:
        shutdown_dask()
        cluster.close()
    assert _signatures(results) == local_results
    fallbacks = [(e.from_kind, e.to_kind, e.reason) for e in events if isinstance(e, Fallback)]
    assert fallbacks == [("dask", "process", "scheduler_lost")], fallbacks
    assert [e.kind for e in events if isinstance(e, ExecutorCreated)] == ["dask", "process"]


def test_workers_that_all_leave_mid_campaign_hand_the_rest_to_local_workers(template, queries, local_results):
    events: list = []
    with bare_scheduler() as address, dask_workers(address, 2, "--no-nanny") as workers:
        finished = 0

        def kill_workers_after_three(event: object) -> None:
            nonlocal finished
            finished += type(event).__name__ == "QueryFinished"
            if finished == 3:
                for worker in workers:
                    worker.kill()  # no nanny: nothing starts them again

        started = time.monotonic()
        results = list(screen(read_queries(queries), [template], _options(scheduler=address, worker_timeout=2),
                              observers=(events.append, kill_workers_after_three)))
        seconds = time.monotonic() - started
    shutdown_dask()
    assert _signatures(results) == local_results
    fallbacks = [(e.from_kind, e.to_kind, e.reason) for e in events if isinstance(e, Fallback)]
    assert fallbacks == [("dask", "process", "no_workers")], fallbacks
    assert "every worker left" in [e.detail for e in events if isinstance(e, Fallback)][0]
    assert seconds < 120, f"{seconds:.0f} s: the 2 s wait for a worker did not bound the campaign"


def test_a_query_over_its_time_limit_on_a_worker_is_a_timeout_row(dask_cluster, template, local_results, tmp_path):
    """ETKDG cannot be stopped inside a worker: the query's row says timeout and its worker is restarted; the
    queries that shared its task (a block of three here) run again in a new one, with the rows they have
    anywhere."""
    others = QUERIES[:8]
    library = write_smi(tmp_path / "slow.smi", [SLOW, *others])
    before = {child.pid for child in psutil.Process().children(recursive=True)}
    since = time.time()  # the scheduler stamps each logged event with its wall clock (the same machine)
    events: list = []
    started = time.monotonic()
    results = list(screen(read_queries(library), [template],
                          _options(scheduler=dask_cluster.address, query_timeout=3.0), observers=(events.append,)))
    seconds = time.monotonic() - started
    found = {result.query_id: result.outcome for result in results}
    # the slow query (the largest, so the first handed out) started once: its cancelled task was let go before
    # its worker was restarted, not handed to the other worker (a cancel can arrive after the restart request)
    slow_index = next(event.index for event in events if type(event).__name__ == "QueryFinished"
                      and event.query_id == SLOW[0])
    starts = [message for stamp, message in dask_cluster.client.get_events(START_TOPIC) if stamp >= since]
    assert [message["index"] for message in starts].count(slow_index) == 1, starts
    assert found[SLOW[0]].reason == QueryFailureReason.TIMEOUT, found[SLOW[0]]
    assert "worker restarted" in found[SLOW[0]].detail
    assert 3.0 <= found[SLOW[0]].seconds < 30, found[SLOW[0]].detail
    assert _signatures(result for result in results if result.query_id != SLOW[0]) == {
        name: local_results[name] for name, _ in others}
    # nine queries on two threads: four tasks of three, the slow one (the largest) first in the first task
    cancelled = [event for event in events
                 if isinstance(event, QueryResubmitted) and event.reason == ResubmissionReason.TASK_CANCELLED]
    assert len(cancelled) == 2, cancelled
    assert seconds < 100, f"{seconds:.0f} s: ETKDG takes 148 s here for this chain, the 3 s limit did not cut it"
    gone = before - {child.pid for child in psutil.Process().children(recursive=True) if child.is_running()}
    assert gone, "the worker stuck in ETKDG was not restarted"


def test_queries_go_to_the_cluster_in_blocks_spread_over_its_free_threads():
    """A task carries up to four queries (each task costs the driver about six messages), in input order, cut
    evenly; a few queries are spread over the threads that are free rather than queued on one."""
    tasks = [QueryTask(index, f"q{index}", "C") for index in range(16)]
    sizes = {(count, free): [len(block) for block in cut_blocks(tasks[:count], free)]
             for count, free in ((16, 4), (4, 1), (2, 4), (5, 1), (9, 4), (3, 0))}
    assert sizes == {(16, 4): [4, 4, 4, 4], (4, 1): [4], (2, 4): [1, 1], (5, 1): [3, 2], (9, 4): [3, 3, 3],
                     (3, 0): [3]}
    assert [task.index for block in cut_blocks(tasks, 4) for task in block] == list(range(16))


def test_the_other_queries_results_arrive_while_a_timed_out_querys_worker_restarts(template, tmp_path):
    """The worker stuck past the time limit is restarted without the driver waiting for it: the gate holds
    the new worker at its start until every other row is in, so the rows cannot have waited for the restart."""
    gate = tmp_path / "gate"
    others = SERIES[:24]
    library = write_smi(tmp_path / "slow_first.smi", [SLOW, *others])
    order: list[str] = []
    with gated_cluster(gate) as cluster:
        def hold_new_workers(event: object) -> None:
            if isinstance(event, ExecutorCreated):
                gate.unlink()  # the two workers are in; a restarted one waits at its start

        for result in screen(read_queries(library), [template],
                             _options(scheduler=cluster.address, query_timeout=3.0), observers=(hold_new_workers,)):
            order.append(result.query_id)
            assert result.query_id == SLOW[0] or result.ok, result.outcome.detail
            if result.query_id == SLOW[0]:
                assert result.outcome.reason == QueryFailureReason.TIMEOUT, result.outcome
        # every row is in, and the restarted worker is still held at its start: the restart has not finished
        assert sorted(order) == sorted([SLOW[0], *(name for name, _ in others)])
        assert len(cluster.client.nthreads()) == 1
        assert order.index(SLOW[0]) < len(order) - 1, f"no row came after the timeout row: {order}"
        gate.touch()
        cluster.client.wait_for_workers(2, timeout=120)  # the restart completes once its worker may start


def test_resume_after_the_driver_is_killed_completes_the_local_rows(dask_cluster, template_sdf, queries, local_rows,
                                                                    tmp_path):
    out = tmp_path / "killed"
    args = screen_args(template_sdf, queries, out, "-w", "2", "-n", N, "--executor", "dask",
                       "--scheduler", dask_cluster.address)
    proc = _start(args, tmp_path / "first.txt")
    try:
        _wait_for_rows(proc, out / "scores.csv", 3)
        proc.send_signal(signal.SIGKILL)  # the driver only; the cluster forgets its client's tasks
        proc.wait(timeout=30)
    finally:
        _cleanup(proc)
    partial = rows_without_time(out)
    assert 3 <= len(partial) < len(local_rows)
    done = run_templ(*args, "--resume")
    assert done.returncode == 0, done.stderr
    assert "already done (resumed)" in done.stdout
    assert rows_without_time(out) == local_rows


@pytest.mark.parametrize("option", [("--scheduler", "tcp://127.0.0.1:1"), ("--worker-timeout", "5")])
def test_dask_options_without_the_dask_executor_are_bad_input(template_sdf, queries, tmp_path, option):
    done = run_templ(*screen_args(template_sdf, queries, tmp_path / "out", *option))
    assert done.returncode == 2
    assert f"{option[0]} needs --executor dask" in done.stderr
    assert not (tmp_path / "out").exists()
