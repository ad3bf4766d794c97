"""Find this process's cgroup directories and read the pids and memory controllers.

Works for cgroup v1 (one hierarchy per controller) and v2 (the unified hierarchy),
from the contents of ``/proc/self/cgroup`` and ``/proc/self/mountinfo``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from templ_pipeline.core.limits.procfs import UNLIMITED, parse_int, parse_max, read_bytes

_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")
_MEMORY_UNLIMITED = 1 << 62  # v1 reports "no limit" as PAGE_COUNTER_MAX pages (~2**63)


@dataclass(frozen=True, slots=True)
class CgroupEntry:
    """One line of ``/proc/self/cgroup``: ``hierarchy-id:controllers:path``."""

    hierarchy_id: int
    controllers: tuple[str, ...]  # empty for the v2 line ``0::/path``
    path: str


@dataclass(frozen=True, slots=True)
class Mount:
    """A cgroup mount from ``/proc/self/mountinfo``."""

    root: str  # the cgroup shown at the mount point
    mount_point: str
    fstype: str  # "cgroup" (v1) or "cgroup2"
    super_options: tuple[str, ...]  # v1: the controllers, e.g. ("rw", "pids")


def parse_proc_cgroup(text: str | None) -> list[CgroupEntry]:
    """Parse ``/proc/self/cgroup``; malformed lines are skipped."""
    entries = []
    for line in (text or "").splitlines():
        hid, sep1, rest = line.partition(":")
        controllers, sep2, path = rest.partition(":")
        if not (sep1 and sep2 and hid.isdigit() and path.startswith("/")):
            continue
        names = tuple(c for c in controllers.split(",") if c)
        entries.append(CgroupEntry(int(hid), names, path))
    return entries


def _unescape(text: str) -> str:
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), text)


def parse_mountinfo(text: str | None) -> list[Mount]:
    """Parse the cgroup and cgroup2 mounts of ``/proc/self/mountinfo``."""
    mounts = []
    for line in (text or "").splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        mounts.append(
            Mount(
                root=_unescape(fields[3]),
                mount_point=_unescape(fields[4]),
                fstype=tail[0],
                super_options=tuple(tail[2].split(",")),
            )
        )
    return mounts


def _relative(path: str, root: str) -> str | None:
    """``path`` below the mount's ``root``, or None when the mount does not show it."""
    if root == "/":
        return path
    if path == root or path.startswith(root + "/"):
        return path[len(root):] or "/"
    return None


def controller_dirs(
    controller: str, entries: list[CgroupEntry], mounts: list[Mount], sys_root: str = ""
) -> list[str]:
    """Directories of this process's cgroup for ``controller``, leaf first, up to the mount point.

    ``controller`` is a v1 controller name (``pids``, ``memory``) or ``""`` for the v2
    unified hierarchy. ``sys_root`` is prefixed to mount points (tests point it at a tree).
    """
    v2 = controller == ""
    for entry in entries:
        is_v2_line = entry.hierarchy_id == 0 and not entry.controllers
        if not (is_v2_line if v2 else controller in entry.controllers):
            continue
        for mount in mounts:
            if v2:
                fits = mount.fstype == "cgroup2"
            else:
                fits = mount.fstype == "cgroup" and controller in mount.super_options
            if not fits:
                continue
            rel = _relative(entry.path, mount.root)
            if rel is None:
                continue
            parts = [p for p in rel.split("/") if p]
            base = sys_root + mount.mount_point.rstrip("/")
            dirs = [base + "".join(f"/{p}" for p in parts[:n]) for n in range(len(parts), -1, -1)]
            return [d or "/" for d in dirs]
    return []


@dataclass(frozen=True, slots=True)
class Level:
    """Files of one cgroup level: the limit and the current use."""

    limit_path: str
    current_path: str


def pids_levels(dirs: list[str]) -> list[Level]:
    """The levels of ``dirs`` that have a pids controller (the root cgroup has no ``pids.max``)."""
    return [
        Level(f"{d}/pids.max", f"{d}/pids.current") for d in dirs if os.path.exists(f"{d}/pids.max")
    ]


def memory_levels(dirs: list[str], v2: bool) -> list[Level]:
    """The levels of ``dirs`` with a finite memory limit now. Unlimited levels are skipped
    (limits are set when a job starts): snapshots do not read files that say "max"."""
    limit_name, current_name = ("memory.max", "memory.current") if v2 else (
        "memory.limit_in_bytes", "memory.usage_in_bytes")
    levels = []
    for d in dirs:
        level = Level(f"{d}/{limit_name}", f"{d}/{current_name}")
        if read_memory_limit(level.limit_path) is not None:
            levels.append(level)
    return levels


