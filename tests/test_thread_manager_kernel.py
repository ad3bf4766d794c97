"""The thread manager against the real kernel: pids cgroups, RLIMIT_NPROC, RLIMIT_AS, fork."""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from cgroup_fixtures import PidsCgroup, child_pids_cgroup  # noqa: F401  (fixture)
from templ_runs import templ_env

from templ_pipeline.core.limits.grant import RESERVE_TASKS
from templ_pipeline.core.limits.worker_cost import measure_process_worker_tasks, worker_cost
from templ_pipeline.core.thread_manager import (
    LIMIT_NAMES,
    ThreadResourceManager,
    get_thread_manager,
    log_thread_status,
    probe_native_thread,
)

REPO = Path(__file__).resolve().parents[1]
NOBODY = 65534
_THREADS = "import re; print(re.search(r'Threads:\\s+(\\d+)', open('/proc/self/status').read())[1])"


def run_python(code: str, argv_prefix: list[str] | None = None, **kwargs) -> dict:
    """Run ``python -c code`` (optionally behind ``argv_prefix``) and parse its last stdout line."""
    argv = [sys.executable, "-c", code]
    env = kwargs.pop("env", None) or templ_env(tests_importable=True)
    proc = subprocess.run(argv if argv_prefix is None else argv_prefix(argv), cwd=REPO, text=True,
                          capture_output=True, timeout=60, env=env, **kwargs)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


def fresh_tasks(imports: str) -> int:
    """Tasks of a fresh interpreter after ``imports`` (measured outside any test cgroup)."""
    proc = subprocess.run([sys.executable, "-c", f"{imports}\n{_THREADS}"], cwd=REPO, text=True,
                          capture_output=True, timeout=60, check=True)
    return int(proc.stdout)


def test_probe_native_thread_succeeds_on_a_healthy_machine():
    assert probe_native_thread() == 0


def test_snapshot_reads_this_process():
    manager = ThreadResourceManager()
    started = threading.Event()
    stop = threading.Event()
    thread = threading.Thread(target=lambda: (started.set(), stop.wait(60)))
    thread.start()
    started.wait(30)
    try:
        snap = manager.snapshot(fresh=True)
        threads = int(re.search(r"Threads:\s+(\d+)", Path("/proc/self/status").read_text())[1])
        assert snap.threads == threads >= 2
        assert tuple(lim.name for lim in snap.limits) == LIMIT_NAMES
        for name in ("threads_max", "pid_max"):
            lim = snap.limit(name)
            assert lim.constrains and lim.headroom == lim.limit - lim.used > 0
        assert snap.limit("stack_memory").used == threads
        if os.getuid() == 0:
            assert snap.limit("rlimit_nproc").enforced is False
        assert manager.snapshot() is snap
        assert manager.snapshot(fresh=True) is not snap
    finally:
        stop.set()
        thread.join(30)


def test_thread_status_on_this_machine_is_logged_with_its_binding_limit(caplog):
    health = get_thread_manager().health()
    assert health["status"] == "ok" and health["threads"] >= health["python_threads"] >= 1
    assert health["binding_limit"] in LIMIT_NAMES and health["headroom"] > RESERVE_TASKS
    assert 0.0 <= health["pressure"] < 0.8
    with caplog.at_level("DEBUG", logger="templ_pipeline.thread_manager"):
        log_thread_status("before scoring")
    (line,) = [r.message for r in caplog.records if r.message.startswith("before scoring: ")]
    assert f"binding limit {health['binding_limit']}" in line and line.endswith("status ok")


def test_forked_child_gets_its_own_manager():
    parent = get_thread_manager()
    parent_snapshot = parent.snapshot()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            child = get_thread_manager()
            fresh = child is not parent and child.pid == os.getpid() and child is get_thread_manager()
            # a reference kept from the parent does not serve the parent's snapshot either
            fresh = fresh and parent.snapshot() is not parent_snapshot
            os.write(write_end, b"1" if fresh else b"0")
        finally:
            os._exit(0)
    os.close(write_end)
    answer = os.read(read_end, 1)
    os.close(read_end)
    os.waitpid(pid, 0)
    assert answer == b"1"
    assert get_thread_manager() is parent


def test_process_worker_cost_model_covers_a_real_worker():
    measured = measure_process_worker_tasks()
    assert 1 <= measured <= worker_cost("process").per_worker


