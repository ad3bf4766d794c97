"""A node-local ledger of tasks granted but not yet started, shared by this project's processes.

Several jobs in one pids cgroup (a login node, a pod), or under one user's
``RLIMIT_NPROC``, each read the same headroom and would each grant themselves
all of it: measured here, six ``templ select-best -w 4`` jobs started together in
``pids.max=40`` made the kernel refuse 3 to 14 task creations per run. So a
process takes its grant under the ledger's lock, counts what the others have
reserved and not started yet, and reserves the tasks of its own pool until the
pool has started (its tasks then show in ``pids.current``). Grants made at the
same moment add up to at most the headroom less one shared reserve.

Nobody else may steer it: the ledger lives in a directory only its user can write
(mode 0700, owned by that uid: ``$TEMPL_LEDGER_DIR``, else under
``$XDG_RUNTIME_DIR``, else ``/dev/shm/templ-ledger-UID``), opened without following
symlinks, every entry is read through that directory's descriptor with
``O_NOFOLLOW`` and counted only if it is a regular file of our uid that parses,
and an entry counts only while its process lives (pid and start time, so a
reused pid does not revive it): a ``kill -9`` leaves no claim behind. Where the
ledger cannot be used (read-only filesystem, foreign owner, a planted symlink),
the process grants alone, as without it.

``fcntl.flock`` is the library call for the lock; it is taken with ``LOCK_NB`` in
short steps up to a deadline, because a blocking ``flock`` has no timeout.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import stat
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

from templ_pipeline.core.limits.procfs import read_bytes

LOCK_TIMEOUT_SECONDS = 2.0
_LOCK_STEP = 0.01
_MAX_TASKS = 1 << 20  # an entry claiming more is not ours to trust
_ENTRY_SUFFIX = ".claim"


class LedgerUnavailable(Exception):
    """The ledger cannot be used here; the message says why (the caller grants alone)."""


@dataclass(frozen=True, slots=True)
class Reservation:
    """Tasks process ``pid`` (started at ``start``, in clock ticks since boot) will still start."""

    pid: int
    start: int
    tasks: int


def parse_reservation(data: bytes | None) -> Reservation | None:
    """A reservation from an entry's contents; None for anything malformed."""
    try:
        fields = json.loads(data or b"")
        pid, start, tasks = fields["pid"], fields["start"], fields["tasks"]
    except (ValueError, TypeError, KeyError):
        return None
    if not all(type(value) is int for value in (pid, start, tasks)):
        return None
    if pid <= 0 or start < 0 or not 0 <= tasks <= _MAX_TASKS:
        return None
    return Reservation(pid, start, tasks)


def parse_start_time(stat_text: bytes | None) -> int | None:
    """Field 22 of ``/proc/PID/stat`` (start time); the name in field 2 may hold spaces and parens."""
    if not stat_text:
        return None
    _, _, rest = stat_text.rpartition(b")")
    fields = rest.split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def process_start_time(pid: int, proc_root: str = "/proc") -> int | None:
    """When ``pid`` started, None when it is gone."""
    return parse_start_time(read_bytes(f"{proc_root}/{pid}/stat"))


def default_root(uid: int, environ: Mapping[str, str] = os.environ) -> str:
    """Where the ledger of ``uid`` lives (see the module docstring)."""
    if environ.get("TEMPL_LEDGER_DIR"):
        return environ["TEMPL_LEDGER_DIR"]
    runtime = environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime):
        return os.path.join(runtime, "templ-ledger")
    return f"/dev/shm/templ-ledger-{uid}"


def _private_dir(path: str, uid: int, parent_fd: int | None = None) -> int:
    """Open (creating it 0700) a directory of ``uid`` only, without following a symlink; its descriptor."""
    name = path if parent_fd is None else os.path.basename(path)
    try:
        os.mkdir(name, 0o700, dir_fd=parent_fd)
    except FileExistsError:
        pass
    except OSError as error:
        raise LedgerUnavailable(f"cannot create {path}: {error.strerror}") from error
    try:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
    except OSError as error:
        why = "is a symlink" if error.errno in (errno.ELOOP, errno.ENOTDIR) else error.strerror
        raise LedgerUnavailable(f"{path} {why}") from error
    info = os.fstat(fd)
    if info.st_uid != uid or info.st_mode & 0o077:
        os.close(fd)
        raise LedgerUnavailable(f"{path} is not private to uid {uid} (owner {info.st_uid}, "
                                f"mode {stat.filemode(info.st_mode)})")
    return fd


