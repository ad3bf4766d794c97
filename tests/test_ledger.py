"""The shared grant ledger: grants of processes under one limit add up, and nobody else can steer them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from cgroup_fixtures import child_pids_cgroup  # noqa: F401  (fixture)
from proc_samples import make_tree
from templ_runs import templ_env

from templ_pipeline.core.limits.collect import Collector
from templ_pipeline.core.limits.ledger import (
    Ledger,
    LedgerUnavailable,
    Reservation,
    parse_reservation,
    parse_start_time,
    process_start_time,
)
from templ_pipeline.core.thread_manager import ThreadResourceManager

pytestmark = pytest.mark.fast

NOBODY = 65534
KEY = "pids:test"


def _private(path: Path) -> Path:
    path.mkdir(mode=0o700)
    return path


@pytest.fixture
def sleeper():
    """A live process of ours that the test writes reservations for."""
    proc = subprocess.Popen(["sleep", "60"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=10)


def _entry(root: Path, key: str, reservation: dict | bytes, name: str = "1-x.claim") -> Path:
    """Write an entry into the book of ``key`` (the book directory is made by opening it once)."""
    with Ledger(str(root)).book(key):
        pass
    (book,) = [p for p in root.iterdir() if p.is_dir()]
    path = book / name
    path.write_bytes(reservation if isinstance(reservation, bytes) else json.dumps(reservation).encode())
    return path


def test_parse_reservation_takes_only_well_formed_entries():
    assert parse_reservation(b'{"pid": 12, "start": 345, "tasks": 7}') == Reservation(12, 345, 7)
    for bad in (b"", b"[]", b"{", b'{"pid": 12, "start": 345}', b'{"pid": "12", "start": 345, "tasks": 7}',
                b'{"pid": 12, "start": 345, "tasks": -1}', b'{"pid": 0, "start": 1, "tasks": 1}',
                b'{"pid": 12, "start": 345, "tasks": true}', b'{"pid": 12, "start": 345, "tasks": 99999999}', None):
        assert parse_reservation(bad) is None, bad


def test_parse_start_time_survives_a_process_name_with_spaces_and_parens():
    stat = b"4242 (a (b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 1000 10"
    assert parse_start_time(stat) == 98765
    assert parse_start_time(b"garbage") is None and parse_start_time(None) is None
    assert process_start_time(os.getpid()) is not None


def test_a_live_process_counts_and_a_gone_one_is_reclaimed(tmp_path, sleeper):
    root = _private(tmp_path / "ledger")
    live = _entry(root, KEY, {"pid": sleeper.pid, "start": process_start_time(sleeper.pid), "tasks": 7}, "a.claim")
    _entry(root, KEY, {"pid": sleeper.pid, "start": 1, "tasks": 50}, "reused-pid.claim")  # another start time
    ledger = Ledger(str(root))
    with ledger.book(KEY) as book:
        assert book.reserved_by_others() == 7
        mine = book.reserve(3)
        assert book.reserved_by_others() == 7  # its own claims are not "others"
    assert not (live.parent / "reused-pid.claim").exists()  # a dead claim is removed
    ledger.release(KEY, mine)
    assert not (live.parent / mine).exists()
    sleeper.kill()
    sleeper.wait(timeout=10)
    with ledger.book(KEY) as book:
        assert book.reserved_by_others() == 0
    assert not live.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="planting another uid's entry needs root")
def test_entries_of_another_uid_malformed_ones_and_symlinks_count_for_nothing(tmp_path, sleeper):
    root = _private(tmp_path / "ledger")
    start = process_start_time(sleeper.pid)
    foreign = _entry(root, KEY, {"pid": sleeper.pid, "start": start, "tasks": 30}, "foreign.claim")
    os.chown(foreign, NOBODY, NOBODY)
    _entry(root, KEY, b'{"pid": 1, "tasks": "all"}', "malformed.claim")
    target = tmp_path / "elsewhere.json"
    target.write_text(json.dumps({"pid": sleeper.pid, "start": start, "tasks": 30}))
    os.symlink(target, foreign.parent / "link.claim")
    with Ledger(str(root)).book(KEY) as book:
        assert book.reserved_by_others() == 0


@pytest.mark.parametrize("plant", ["symlink", "open_mode", "foreign_owner"])
def test_a_ledger_directory_that_is_not_ours_alone_is_refused(tmp_path, plant):
    root = tmp_path / "ledger"
    if plant == "symlink":
        os.symlink(_private(tmp_path / "real"), root)
    elif plant == "open_mode":
        root.mkdir()
        root.chmod(0o777)
    else:
        if os.geteuid() != 0:
            pytest.skip("giving a directory to another uid needs root")
        _private(root)
        os.chown(root, NOBODY, NOBODY)
    with pytest.raises(LedgerUnavailable):
        with Ledger(str(root)).book(KEY):
            pass


def test_a_lock_held_elsewhere_is_waited_for_a_bounded_time(tmp_path):
    root = _private(tmp_path / "ledger")
    ledger = Ledger(str(root), lock_timeout=0.3)
    with ledger.book(KEY):
        pass
    (book,) = [p for p in root.iterdir() if p.is_dir()]
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import fcntl, sys
        f = open(sys.argv[1], "a"); fcntl.flock(f, fcntl.LOCK_EX); print("held", flush=True); sys.stdin.readline()
    """), str(book / "lock")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LedgerUnavailable, match="stayed taken"):
            with ledger.book(KEY):
                pass
    finally:
        holder.kill()
        holder.wait(timeout=10)


