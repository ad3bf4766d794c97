"""Parsing cgroup and /proc files from samples: a fake tree under tmp_path, no mocks."""

from __future__ import annotations

import errno
import os

import pytest
from hypothesis import given, strategies as st

from templ_pipeline.core.limits import cgroup, procfs
from templ_pipeline.core.limits.classify import classify_errno, errno_of
from templ_pipeline.core.limits.collect import THREAD_TOUCH_BYTES, Collector
from templ_pipeline.core.limits.grant import compute_grant, max_workers
from templ_pipeline.core.limits.model import LIMIT_NAMES, Limit, Snapshot, StackInfo
from templ_pipeline.core.limits.stack import (
    ARENA_HEAP_RESERVE,
    address_space_fit,
    glibc_rule,
    new_malloc_arenas,
)
from templ_pipeline.core.limits.worker_cost import WorkerCost
from templ_pipeline.core.thread_manager import ThreadResourceManager

from proc_samples import (  # isort: skip
    INF, MIB, PER_THREAD, STACK, V1_CGROUP, V1_MOUNTINFO, V2_CGROUP, V2_MOUNTINFO, collector,
    make_tree, rlimits, status_text, write)

pytestmark = pytest.mark.fast

# -- /proc/self/cgroup and mountinfo -------------------------------------------------------


def test_parse_proc_cgroup_v1_and_v2_lines():
    entries = cgroup.parse_proc_cgroup(V1_CGROUP + "garbage\n3:cpu:relative\n")
    assert cgroup.CgroupEntry(8, ("pids",), "/jobs/job42") in entries
    assert cgroup.CgroupEntry(2, ("cpu", "cpuacct"), "/") in entries
    assert cgroup.CgroupEntry(0, (), "/") in entries
    assert len(entries) == 5
    assert cgroup.parse_proc_cgroup(None) == []


def test_parse_mountinfo_keeps_cgroup_mounts_and_unescapes():
    text = V1_MOUNTINFO + r"50 31 0:40 /a\040b /mnt/c\040g rw - cgroup cgroup rw,pids" + "\n"
    mounts = cgroup.parse_mountinfo(text)
    assert [m.fstype for m in mounts] == ["cgroup", "cgroup", "cgroup2", "cgroup"]
    assert mounts[1] == cgroup.Mount("/", "/sys/fs/cgroup/pids", "cgroup", ("rw", "pids"))
    assert (mounts[3].root, mounts[3].mount_point) == ("/a b", "/mnt/c g")


def test_controller_dirs_walk_from_leaf_to_mount():
    entries = cgroup.parse_proc_cgroup(V1_CGROUP)
    mounts = cgroup.parse_mountinfo(V1_MOUNTINFO)
    assert cgroup.controller_dirs("pids", entries, mounts, "/x") == [
        "/x/sys/fs/cgroup/pids/jobs/job42", "/x/sys/fs/cgroup/pids/jobs", "/x/sys/fs/cgroup/pids"]
    assert cgroup.controller_dirs("", entries, mounts) == ["/sys/fs/cgroup/unified"]
    assert cgroup.controller_dirs("blkio", entries, mounts) == []


def test_controller_dirs_of_a_container_mount_root():
    entries = cgroup.parse_proc_cgroup("5:pids:/docker/abc/sub\n")
    mounts = cgroup.parse_mountinfo("1 0 0:1 /docker/abc /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids\n")
    assert cgroup.controller_dirs("pids", entries, mounts) == [
        "/sys/fs/cgroup/pids/sub", "/sys/fs/cgroup/pids"]
    outside = cgroup.parse_proc_cgroup("5:pids:/docker/other\n")
    assert cgroup.controller_dirs("pids", outside, mounts) == []


# -- small files ---------------------------------------------------------------------------


@given(st.integers(min_value=0, max_value=2**63))
def test_parse_max_reads_integers(value):
    assert procfs.parse_max(f"{value}\n") == value
    assert procfs.parse_max(f"{value}".encode()) == value


def test_parse_max_reads_max_and_rejects_garbage():
    assert procfs.parse_max(b"max\n") == procfs.UNLIMITED
    for bad in (None, b"", b"-1", b"12abc", b"1 2", "²", b"\xff"):
        assert procfs.parse_max(bad) is None


@pytest.mark.slow
@given(st.one_of(st.binary(max_size=200), st.text(max_size=200)))
def test_parsers_never_raise(data):
    procfs.parse_max(data)
    raw = data if isinstance(data, bytes) else data.encode()
    procfs.parse_status(raw)
    procfs.parse_loadavg_tasks(raw)
    procfs.meminfo_bytes(raw, b"MemAvailable:")


