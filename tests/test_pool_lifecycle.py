"""Pools started whole, bounded waits, and conformer threads under real pids limits."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import textwrap
import threading
import time

import psutil
import pytest
from cgroup_fixtures import child_pids_cgroup  # noqa: F401  (fixture)
from processes import kill_quietly
from templ_runs import templ_env

from templ_pipeline.core.conformers import generate_conformers
from templ_pipeline.core.pools import PoolRegistry
from templ_pipeline.core.scoring import select_best_with_report

QUERY = "O=C(Nc1cccnc1)c1ccc(F)cc1OC"
ORPHAN_TIMEOUT = 10.0  # seconds for a killed owner's workers to be gone
REPORT_TIMEOUT = 120.0  # a fresh program embeds 60 conformers and starts a pool: "does not hang"


def _signature(selection) -> list:
    return [[item.conf_id, item.shape, item.color] for item in selection.ordered]


def test_an_acquired_pool_needs_no_new_task(query_confs, template):
    """Every thread and worker of a process pool runs once it is acquired, before any submit."""
    registry = PoolRegistry()
    me = psutil.Process()
    threads, children = set(threading.enumerate()), {child.pid for child in me.children()}
    pool, reused = registry.acquire("process", 2)
    try:
        assert not reused
        helpers = sorted(type(thread).__name__ for thread in set(threading.enumerate()) - threads)
        assert helpers == ["Thread", "_ExecutorManagerThread"]  # the call queue's feeder, the manager
        assert all(thread.is_alive() for thread in set(threading.enumerate()) - threads)
        workers = {child.pid for child in me.children()} - children
        assert len(workers) >= 2  # the two workers (and the resource tracker, if this process had none yet)
        assert pool.submit(os.getpid).result(timeout=60) in workers
    finally:
        registry.release(pool)
        registry.shutdown_all()
    assert set(threading.enumerate()) <= threads
    assert {child.pid for child in me.children()} - children <= {child.pid for child in me.children()
                                                                  if "resource_tracker" in " ".join(child.cmdline())}


def test_workers_outlive_the_thread_that_started_their_pool(query_confs, template):
    """The parent-death signal follows the starting thread; workers exit only when the process is gone."""
    from templ_pipeline.core.events import ExecutorCreated
    from templ_pipeline.core.executor import shutdown_pools

    shutdown_pools()  # the pool is started by the thread below, not left warm by an earlier test
    started: list = []
    starter = threading.Thread(target=lambda: started.append(
        select_best_with_report(query_confs, template, n_workers=2, exact_workers=True)))
    starter.start()
    starter.join(120)
    assert started and not starter.is_alive()
    assert started[0].report.executor_kinds == ["process"]
    time.sleep(1.0)  # the workers got their parent-death signal when the starter exited
    created: list[ExecutorCreated] = []
    try:
        reference = select_best_with_report(query_confs, template, n_workers=1)
        selection = select_best_with_report(query_confs, template, n_workers=2, exact_workers=True,
                                            observers=[lambda e: isinstance(e, ExecutorCreated) and created.append(e)])
        assert [(e.kind, e.workers, e.reused) for e in created] == [("process", 2, True)]
        assert selection.report.executor_kinds == ["process"] and not selection.report.fallbacks
        assert _signature(selection) == _signature(reference)
    finally:
        shutdown_pools()


FORKSERVER_PROGRAM = textwrap.dedent("""
    import json, sys, time
    from rdkit import Chem
    from templ_pipeline.core.conformers import generate_conformers
    from templ_pipeline.core.scoring import select_best_with_report
    template = Chem.MolFromMolBlock(sys.stdin.read())
    confs = generate_conformers(sys.argv[1], 60, seed=3, n_workers=1)
    signatures = []
    for workers in (1, 2):
        selection = select_best_with_report(confs, template, n_workers=workers, exact_workers=True)
        signatures.append([[item.conf_id, item.shape, item.color] for item in selection.ordered])
    print(json.dumps({"kinds": [str(kind) for kind in selection.report.executor_kinds],
                      "fallbacks": len(selection.report.fallbacks), "same": signatures[0] == signatures[1]}),
          flush=True)
    time.sleep(600)  # killed by the test