GRANT_SCRIPT = r"""
import json, multiprocessing, os, threading
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from rdkit.Chem import AllChem  # what a scoring worker imports (numpy: OpenBLAS threads)
from templ_pipeline.core.thread_manager import get_safe_worker_count, get_thread_manager
from templ_pipeline.core.limits.worker_cost import worker_cost
from templ_pipeline.core.pools import pool_context, worker_environment
import grant_probe

PIDS = "{pids}"

snap = get_thread_manager().snapshot(fresh=True)
pids = snap.limit("pids_cgroup")
process = get_safe_worker_count(64, "scoring")
thread = get_safe_worker_count(64, "threads", executor_kind="thread")
out = dict(limit=pids.limit, used=pids.used, headroom=pids.headroom,
           binding=snap.binding.name, cost=worker_cost("process").__repr__(),
           process=process.__repr__(), thread=thread.__repr__(),
           process_granted=process.granted, thread_granted=thread.granted,
           per_worker=worker_cost("process").per_worker, helpers=worker_cost("process").fixed_tasks)
if process.granted:
    ctx = pool_context()  # started the way the project starts its pools
    barrier = ctx.Barrier(process.granted)
    with worker_environment(), ProcessPoolExecutor(process.granted, mp_context=ctx, initializer=grant_probe.init,
                                                   initargs=(barrier,)) as pool:
        results = list(pool.map(grant_probe.work, [PIDS] * process.granted))
    out["process_workers"] = len({{pid for pid, _ in results}})
    out["process_peak"] = max(peak for _, peak in results)
if thread.granted:
    tbarrier = threading.Barrier(thread.granted)
    def twork(_):
        tbarrier.wait(30)
        return threading.get_ident()
    with ThreadPoolExecutor(thread.granted) as pool:
        out["thread_workers"] = len(set(pool.map(twork, range(thread.granted))))
print(json.dumps(out))
"""