def read_memory_limit(path: str) -> int | None:
    """A memory limit in bytes, None when unlimited or unreadable."""
    value = parse_max(read_bytes(path))
    if value is None or value == UNLIMITED or value >= _MEMORY_UNLIMITED:
        return None
    return value


@dataclass(frozen=True, slots=True)
class PidsReading:
    """The tightest pids level. ``limit`` None means every level is ``max``."""

    limit: int | None
    used: int
    source: str


def read_pids(levels: list[Level]) -> PidsReading | None:
    """Read every level and keep the one with the least headroom; None when nothing is readable."""
    best: PidsReading | None = None
    best_headroom = None
    unlimited: PidsReading | None = None
    for level in levels:
        limit = parse_max(read_bytes(level.limit_path))
        used = parse_int(read_bytes(level.current_path))
        if limit is None or used is None:
            continue
        if limit == UNLIMITED:
            unlimited = unlimited or PidsReading(None, used, level.limit_path)
            continue
        if best_headroom is None or limit - used < best_headroom:
            best, best_headroom = PidsReading(limit, used, level.limit_path), limit - used
    return best or unlimited


def memory_headroom(levels: list[Level]) -> tuple[int, str] | None:
    """The least ``limit - current`` in bytes over ``levels`` and its source, None if unknown."""
    best: tuple[int, str] | None = None
    for level in levels:
        limit = read_memory_limit(level.limit_path)
        used = parse_int(read_bytes(level.current_path))
        if limit is None or used is None:
            continue
        room = max(0, limit - used)
        if best is None or room < best[0]:
            best = (room, level.limit_path)
    return best


def parse_pids_events(data: bytes | str | None) -> int | None:
    """The ``max`` count of a ``pids.events`` file: forks the pids controller refused.

    The file reads ``max 3`` (cgroup v1 and v2). Measured here (Linux 6.18, cgroup v1):
    a thread refused by an ancestor's ``pids.max`` counts in the leaf's ``pids.events``,
    not the ancestor's; v2 kernels from 6.13 may also count it at the level that
    refused (``pids.events.local`` keeps the leaf's count). Either way the sum over
    this process's levels rises whenever a fork of this cgroup is refused: the
    kernel's own, lasting evidence, which outlives the moment of pressure (a refused
    pool start frees its tasks at once, so headroom read afterwards looks fine).
    """
    if data is None:
        return None
    text = data.decode("ascii", "replace") if isinstance(data, bytes) else data
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "max":
            return parse_int(value)
    return None


def events_path(level: Level) -> str:
    """The ``pids.events`` file next to a level's ``pids.max``."""
    return level.limit_path[: -len("pids.max")] + "pids.events"


def read_pids_refusals_by_level(levels: list[Level]) -> tuple[tuple[str, int], ...]:
    """``(pids.events path, refused forks)`` of each level whose count is readable."""
    counts = ((events_path(level), parse_pids_events(read_bytes(events_path(level)))) for level in levels)
    return tuple((path, count) for path, count in counts if count is not None)


def read_pids_refusals(levels: list[Level]) -> int | None:
    """Refused forks summed over ``levels`` (see :func:`parse_pids_events`); None if none is readable."""
    counts = read_pids_refusals_by_level(levels)
    return sum(count for _path, count in counts) if counts else None


def parse_pids_peak(data: bytes | str | None) -> int | None:
    """A ``pids.peak`` file: the most tasks this cgroup and its descendants have held at once.

    The file reads ``41`` (cgroup v1 and v2, every level but the root; older kernels lack
    it). Measured here (Linux 6.18, cgroup v1): it never goes down while the cgroup
    lives, and writing to it fails (mode 0444), so it records a burst that ended between
    two scrapes. The kernel charges a new task from the leaf up and raises each level's
    peak once that level's own limit lets the task in, so an attempt an ancestor refuses
    still shows below it: with ``pids.max`` 3 on a parent, a refused fourth thread left
    the parent's peak at 3 and the leaf's at 4. Compare a level's peak with that level's
    own ``pids.max``.
    """
    return parse_int(data)


def peak_path(limit_path: str) -> str | None:
    """The ``pids.peak`` file next to a level's ``pids.max`` (as a pids Limit's ``source``
    names it); None for any other path."""
    if not limit_path.endswith("/pids.max"):
        return None
    return limit_path[: -len("pids.max")] + "pids.peak"


def read_pids_peak(limit_path: str) -> int | None:
    """The peak next to ``limit_path`` (see :func:`peak_path`); None when there is no such file."""
    path = peak_path(limit_path)
    return None if path is None else parse_pids_peak(read_bytes(path))