@given(
    uid=st.integers(0, 2**31),
    threads=st.integers(1, 10**6),
    vm_kib=st.integers(0, 2**40),
    cap=st.integers(0, 2**41 - 1),
    order=st.permutations(range(7)),
)
def test_parse_status_finds_fields_in_any_order(uid, threads, vm_kib, cap, order):
    lines = status_text(uid, threads, vm_kib, cap).splitlines()
    text = "\n".join(lines[i] for i in order).encode()
    assert procfs.parse_status(text) == procfs.ProcStatus(threads, vm_kib * 1024, uid, cap)


def test_parse_status_of_missing_fields():
    assert procfs.parse_status(b"Name:\tx\nThreads:\tmany\n") == procfs.ProcStatus(None, None, None, None)
    assert procfs.parse_status(None).threads is None


def test_parse_loadavg_tasks():
    assert procfs.parse_loadavg_tasks(b"0.11 0.09 0.03 1/84 2887\n") == 84
    assert procfs.parse_loadavg_tasks(b"0.11 0.09 0.03 84 2887\n") is None
    assert procfs.parse_loadavg_tasks(b"0.1") is None


def test_read_bytes_reads_large_files_whole_and_fails_softly(tmp_path):
    big = tmp_path / "big"
    big.write_bytes(b"x" * 100_000)
    assert procfs.read_bytes(str(big)) == b"x" * 100_000
    assert procfs.read_bytes(str(tmp_path / "missing")) is None
    assert procfs.read_bytes(str(tmp_path)) is None  # a directory: EISDIR
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert procfs.read_bytes(str(fifo)) == b""  # no writer: must not hang


def test_count_user_tasks(tmp_path):
    write(tmp_path, {
        "1/status": status_text(uid=0, threads=1),
        "100/status": status_text(uid=1000, threads=4),
        "101/status": status_text(uid=1000, threads=2),  # root-owned dir (not dumpable): still read
        "102/status": status_text(uid=2000, threads=9),
        "self/status": status_text(uid=1000, threads=4),  # not a pid: skipped
    })
    os.chown(tmp_path / "100", 1000, 1000)
    os.chown(tmp_path / "102", 2000, 2000)
    assert procfs.count_user_tasks(1000, str(tmp_path)) == 6
    assert procfs.count_user_tasks(1000, str(tmp_path / "missing")) is None


def test_kernel_uid_maps_through_uid_map():
    ranges = procfs.parse_uid_map("0 100000 65536\n")
    assert procfs.kernel_uid(0, ranges) == 100000
    assert procfs.kernel_uid(70000, ranges) is None


def test_glibc_stack_rule():
    assert glibc_rule(INF, "x86_64") == 2 * MIB
    assert glibc_rule(INF, "aarch64") == 8 * MIB
    assert glibc_rule(8 * MIB, "x86_64") == 8 * MIB
    assert glibc_rule(4096, "x86_64") == 16384


def test_malloc_arena_settings():
    assert new_malloc_arenas({}, cpus=2, glibc=True) == 15
    assert new_malloc_arenas({"MALLOC_ARENA_MAX": "1"}, cpus=2, glibc=True) == 0
    tunables = {"GLIBC_TUNABLES": "glibc.malloc.check=0:glibc.malloc.arena_max=4",
                "MALLOC_ARENA_MAX": "1"}
    assert new_malloc_arenas(tunables, cpus=2, glibc=True) == 3
    assert new_malloc_arenas({"MALLOC_ARENA_MAX": "zero"}, cpus=1, glibc=True) == 7
    assert new_malloc_arenas({}, cpus=64, glibc=False) == 0


@given(room=st.integers(-10**9, 10**11), per=st.integers(1 << 14, 1 << 30), arenas=st.integers(0, 64))
def test_address_space_fit_is_the_most_threads_that_fit(room, per, arenas):
    def needed(n: int) -> int:
        return n * per + min(n, arenas) * ARENA_HEAP_RESERVE

    n = address_space_fit(room, per, arenas)
    assert n >= 0 and needed(n) <= max(0, room) < needed(n + 1)


# -- a whole snapshot from a tree ----------------------------------------------------------


def test_v1_pids_takes_the_tightest_level(tmp_path):
    pids = "sys/fs/cgroup/pids/jobs"
    root = make_tree(tmp_path, **{
        f"{pids}/job42/pids.max": "100\n", f"{pids}/job42/pids.current": "10\n",
        f"{pids}/pids.max": "50\n", f"{pids}/pids.current": "45\n",
    })
    snap = collector(root).collect()
    lim = snap.limit("pids_cgroup")
    assert (lim.limit, lim.used, lim.headroom, lim.enforced) == (50, 45, 5, True)
    assert lim.source == f"{root}/{pids}/pids.max"
    assert snap.binding is lim
    assert snap.threads == 3 and snap.uid == 1000