""")


def test_forkserver_workers_score_and_end_with_their_owner(template):
    """Opt-in forkserver: a worker's parent is the fork server, not the pool's owner; it is not an orphan at start
    (every worker once ended itself there and no pool came up), and it ends once the owner is killed."""
    from rdkit import Chem

    proc = subprocess.Popen([sys.executable, "-c", FORKSERVER_PROGRAM, QUERY], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=templ_env(TEMPL_MP_START_METHOD="forkserver"))
    workers: list[psutil.Process] = []
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(Chem.MolToMolBlock(template))
        proc.stdin.close()
        ready, _, _ = select.select([proc.stdout], [], [], REPORT_TIMEOUT)
        assert ready, f"no report within {REPORT_TIMEOUT:.0f} s"
        line = proc.stdout.readline()
        assert line, f"the program ended: {proc.wait(timeout=30)}; {proc.stderr.read()[-2000:] if proc.stderr else ''}"
        report = json.loads(line)
        assert report == {"kinds": ["process"], "fallbacks": 0, "same": True}, report
        workers = psutil.Process(proc.pid).children(recursive=True)
        assert len(workers) >= 3, workers  # the fork server and two workers (and maybe the resource tracker)
        proc.kill()
        proc.wait(timeout=30)
        gone, alive = psutil.wait_procs(workers, timeout=ORPHAN_TIMEOUT)
        assert not alive, f"still running after their owner was killed: {[p.cmdline()[:3] for p in alive]}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        kill_quietly(workers)


FILLER = textwrap.dedent("""
    import sys
    import grant_probe
    with grant_probe.idle_threads_until_refused(5000) as (started, _):
        print(started, flush=True)
        sys.stdin.readline()
""")

# The pool is acquired while there is headroom, then another process of the cgroup takes every
# task, then the batches are submitted. "lazy" pools start the call queue's feeder thread at the
# first put, as ProcessPoolExecutor does by itself: that refusal kills its manager thread.
SCENARIO = textwrap.dedent("""
    import json, sys
    from concurrent.futures import ProcessPoolExecutor
    from templ_pipeline.core.batch import BatchTask, batch_query, sanitized_copy_without_conformers
    from templ_pipeline.core.events import Fallback, as_fields
    from templ_pipeline.core.executor import MonitoredExecutor
    from templ_pipeline.core.pools import PoolRegistry, new_pool, pool_context
    from templ_pipeline.core.conformers import generate_conformers
    from templ_pipeline.io import examples

    def lazy_feeder_pool(kind, workers):
        pool = ProcessPoolExecutor(workers, mp_context=pool_context())
        pool._launch_processes()
        pool._start_executor_manager_thread()
        return pool

    registry = PoolRegistry(lazy_feeder_pool if sys.argv[1] == "lazy" else new_pool)
    template = next(e.template for e in examples() if e.name == "mpro")
    confs = generate_conformers(%(query)r, 40, seed=3)
    events = []
    executor = MonitoredExecutor(2, registry=registry, exact_workers=True, observers=[events.append])
    pool, _ = registry.acquire("process", 2)
    registry.release(pool)
    print("READY", flush=True)
    sys.stdin.readline()
    base, ids = sanitized_copy_without_conformers(confs), [conf.GetId() for conf in confs.GetConformers()]
    chunks = [ids[start:start + 10] for start in range(0, len(ids), 10)]
    tasks = [BatchTask(index, template, "mpro", batch_query(base, confs, chunk), tuple(chunk))
             for index, chunk in enumerate(chunks)]
    scored = [item for result in executor.run(tasks) for item in result.scored]
    print(json.dumps({
        "signature": sorted([i.conf_id, i.shape, i.color] for i in scored),
        "kinds": executor.kinds_used,
        "fallbacks": [as_fields(e) for e in events if isinstance(e, Fallback)],
    }))
    registry.shutdown_all()