def test_grants_fit_a_small_pids_cgroup_and_start(child_pids_cgroup: PidsCgroup):
    base = fresh_tasks("from rdkit.Chem import AllChem")
    child_pids_cgroup.set_max(base + 8)
    out = run_python(GRANT_SCRIPT.format(pids=child_pids_cgroup.path), child_pids_cgroup.wrap)
    assert out["binding"] == "pids_cgroup"
    assert out["limit"] == base + 8 and out["headroom"] == out["limit"] - out["used"]
    room = out["headroom"] - RESERVE_TASKS
    # never more than the headroom allows, and not fewer either (no arbitrary cap)
    assert out["process_granted"] == max(0, (room - out["helpers"]) // out["per_worker"]) >= 1, out
    assert out["thread_granted"] == room >= 1, out
    # starting every granted worker succeeded, and the process model held at the peak
    assert out["process_workers"] == out["process_granted"]
    assert out["process_peak"] + RESERVE_TASKS <= out["limit"], out
    assert out["thread_workers"] == out["thread_granted"]


EXHAUST_SCRIPT = r"""
import json, os
import grant_probe
from templ_pipeline.core.thread_manager import (
    classify_start_failure, get_thread_manager, probe_native_thread)

get_thread_manager().snapshot()  # set up before the cgroup is full
with grant_probe.idle_threads_until_refused(200) as (started, error):
    found = classify_start_failure(error)
    probe = probe_native_thread()
    try:
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        fork = None
    except OSError as exc:
        fork = classify_start_failure(exc)
print(json.dumps(dict(error=str(error), started=started, cause=found.cause,
                      errno=found.errno, detail=found.detail, probe=probe,
                      fork_cause=fork and fork.cause, fork_errno=fork and fork.errno)))
"""


def test_exhausted_pids_cgroup_is_classified(child_pids_cgroup: PidsCgroup):
    child_pids_cgroup.set_max(fresh_tasks("import templ_pipeline.core.thread_manager") + 4)
    out = run_python(EXHAUST_SCRIPT, child_pids_cgroup.wrap)
    assert out["error"] == "can't start new thread" and 1 <= out["started"] <= 4, out
    assert out["cause"] == "pids_cgroup" and "pids.max" in out["detail"], out
    assert out["probe"] == errno.EAGAIN
    assert (out["fork_cause"], out["fork_errno"]) == ("pids_cgroup", errno.EAGAIN)


NPROC_SCRIPT = r"""
import json, os, resource
# import everything first: the interpreter lives under /root, which nobody cannot read
import grant_probe
import templ_pipeline.doctor as doctor
from templ_pipeline.core.limits.procfs import count_user_tasks
from templ_pipeline.core.thread_manager import (
    classify_start_failure, get_safe_worker_count, get_thread_manager)

limit = count_user_tasks({uid}) + 1 + {extra}
resource.setrlimit(resource.RLIMIT_NPROC, (limit, limit))
os.setgroups([])
os.setgid({uid})
os.setuid({uid})
report = doctor.build_report()
grant = get_safe_worker_count(64, "threads", executor_kind="thread")
grant_probe.run_threads_together(grant.granted)
with grant_probe.idle_threads_until_refused(100) as (started, error):
    found = error and classify_start_failure(error)
print(json.dumps(dict(report=report, limit=limit, granted=grant.granted,
                      cause=found and found.cause)))
"""


def test_rlimit_nproc_binds_for_a_non_root_user():
    if os.geteuid() != 0:
        pytest.skip("switching to user nobody needs root")
    extra = 6
    out = run_python(NPROC_SCRIPT.format(uid=NOBODY, extra=extra))
    report = out["report"]
    nproc = next(lim for lim in report["limits"] if lim["name"] == "rlimit_nproc")
    assert report["binding_limit"] == "rlimit_nproc" and nproc["binding"], report
    assert nproc["enforced"] is True and nproc["limit"] == out["limit"]
    assert nproc["headroom"] == nproc["limit"] - nproc["used"] and nproc["used"] >= report["threads"]
    assert out["granted"] == nproc["headroom"] - RESERVE_TASKS >= 1
    assert out["cause"] == "rlimit_nproc"
    assert not any("root" in warning for warning in report["warnings"])


STACK_SCRIPT = r"""
import json, resource, threading
import grant_probe
from templ_pipeline.core.limits.procfs import parse_status, read_bytes
from templ_pipeline.core.limits.stack import ARENA_HEAP_RESERVE
from templ_pipeline.core.thread_manager import (
    classify_start_failure, get_safe_worker_count, get_thread_manager)

manager = get_thread_manager()
per_thread = manager.snapshot().stack.stack_bytes + resource.getpagesize()
vm_size = parse_status(read_bytes("/proc/self/status")).vm_size
room = {stacks} * per_thread + {heaps} * ARENA_HEAP_RESERVE
resource.setrlimit(resource.RLIMIT_AS, (vm_size + room, resource.RLIM_INFINITY))
snap = manager.snapshot(fresh=True)
grant = get_safe_worker_count(64, "threads", executor_kind="thread")
scoring = get_safe_worker_count(2, "scoring")

def body(barrier):
    locks = [threading.Lock() for _ in range(10)]  # malloc in this thread: maybe a new arena
    barrier.wait(30)

grant_probe.run_threads_together(grant.granted, body)
with grant_probe.idle_threads_until_refused(100) as (started, error):
    found = error and classify_start_failure(error)
print(json.dumps(dict(binding=snap.binding.name, headroom=snap.binding.headroom,
                      as_fit=snap.stack.as_fit, granted=grant.granted, reason=grant.reason,
                      scoring=scoring.granted, started=started,
                      cause=found and found.cause, errno=found and found.errno)))
"""


@pytest.mark.parametrize(("arena_max", "stacks", "heaps", "fit"), [
    ("1", 12, 0, 12),  # no arena beyond the main one: stacks alone
    (None, 12, 4, 4),  # default arenas: each new thread may reserve a 64 MiB heap as well
])
def test_rlimit_as_makes_stack_memory_bind(arena_max, stacks, heaps, fit):
    arena = {"MALLOC_ARENA_MAX": arena_max} if arena_max else {}
    env = templ_env(("MALLOC_ARENA_MAX", "GLIBC_TUNABLES"), tests_importable=True, **arena)
    out = run_python(STACK_SCRIPT.format(stacks=stacks, heaps=heaps), env=env)
    assert out["binding"] == "stack_memory" and out["headroom"] == out["as_fit"] == fit, out
    # the granted threads (each mallocs) all started: the barrier above would have failed
    assert out["granted"] == fit - RESERVE_TASKS and out["reason"] == "stack_memory"
    assert out["scoring"] == 2, "process workers have their own address space"
    assert out["cause"] == "stack_memory", out
    assert out["errno"] is None  # RuntimeError has no errno: classified from the snapshot


def test_stack_memory_does_not_bind_on_this_machines_defaults():
    """Thread stacks are committed lazily: without RLIMIT_AS, strict overcommit or a memory cgroup limit, no bind."""
    import resource

    from templ_pipeline.core.limits.collect import Collector

    manager = ThreadResourceManager()
    if resource.getrlimit(resource.RLIMIT_AS)[0] != resource.RLIM_INFINITY:
        pytest.skip("RLIMIT_AS is set here: stack memory can bind")
    if Path("/proc/sys/vm/overcommit_memory").read_text().strip() == "2" or Collector().memory_levels:
        pytest.skip("strict overcommit or a memory cgroup limit applies here: stack memory can bind")
    snap = manager.snapshot(fresh=True)
    stack = snap.limit("stack_memory")
    assert stack.enforced is False and not stack.constrains, stack
    assert snap.binding is not None and snap.binding.name != "stack_memory", snap.binding