def test_v2_pids_max_everywhere_is_unlimited(tmp_path):
    base = "sys/fs/cgroup/user.slice"
    root = make_tree(tmp_path, **{
        "proc/self/cgroup": V2_CGROUP, "proc/self/mountinfo": V2_MOUNTINFO,
        f"{base}/job.scope/pids.max": "max\n", f"{base}/job.scope/pids.current": "7\n",
        f"{base}/pids.max": "max\n", f"{base}/pids.current": "70\n",
    })
    lim = collector(root).collect().limit("pids_cgroup")
    assert (lim.limit, lim.used, lim.headroom, lim.enforced) == (None, 7, None, False)
    assert not lim.constrains


def test_v2_pids_limit_is_read(tmp_path):
    scope = "sys/fs/cgroup/user.slice/job.scope"
    root = make_tree(tmp_path, **{
        "proc/self/cgroup": V2_CGROUP, "proc/self/mountinfo": V2_MOUNTINFO,
        f"{scope}/pids.max": "32\n", f"{scope}/pids.current": "30\n",
    })
    snap = collector(root).collect()
    assert snap.binding.name == "pids_cgroup" and snap.binding.headroom == 2


def test_no_pids_controller_and_unreadable_cgroup_files(tmp_path):
    lim = collector(make_tree(tmp_path / "a")).collect().limit("pids_cgroup")
    assert lim.enforced is False and lim.headroom is None
    lim = collector(make_tree(tmp_path / "b", **{"proc/self/cgroup": None})).collect().limit(
        "pids_cgroup")
    assert (lim.limit, lim.used, lim.headroom, lim.enforced) == (None, None, None, None)


def test_unreadable_pids_files_are_unknown(tmp_path):
    jobs = tmp_path / "sys/fs/cgroup/pids/jobs"
    root = make_tree(tmp_path, **{
        "sys/fs/cgroup/pids/jobs/job42/pids.current": "3\n", "sys/fs/cgroup/pids/jobs/pids.max": "9\n"})
    (jobs / "job42/pids.max").mkdir()  # exists, but read() fails with EISDIR
    os.mkfifo(jobs / "pids.current")  # a FIFO without writer must not hang the snapshot
    coll = collector(root)
    assert len(coll.pids_levels) == 2
    snap = coll.collect()
    lim = snap.limit("pids_cgroup")
    assert (lim.limit, lim.headroom, lim.enforced) == (None, None, None)
    assert snap.binding.name != "pids_cgroup"


def test_missing_proc_files_make_limits_unknown_not_binding(tmp_path):
    root = make_tree(tmp_path, **{
        "proc/loadavg": None, "proc/sys/kernel/threads-max": None, "proc/meminfo": None,
        "proc/self/status": "garbage",
    })
    snap = collector(root).collect()
    assert snap.threads is None
    assert all(snap.limit(name).headroom is None for name in LIMIT_NAMES)
    assert snap.binding is None
    assert snap.limit("pid_max").limit == 32768 and snap.limit("threads_max").limit is None


def test_sysctl_limits_count_all_tasks(tmp_path):
    snap = collector(make_tree(tmp_path)).collect()
    assert snap.limit("threads_max").headroom == 192730 - 84
    assert snap.limit("pid_max").headroom == 32768 - 84


def test_rlimit_nproc_counts_tasks_of_the_real_uid(tmp_path):
    root = make_tree(tmp_path, **{
        "proc/100/status": status_text(uid=1000, threads=5),
        "proc/101/status": status_text(uid=1001, threads=50),
    })
    lim = collector(root, nproc=20).collect().limit("rlimit_nproc")
    assert (lim.limit, lim.used, lim.headroom, lim.enforced) == (20, 5, 15, True)


@pytest.mark.parametrize(("uid", "cap", "uid_map", "enforced"), [
    (0, 0, "0 0 4294967295", False),  # root
    (1000, 1 << 24, "0 0 4294967295", False),  # CAP_SYS_RESOURCE
    (1000, 1 << 21, "0 0 4294967295", False),  # CAP_SYS_ADMIN
    (1000, 1 << 12, "0 0 4294967295", True),  # another capability
    (0, (1 << 41) - 1, "0 100000 65536", True),  # root of a user namespace: caps do not count
])
def test_rlimit_nproc_exemptions(tmp_path, uid, cap, uid_map, enforced):
    root = make_tree(tmp_path, **{
        "proc/self/status": status_text(uid=uid, cap=cap), "proc/self/uid_map": uid_map})
    lim = collector(root, nproc=64).collect().limit("rlimit_nproc")
    assert lim.enforced is enforced and lim.limit == 64
    assert (lim.headroom is not None) is enforced


