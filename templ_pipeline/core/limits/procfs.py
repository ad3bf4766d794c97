"""Cheap, never-raising readers and parsers for small /proc files."""

from __future__ import annotations

import os
from dataclasses import dataclass

_READ_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK  # O_NONBLOCK: a FIFO must not hang us
_CHUNK = 16384


def read_bytes(path: str) -> bytes | None:
    """Return the contents of a small file, or None when it is missing or unreadable."""
    try:
        fd = os.open(path, _READ_FLAGS)
    except OSError:
        return None
    try:
        data = os.read(fd, _CHUNK)
        if len(data) == _CHUNK:  # larger than one chunk (mountinfo on busy hosts)
            chunks = [data]
            while chunk := os.read(fd, _CHUNK):
                chunks.append(chunk)
            data = b"".join(chunks)
        return data
    except OSError:
        return None
    finally:
        os.close(fd)


def read_text(path: str) -> str | None:
    """Like :func:`read_bytes`, decoded (undecodable bytes are replaced)."""
    data = read_bytes(path)
    return None if data is None else data.decode("utf-8", "replace")


def parse_int(data: bytes | str | None) -> int | None:
    """Parse a non-negative integer file such as ``threads-max``; None for anything else."""
    if data is None:
        return None
    text = data.strip()
    if not text.isdigit():  # also rejects signs, blanks and non-ASCII digits
        return None
    try:
        return int(text)
    except ValueError:
        return None


UNLIMITED = -1
"""Returned by :func:`parse_max` for the literal ``max``."""


def parse_max(data: bytes | str | None) -> int | None:
    """Parse a cgroup limit such as ``pids.max``: an integer, UNLIMITED for ``max``, else None."""
    if data is None:
        return None
    text = data.strip()
    if text in (b"max", "max"):
        return UNLIMITED
    return parse_int(text)


def field(data: bytes, key: bytes) -> bytes | None:
    """Return the raw value after ``key`` at the start of a line in ``Key:\\tvalue`` files."""
    if data.startswith(key):
        start = len(key)
    else:
        pos = data.find(b"\n" + key)
        if pos < 0:
            return None
        start = pos + 1 + len(key)
    end = data.find(b"\n", start)
    return data[start:] if end < 0 else data[start:end]


def field_int(data: bytes, key: bytes) -> int | None:
    """First integer of a ``Key: value [unit]`` line (units are left to the caller)."""
    raw = field(data, key)
    if raw is None:
        return None
    parts = raw.split()
    return parse_int(parts[0]) if parts else None


@dataclass(frozen=True, slots=True)
class ProcStatus:
    """The fields of ``/proc/<pid>/status`` that the limits need."""

    threads: int | None
    vm_size: int | None  # bytes
    real_uid: int | None
    cap_eff: int | None


def parse_status(data: bytes | None) -> ProcStatus:
    """Parse ``/proc/<pid>/status``; missing or malformed fields become None."""
    if not data:
        return ProcStatus(None, None, None, None)
    vm_kib = field_int(data, b"VmSize:")
    cap = field(data, b"CapEff:")
    try:
        cap_eff = int(cap.strip(), 16) if cap is not None else None
    except ValueError:
        cap_eff = None
    return ProcStatus(
        threads=field_int(data, b"Threads:"),
        vm_size=None if vm_kib is None else vm_kib * 1024,
        real_uid=field_int(data, b"Uid:"),
        cap_eff=cap_eff,
    )


SECCOMP_FILTER = 2
"""The ``Seccomp:`` mode of ``/proc/<pid>/status`` when a filter is installed (0: none, 1: strict)."""


def seccomp_mode(data: bytes | None) -> int | None:
    """The ``Seccomp:`` field of ``/proc/<pid>/status``; None when absent (kernels without seccomp)."""
    return field_int(data, b"Seccomp:") if data else None


def parse_loadavg_tasks(data: bytes | None) -> int | None:
    """Total tasks on the system: the denominator of the 4th field of ``/proc/loadavg``."""
    if not data:
        return None
    parts = data.split()
    if len(parts) < 4:
        return None
    _, sep, total = parts[3].partition(b"/")
    return parse_int(total) if sep else None


def meminfo_bytes(data: bytes | None, key: bytes) -> int | None:
    """A ``/proc/meminfo`` value in bytes (the file reports kB), e.g. ``key=b"MemAvailable:"``."""
    if not data:
        return None
    kib = field_int(data, key)
    return None if kib is None else kib * 1024


def parse_uid_map(text: str | None) -> list[tuple[int, int, int]]:
    """Parse ``/proc/<pid>/uid_map`` into (inside, outside, count) ranges; [] when unreadable."""
    ranges = []
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) == 3 and all(p.isdigit() for p in parts):
            ranges.append((int(parts[0]), int(parts[1]), int(parts[2])))
    return ranges


def kernel_uid(uid: int, uid_map: list[tuple[int, int, int]]) -> int | None:
    """Map a uid of this user namespace to the initial namespace (None if unmapped or unknown)."""
    for inside, outside, count in uid_map:
        if inside <= uid < inside + count:
            return outside + uid - inside
    return None


def count_user_tasks(uid: int, proc_root: str = "/proc") -> int | None:
    """Count the tasks (threads) whose real uid is ``uid``, which RLIMIT_NPROC is checked against.

    Cost: one ``stat`` per process, plus one read of ``status`` for processes owned by
    ``uid`` or root (a process becomes root-owned in /proc when it is not dumpable, e.g.
    after setuid). Processes of other users are skipped without being read. Returns
    None when ``proc_root`` cannot be listed.
    """
    try:
        entries = os.scandir(proc_root)
    except OSError:
        return None
    total = 0
    with entries:
        for entry in entries:
            if not entry.name.isdigit():
                continue
            try:
                owner = entry.stat(follow_symlinks=False).st_uid
            except OSError:  # the process exited
                continue
            if owner != uid and owner != 0:
                continue
            status = parse_status(read_bytes(f"{entry.path}/status"))
            if status.real_uid == uid and status.threads is not None:
                total += status.threads
    return total