def _manager(tree: Path, ledger_root: Path) -> ThreadResourceManager:
    collector = Collector(str(tree / "proc"), str(tree))
    return ThreadResourceManager(collector=collector, ledger=Ledger(str(ledger_root)))


def test_a_grant_leaves_out_what_others_reserved_and_reserves_its_own(tmp_path, sleeper):
    leaf = "sys/fs/cgroup/pids/jobs/job42"
    tree = make_tree(tmp_path / "tree", **{f"{leaf}/pids.max": "30\n", f"{leaf}/pids.current": "4\n"})
    ledger_root = _private(tmp_path / "ledger")
    manager = _manager(tree, ledger_root)
    alone = manager.claim_workers(8, "scoring", executor_kind="process")
    assert alone.granted == 8 and alone.claim is not None  # 30 - 4 - 2 reserve - 3 helpers >= 8
    manager.release(alone)
    # another live process of ours reserved 15 tasks of the same cgroup
    key = alone.claim.key
    _entry(ledger_root, key, {"pid": sleeper.pid, "start": process_start_time(sleeper.pid), "tasks": 15}, "b.claim")
    shared = manager.claim_workers(8, "scoring", executor_kind="process")
    assert shared.granted == 30 - 4 - 15 - 2 - 3 and shared.reason == "reserved_by_others", shared
    assert "15 tasks reserved by other processes" in shared.detail
    book = ledger_root / next(p.name for p in ledger_root.iterdir() if p.is_dir())
    claims = {p.name for p in book.glob("*.claim")} - {"b.claim"}
    assert len(claims) == 1 and json.loads((book / claims.pop()).read_text())["tasks"] == shared.granted + 3
    manager.release(shared)
    assert {p.name for p in book.glob("*.claim")} == {"b.claim"}


def test_an_unusable_ledger_means_granting_alone(tmp_path, caplog):
    leaf = "sys/fs/cgroup/pids/jobs/job42"
    tree = make_tree(tmp_path / "tree", **{f"{leaf}/pids.max": "30\n", f"{leaf}/pids.current": "4\n"})
    planted = tmp_path / "ledger"
    os.symlink(_private(tmp_path / "attacker"), planted)
    manager = _manager(tree, planted)
    with caplog.at_level("WARNING", logger="templ_pipeline.thread_manager"):
        grants = [manager.claim_workers(8, "scoring", executor_kind="process") for _ in range(3)]
    assert all(g.granted == 8 and g.claim is None for g in grants)
    assert sum("ledger is unusable" in r.message for r in caplog.records) == 1  # said once
    assert not any((tmp_path / "attacker").iterdir())


JOB = textwrap.dedent("""
    import json, sys, time
    from templ_pipeline.core.limits.ledger import Ledger
    from templ_pipeline.core.thread_manager import ThreadResourceManager
    manager = ThreadResourceManager(ledger=Ledger(sys.argv[1]))
    grant = manager.claim_workers(4, "scoring", executor_kind="process")
    print(json.dumps({"granted": grant.granted, "reason": grant.reason, "claimed": grant.claim is not None}),
          flush=True)
    if sys.argv[2] == "hold":
        time.sleep(120)
""")


def test_a_killed_jobs_reservation_is_reclaimed(child_pids_cgroup, tmp_path):
    """Job A holds its reservation; B is cut by it; A is killed with SIGKILL; C is granted as if alone."""
    ledger_root = _private(tmp_path / "ledger")
    env = templ_env(tests_importable=True)

    def job(mode: str) -> subprocess.Popen:
        return subprocess.Popen(child_pids_cgroup.wrap([sys.executable, "-c", JOB, str(ledger_root), mode]),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)

    child_pids_cgroup.set_max(16)  # 4 workers + 3 pool helpers = 7 tasks each; room for one such pool
    holder = job("hold")
    try:
        first = json.loads(holder.stdout.readline())
        assert first == {"granted": 4, "reason": None, "claimed": True}, holder.stderr.read()[-2000:]
        out, err = job("once").communicate(timeout=60)
        cut = json.loads(out)
        assert cut["granted"] < 4 and cut["reason"] == "reserved_by_others", (cut, err[-2000:])
        holder.kill()
        holder.wait(timeout=10)
        out, err = job("once").communicate(timeout=60)
        assert json.loads(out) == {"granted": 4, "reason": None, "claimed": True}, err[-2000:]
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(timeout=10)