def test_rlimit_nproc_unlimited(tmp_path):
    lim = collector(make_tree(tmp_path)).collect().limit("rlimit_nproc")
    assert (lim.limit, lim.enforced, lim.note) == (None, False, "unlimited")


def test_stack_memory_under_rlimit_as(tmp_path):
    root = make_tree(tmp_path, **{"proc/self/status": status_text(vm_kib=100_000)})
    snap = collector(root, as_=100_000 * 1024 + 5 * PER_THREAD + 100).collect()
    lim = snap.limit("stack_memory")
    assert snap.stack.as_fit == 5
    assert snap.stack.memory_fit is None  # heuristic overcommit: MemAvailable refuses no stack
    assert (lim.used, lim.headroom, lim.limit) == (3, 5, 8) and "RLIMIT_AS" in lim.source
    assert snap.binding is lim


def test_stack_memory_is_not_enforced_under_heuristic_overcommit(tmp_path):
    """No RLIMIT_AS, no strict overcommit, no memory cgroup limit: stacks refuse nothing, so never binding."""
    snap = collector(make_tree(tmp_path)).collect()
    lim = snap.limit("stack_memory")
    assert (lim.enforced, lim.headroom, lim.constrains) == (False, None, False)
    assert "not enforced" in lim.note
    assert snap.binding is None or snap.binding.name != "stack_memory"


def test_stack_memory_counts_malloc_arenas_under_rlimit_as(tmp_path):
    root = make_tree(tmp_path, **{"proc/self/status": status_text(vm_kib=100_000)})
    room = 2 * (PER_THREAD + ARENA_HEAP_RESERVE) + 3 * PER_THREAD
    coll = Collector(str(root / "proc"), str(root), rlimits(as_=100_000 * 1024 + room),
                     default_stack=STACK, new_arenas=2)
    lim = coll.collect().limit("stack_memory")
    assert lim.headroom == 5 and "malloc arena for up to 2" in lim.source


def test_stack_memory_from_cgroup_memory_and_strict_overcommit(tmp_path):
    mem = "sys/fs/cgroup/memory/jobs/job42"
    root = make_tree(tmp_path, **{
        f"{mem}/memory.limit_in_bytes": f"{64 * MIB}\n", f"{mem}/memory.usage_in_bytes": f"{24 * MIB}\n",
        "sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712\n",
        "sys/fs/cgroup/memory/memory.usage_in_bytes": "1\n",
    })
    coll = collector(root)
    assert [lvl.limit_path for lvl in coll.memory_levels] == [f"{root}/{mem}/memory.limit_in_bytes"]
    lim = coll.collect().limit("stack_memory")
    # a memory cgroup charges what a thread touches, not its whole stack mapping
    assert lim.headroom == 40 * MIB // THREAD_TOUCH_BYTES and "memory cgroup" in lim.source
    strict = make_tree(tmp_path / "strict", **{
        "proc/sys/vm/overcommit_memory": "2\n",
        "proc/meminfo": "MemAvailable: 1024000 kB\nCommitLimit: 200000 kB\nCommitted_AS: 100000 kB\n",
    })
    lim = collector(strict).collect().limit("stack_memory")
    assert lim.headroom == 100000 * 1024 // PER_THREAD and "CommitLimit" in lim.source


# -- the manager on a tree: cache, grants --------------------------------------------------


def test_manager_caches_snapshots(tmp_path):
    manager = ThreadResourceManager(cache_ttl=60, collector=collector(make_tree(tmp_path)))
    first = manager.snapshot()
    assert manager.snapshot() is first
    assert manager.snapshot(fresh=True) is not first
    uncached = ThreadResourceManager(cache_ttl=0, collector=collector(make_tree(tmp_path)))
    assert uncached.snapshot() is not uncached.snapshot()