""") % {"query": QUERY}


def _popen(argv: list[str]) -> subprocess.Popen:
    env = templ_env(tests_importable=True)
    return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


def _stop(process: subprocess.Popen | None, release: bool = False) -> None:
    """End ``process`` (a filler is first asked to let its threads go), with bounded waits."""
    if process is None or process.poll() is not None:
        return
    if release:
        try:
            process.stdin.write("\n")
            process.stdin.flush()
            process.wait(timeout=30)
            return
        except (OSError, subprocess.TimeoutExpired):
            pass
    process.kill()
    process.wait(timeout=30)


def _run_filled(cgroup, mode: str) -> tuple[dict, str]:
    """Run SCENARIO in ``cgroup``: acquire a pool, let a filler process take every task, then score."""
    scenario = _popen(cgroup.wrap([sys.executable, "-c", SCENARIO, mode]))
    filler = None
    try:
        assert scenario.stdout.readline().strip() == "READY", scenario.stderr.read()[-3000:]
        cgroup.set_max(cgroup.current() + 40)
        filler = _popen(cgroup.wrap([sys.executable, "-c", FILLER]))
        assert int(filler.stdout.readline()) > 0
        assert cgroup.current() >= int((cgroup.path / "pids.max").read_text())
        out, err = scenario.communicate("go\n", timeout=180)
    finally:
        _stop(scenario)
        _stop(filler, release=True)
    assert scenario.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1]), err


@pytest.fixture(scope="module")
def reference():
    from templ_pipeline.io import examples

    template = next(e.template for e in examples() if e.name == "mpro")
    return _signature(select_best_with_report(generate_conformers(QUERY, 40, seed=3), template, n_workers=1))


def test_a_pool_acquired_before_the_cgroup_filled_up_scores_without_a_new_task(child_pids_cgroup, reference):
    out, _ = _run_filled(child_pids_cgroup, "eager")
    assert out["signature"] == sorted(reference)
    assert out["kinds"] == ["process"] and out["fallbacks"] == []


def test_a_pool_whose_feeder_thread_is_refused_is_broken_not_hung(child_pids_cgroup, reference):
    out, err = _run_filled(child_pids_cgroup, "lazy")
    assert "can't start new thread" in err  # the manager thread died of the refused feeder
    assert out["signature"] == sorted(reference)
    assert out["kinds"] == ["process", "sequential"]
    assert [(f["from_kind"], f["reason"]) for f in out["fallbacks"]] == [("process", "broken_pool")]


CONFORMERS = textwrap.dedent("""
    import json, sys, threading
    import structlog
    from rdkit import Chem
    from templ_pipeline import telemetry
    from templ_pipeline.core.canonical import canonical_molecule
    from templ_pipeline.core.conformers import EmbeddingThreads, embed_conformers
    from templ_pipeline.telemetry import observe

    telemetry.configure(synchronous=True, log_format="json", log_stream=sys.stderr)
    with_hs = Chem.AddHs(canonical_molecule(Chem.MolFromSmiles(%(query)r)))
    print("READY", flush=True)
    sys.stdin.readline()  # the test sets pids.max now: room for the grant
    with structlog.testing.capture_logs() as logs:
        threads = EmbeddingThreads(4, observe)
        granted = threads.count
        release, blockers = threading.Event(), []
        while True:  # then the headroom is used up before RDKit starts its threads
            try:
                blocker = threading.Thread(target=release.wait)
                blocker.start()
                blockers.append(blocker)
            except RuntimeError:
                break
        embedded = embed_conformers(with_hs, 30, 42, threads, random_coords=False)
    release.set()
    for blocker in blockers:
        blocker.join(5)
    fallbacks = [{k: e[k] for k in ("from_kind", "to_kind", "reason", "cause")}
                 for e in logs if e["event"] == "executor.fallback"]
    registry = telemetry.get_metrics().registry
    counted = sum(s.value for m in registry.collect() if m.name == "templ_executor_fallbacks"
                  for s in m.samples if s.name.endswith("_total"))
    print(json.dumps({"granted": granted, "final": threads.count, "fallbacks": fallbacks, "counted": counted,
                      "inline": any(e["event"] == "conformers.embedding_inline" for e in logs),
                      "positions": Chem.RemoveHs(embedded).GetConformer(7).GetPositions().tolist(),
                      "n": embedded.GetNumConformers()}))
""") % {"query": QUERY}


def test_conformer_threads_refused_after_the_grant_are_retried_with_fewer(child_pids_cgroup):
    reference = generate_conformers(QUERY, 30, seed=42, n_workers=1)
    result = child_pids_cgroup.run_loaded([sys.executable, "-c", CONFORMERS], 30, timeout=180,
                                          env=templ_env(tests_importable=True))
    assert result["granted"] == 4 and result["final"] == 1
    assert result["fallbacks"] == [
        {"from_kind": "thread", "to_kind": "thread", "reason": "thread_start_failed", "cause": "pids_cgroup"},
        {"from_kind": "thread", "to_kind": "sequential", "reason": "thread_start_failed", "cause": "pids_cgroup"},
    ]
    assert result["counted"] == 2
    assert result["inline"]  # no thread to embed in either: it ran in the main thread, said once
    assert result["n"] == 30
    assert result["positions"] == reference.GetConformer(7).GetPositions().tolist()


EVIDENCE = textwrap.dedent("""
    import json, sys
    import grant_probe
    from templ_pipeline.core.thread_manager import ThreadResourceManager

    manager = ThreadResourceManager()
    before = manager.pids_refusals()
    with grant_probe.idle_threads_until_refused(500) as (started, refusal):
        pass
    # the threads are gone again: headroom looks fine, only pids.events remembers the refusal
    with_evidence = manager.classify_start_failure(refusal, refusals_before=before)
    without = manager.classify_start_failure(refusal)
    print(json.dumps({"started": started, "refused": refusal is not None, "before": before,
                      "after": manager.pids_refusals(), "with": with_evidence.cause,
                      "without": without.cause, "detail": with_evidence.detail}))
""")


def test_a_refusal_is_classified_from_pids_events_after_the_pressure_is_gone(child_pids_cgroup):
    child_pids_cgroup.set_max(20)
    proc = _popen(child_pids_cgroup.wrap([sys.executable, "-c", EVIDENCE]))
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        _stop(proc)
    assert proc.returncode == 0, err[-3000:]
    result = json.loads(out.strip().splitlines()[-1])
    assert result["refused"] and result["after"] > result["before"] >= 0, result
    assert result["with"] == "pids_cgroup", result
    assert result["without"] == "unknown", result  # what the headroom alone says once the threads are gone
