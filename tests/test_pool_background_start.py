"""A stream's pool started in the background: refused starts are the ladder's fallbacks, Ctrl-C leaves nothing.

Each scenario is a fresh program making a loop of ``select_best`` calls, as a user's script does
(sized, not ``TEMPL_EXACT_WORKERS``): its first call runs in the caller alone, its second starts the
pool in the background. Limits are a real child pids cgroup; the interrupt is a real SIGINT.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest
from cgroup_fixtures import child_pids_cgroup  # noqa: F401  (fixture)

from templ_pipeline.core.limits.cpu import read_cpu_budget

pytestmark = pytest.mark.skipif(read_cpu_budget().cpus < 2, reason="a pool of 2 needs 2 CPUs for this process")

QUERY = "O=C(Nc1cccnc1)c1ccc(F)cc1OC"
TIMEOUT = 240
GONE_TIMEOUT = 30.0  # seconds for every process of the program to exit once it has: "none is left behind"

_LOOP = textwrap.dedent(
    """
    import json, multiprocessing, os, signal, sys, threading, time
    from rdkit import Chem
    from templ_pipeline.core.conformers import generate_conformers
    from templ_pipeline.core.events import WorkersGranted, WorkersReduced, as_fields
    from templ_pipeline.core.executor import shutdown_pools
    from templ_pipeline.core.pools import POOLS, READY_SECONDS
    from templ_pipeline.core.scoring import select_best_with_report
    from templ_pipeline.io import examples

    template = next(e.template for e in examples() if e.name == "mpro")
    confs = generate_conformers(%(query)r, 40, seed=3)
    for conf in [Chem.Conformer(c) for c in confs.GetConformers()] * 4:
        confs.AddConformer(conf, assignId=True)  # 200: alone too small for a cold pool, a stream repays it
    mode = sys.argv[1]
    blockers = []

    def wait_until_free(tasks):
        # a joined thread is uncharged from the pids cgroup a moment after join returns (the kernel wakes the
        # joiner before it releases the task): wait until the cgroup counts it gone
        cgroup = sys.argv[2]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            limit, current = (open(os.path.join(cgroup, name)).read().strip() for name in ("pids.max", "pids.current"))
            if limit == "max" or int(limit) - int(current) >= tasks:
                return
            time.sleep(0.005)
        raise SystemExit(f"the cgroup did not uncharge {tasks} joined threads")

    def use_up_the_headroom(event):
        # once the stream's pool is granted, other tasks of the cgroup take what is left ("process": but one)
        if isinstance(event, WorkersGranted) and event.granted == 2 and not blockers:
            while True:
                release = threading.Event()
                try:
                    t = threading.Thread(target=release.wait, args=(60,)); t.start()
                except RuntimeError:
                    break
                blockers.append((t, release))
            if mode == "process":
                t, release = blockers.pop()
                release.set(); t.join(60)
                wait_until_free(1)

    def interrupt(event):
        if isinstance(event, WorkersReduced) and event.reason == "pool_starting":
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the pool starts and this call scores here

    def call(observers=()):
        seen = []
        selection = select_best_with_report(confs, template, n_workers=2, observers=(seen.append, *observers))
        return {"events": [{"event": type(e).__name__, **as_fields(e)} for e in seen
                           if type(e).__name__ in ("Fallback", "WorkersReduced", "ExecutorCreated")],
                "kinds": [str(k) for k in selection.report.executor_kinds],
                "signature": [[s.conf_id, s.shape, s.color] for s in selection.ordered]}

    if mode == "interrupt":
        print("READY", flush=True)
        call()
        call([interrupt])
        raise SystemExit("the interrupt did not stop the call")
    print("READY", flush=True)
    sys.stdin.readline()  # the test sets pids.max now
    calls = [call(), call([use_up_the_headroom])]
    POOLS.settle(READY_SECONDS)  # the background start has ended, one way or the other
    for t, release in blockers:
        release.set(); t.join(60)
    wait_until_free(len(blockers))
    calls.append(call())
    POOLS.settle(READY_SECONDS)
    shutdown_pools()
    print(json.dumps({"calls": calls, "blockers": len(blockers), "children": len(multiprocessing.active_children())}))
    """
) % {"query": QUERY}


def _sized_env() -> dict[str, str]:
    """The suite's environment without ``TEMPL_EXACT_WORKERS``: the program is sized as a user's is."""
    return {name: value for name, value in os.environ.items() if name != "TEMPL_EXACT_WORKERS"}


def _run_in(cgroup, mode: str, headroom: int) -> dict:
    argv = [sys.executable, "-c", _LOOP, mode, str(cgroup.path)]
    return cgroup.run_loaded(argv, headroom, timeout=TIMEOUT, env=_sized_env())


def _of(call: dict, event: str) -> list[dict]:
    return [e for e in call["events"] if e["event"] == event]


def _assert_unchanged(out: dict) -> None:
    first, *others = out["calls"]
    assert first["kinds"] == ["sequential"] and [e["reason"] for e in _of(first, "WorkersReduced")] == ["small_work"]
    assert all(call["signature"] == first["signature"] for call in others)  # wherever each call ran
    assert out["children"] == 0


def test_a_refused_thread_for_the_background_start_keeps_the_call_in_the_caller_as_a_fallback(child_pids_cgroup):
    out = _run_in(child_pids_cgroup, "thread", headroom=40)
    assert out["blockers"] > 0
    _assert_unchanged(out)
    second = out["calls"][1]
    assert second["kinds"] == ["sequential"] and not _of(second, "ExecutorCreated")
    (fallback,) = _of(second, "Fallback")
    assert (fallback["from_kind"], fallback["to_kind"], fallback["reason"], fallback["cause"]) == (
        "process", "sequential", "thread_start_failed", "pids_cgroup")
    assert "in the background could not start" in fallback["detail"]
    assert not [e for e in _of(second, "WorkersReduced") if e["reason"] == "pool_starting"]


def test_a_process_refused_in_the_background_is_the_next_calls_fallback(child_pids_cgroup):
    out = _run_in(child_pids_cgroup, "process", headroom=40)
    _assert_unchanged(out)
    second, third = out["calls"][1:]
    assert second["kinds"] == ["sequential"] and not _of(second, "Fallback")
    assert [e["reason"] for e in _of(second, "WorkersReduced")] == ["pool_starting"]
    (fallback,) = _of(third, "Fallback")  # seen by the next call, with the limit that refused it
    assert (fallback["from_kind"], fallback["to_kind"], fallback["reason"], fallback["cause"]) == (
        "process", "sequential", "process_start_failed", "pids_cgroup")
    assert "started in the background could not start" in fallback["detail"]
    # and it starts the pool again, in the background, running here meanwhile: a pool that comes up within the
    # call takes the batches left (the same scores, checked above)
    assert third["kinds"][0] == "sequential" and set(third["kinds"]) <= {"sequential", "process"}, third["kinds"]
    assert [e["reason"] for e in _of(third, "WorkersReduced")] == ["pool_starting"], third["events"]


def test_ctrl_c_while_the_pool_starts_in_the_background_stops_the_program_and_leaves_no_process(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", _LOOP, "interrupt"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_sized_env(),
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGINT and "KeyboardInterrupt" in err, (proc.returncode, err[-3000:])
    deadline = time.monotonic() + GONE_TIMEOUT  # multiprocessing's resource tracker exits after its parent
    while (left := _running_in_session(proc.pid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    for process in left:
        process.kill()
    assert not left, [process.cmdline() for process in left]


def _running_in_session(sid: int) -> list[psutil.Process]:
    """The processes of session ``sid`` still running. A zombie has exited: reaping one whose parent is gone is
    init's job (which, as PID 1 of some containers, does not do it)."""
    found = []
    for process in psutil.process_iter():
        try:
            if os.getsid(process.pid) == sid and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except (ProcessLookupError, PermissionError, psutil.NoSuchProcess):
            pass
    return found