def test_manager_grants_from_a_small_pids_cgroup(tmp_path):
    leaf = "sys/fs/cgroup/pids/jobs/job42"
    root = make_tree(tmp_path, **{f"{leaf}/pids.max": "12\n", f"{leaf}/pids.current": "4\n"})
    manager = ThreadResourceManager(collector=collector(root))
    assert manager.get_safe_worker_count(64, "threads", executor_kind="thread").granted == 12 - 4 - 2
    # conformer generation also runs the thread that waits for RDKit's threads
    assert manager.get_safe_worker_count(64, "conformers").granted == 12 - 4 - 2 - 1
    grant = manager.get_safe_worker_count(64, "scoring", executor_kind="thread")
    assert grant.granted == 6 and grant.reason == "pids_cgroup" and grant.headroom == 8
    assert manager.get_safe_worker_count(3, "conformers").reason is None
    with pytest.raises(ValueError):
        manager.get_safe_worker_count(1, "scoring", executor_kind="fiber")


# -- grant arithmetic and classification on synthetic snapshots ----------------------------


def snapshot_with(headrooms: dict[str, int | None], as_fit=None, memory_fit=None) -> Snapshot:
    limits = tuple(
        Limit(name, None if headrooms.get(name) is None else 10 + headrooms[name], 10,
              headrooms.get(name), headrooms.get(name) is not None, "test")
        for name in LIMIT_NAMES
    )
    return Snapshot(0.0, 10, 1000, limits, StackInfo(STACK, STACK, INF, as_fit, memory_fit))


TASK_NAMES = ("pids_cgroup", "rlimit_nproc", "threads_max", "pid_max")


@given(
    headrooms=st.dictionaries(st.sampled_from(TASK_NAMES), st.integers(-5, 500)),
    requested=st.integers(-2, 300),
    per_worker=st.integers(1, 8),
    helpers=st.integers(0, 4),
    reserve=st.integers(0, 4),
)
def test_grants_fit_every_task_limit_and_are_maximal(headrooms, requested, per_worker, helpers, reserve):
    cost = WorkerCost("process", per_worker, helpers)
    grant = compute_grant(snapshot_with(headrooms), requested, cost, reserve)
    assert 0 <= grant.granted <= max(0, requested)
    fits = [max(0, (h - reserve - helpers) // per_worker) if h - reserve >= helpers else 0
            for h in headrooms.values()]
    assert grant.granted == min([max(0, requested), *fits])
    if grant.granted < max(0, requested):
        assert grant.reason in headrooms and grant.headroom == headrooms[grant.reason]
    else:
        assert grant.reason is None


def test_grant_without_known_limits_is_the_request():
    grant = compute_grant(snapshot_with({}), 1000, WorkerCost("thread", 1, 0))
    assert (grant.granted, grant.reason, grant.headroom) == (1000, None, None)
    assert max_workers(snapshot_with({}), WorkerCost("thread", 1, 0)) is None


def test_grant_detail_names_costs():
    grant = compute_grant(snapshot_with({"pids_cgroup": 9}), 8, WorkerCost("process", 2, 3), 2)
    assert grant.granted == 2 and grant.reason == "pids_cgroup"
    assert grant.detail.startswith("pids_cgroup: 9 tasks of headroom, each process worker costs 2 "
                                   "(+3 pool helper tasks), reserve 2 -> 2 worker(s)")


def test_stack_memory_limits_threads_but_not_processes_with_own_address_space():
    snap = snapshot_with({"stack_memory": 5}, as_fit=5, memory_fit=3000)
    assert compute_grant(snap, 16, WorkerCost("thread", 1, 0), 2).granted == 3
    assert compute_grant(snap, 16, WorkerCost("process", 2, 2), 2).granted == 16
    no_room = snapshot_with({"stack_memory": 3}, as_fit=3, memory_fit=3000)
    assert compute_grant(no_room, 16, WorkerCost("process", 2, 2), 2).granted == 0
    blas_heavy = snapshot_with({"stack_memory": 5}, as_fit=5, memory_fit=3000)
    assert compute_grant(blas_heavy, 16, WorkerCost("process", 9, 2), 2).granted == 0


def test_classify_errno():
    exhausted = snapshot_with({"pids_cgroup": 0}).binding
    assert classify_errno(errno.EAGAIN, exhausted).cause == "pids_cgroup"
    assert classify_errno(errno.EAGAIN, None).cause == "unknown"
    assert classify_errno(errno.EPERM, exhausted).cause == "seccomp"
    assert classify_errno(errno.ENOMEM, None).cause == "stack_memory"
    assert classify_errno(errno.EINVAL, None).cause == "unknown"


def test_errno_of_follows_the_cause_chain():
    assert errno_of(RuntimeError("can't start new thread")) is None
    assert errno_of(None) is None
    try:
        try:
            raise BlockingIOError(errno.EAGAIN, "fork")
        except OSError as exc:
            raise RuntimeError("pool broke") from exc
    except RuntimeError as wrapped:
        assert errno_of(wrapped) == errno.EAGAIN