class Book:
    """The reservations of one key, read and written while its lock is held."""

    def __init__(self, dir_fd: int, uid: int, proc_root: str) -> None:
        self._dir_fd = dir_fd
        self._uid = uid
        self._proc_root = proc_root

    def reserved_by_others(self) -> int:
        """Tasks other live processes have reserved; entries of gone processes are removed."""
        total = 0
        for name, reservation in self._entries():
            alive = process_start_time(reservation.pid, self._proc_root) == reservation.start
            if not alive:
                self._remove(name)
            elif reservation.pid != os.getpid():
                total += reservation.tasks
        return total

    def reserve(self, tasks: int) -> str:
        """Reserve ``tasks`` for this process; returns the claim to release."""
        start = process_start_time(os.getpid(), self._proc_root)
        if start is None:
            raise LedgerUnavailable(f"{self._proc_root}/self/stat is unreadable")
        claim = f"{os.getpid()}-{uuid.uuid4().hex[:12]}{_ENTRY_SUFFIX}"
        body = json.dumps({"pid": os.getpid(), "start": start, "tasks": tasks}).encode()
        fd = os.open(claim, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                     dir_fd=self._dir_fd)
        try:
            os.write(fd, body)
        finally:
            os.close(fd)
        return claim

    def _entries(self) -> Iterator[tuple[str, Reservation]]:
        for name in os.listdir(self._dir_fd):
            if not name.endswith(_ENTRY_SUFFIX):
                continue
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=self._dir_fd)
            except OSError:
                continue  # a symlink, or gone meanwhile
            try:
                info = os.fstat(fd)
                data = os.read(fd, 4096) if stat.S_ISREG(info.st_mode) and info.st_uid == self._uid else None
            finally:
                os.close(fd)
            reservation = parse_reservation(data)
            if reservation is not None:
                yield name, reservation

    def _remove(self, name: str) -> None:
        try:
            os.unlink(name, dir_fd=self._dir_fd)
        except OSError:
            pass


class Ledger:
    """The ledger of this process's user; ``open`` raises :class:`LedgerUnavailable` where it cannot be used."""

    def __init__(self, root: str | None = None, *, uid: int | None = None, proc_root: str = "/proc",
                 lock_timeout: float = LOCK_TIMEOUT_SECONDS) -> None:
        self.uid = os.geteuid() if uid is None else uid
        self.root = root or default_root(self.uid)
        self._proc_root = proc_root
        self._lock_timeout = lock_timeout

    @contextmanager
    def book(self, key: str) -> Iterator[Book]:
        """The reservations of ``key`` (a cgroup path or a uid), with its lock held inside the block."""
        root_fd = _private_dir(self.root, self.uid)
        try:
            digest = hashlib.sha256(key.encode()).hexdigest()[:32]
            key_fd = _private_dir(os.path.join(self.root, digest), self.uid, parent_fd=root_fd)
        finally:
            os.close(root_fd)
        try:
            lock_fd = self._lock(key_fd)
            try:
                yield Book(key_fd, self.uid, self._proc_root)
            finally:
                os.close(lock_fd)  # closing the descriptor drops the flock
        finally:
            os.close(key_fd)

    def release(self, key: str, claim: str) -> None:
        """Drop a claim made by :meth:`Book.reserve` (a claim already gone is fine)."""
        try:
            with self.book(key) as book:
                book._remove(claim)
        except LedgerUnavailable:
            pass

    def _lock(self, key_fd: int) -> int:
        try:
            fd = os.open("lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=key_fd)
        except OSError as error:
            raise LedgerUnavailable(f"cannot open the ledger lock: {error.strerror}") from error
        deadline = time.monotonic() + self._lock_timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise LedgerUnavailable(f"the ledger lock stayed taken for {self._lock_timeout:g} s") from None
                time.sleep(_LOCK_STEP)
