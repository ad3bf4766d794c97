"""Move this process into a temporary child pids cgroup with little headroom, and back out.

Used by ``templ stress`` to make the kernel refuse threads for real. Needs root and a
writable pids hierarchy (cgroup v1 ``pids``, or v2 with the pids controller). In cgroup v1
and v2 alike, writing the pid to ``cgroup.procs`` moves every thread of the process.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from uuid import uuid4

from templ_pipeline.core.limits.cgroup import controller_dirs, parse_mountinfo, parse_proc_cgroup

PREFIX = "templ-stress-"


class CgroupUnavailable(RuntimeError):
    """No child pids cgroup can be made here; the message says why."""


@dataclass(frozen=True)
class Hierarchy:
    """A writable pids hierarchy and the cgroup this process lives in."""

    mount: Path
    version: int
    home: Path


def find_hierarchy() -> Hierarchy:
    """The pids hierarchy of this process, or :class:`CgroupUnavailable` saying why not."""
    if os.geteuid() != 0:
        raise CgroupUnavailable("creating a pids cgroup needs root")
    entries = parse_proc_cgroup(Path("/proc/self/cgroup").read_text())
    mounts = parse_mountinfo(Path("/proc/self/mountinfo").read_text())
    for controller, version in (("pids", 1), ("", 2)):
        dirs = controller_dirs(controller, entries, mounts)
        if not dirs:
            continue
        mount, home = Path(dirs[-1]), Path(dirs[0])
        if version == 2 and "pids" not in (mount / "cgroup.controllers").read_text().split():
            continue
        if not os.access(mount, os.W_OK):
            raise CgroupUnavailable(f"the pids hierarchy at {mount} is read-only")
        return Hierarchy(mount, version, home)
    raise CgroupUnavailable("no pids cgroup hierarchy is mounted (cgroup v1 pids, or v2 with pids)")


def enable_pids(hierarchy: Hierarchy) -> None:
    """cgroup v2: children of the mount get the pids controller only when it is in subtree_control."""
    control = hierarchy.mount / "cgroup.subtree_control"
    if hierarchy.version == 2 and "pids" not in control.read_text().split():
        try:
            control.write_text("+pids\n")
        except OSError as exc:  # e.g. the "no internal processes" rule below a namespace root
            raise CgroupUnavailable(f"cannot enable the pids controller in {control}: {exc.strerror}") from exc


def _move(pid: int, cgroup: Path) -> None:
    (cgroup / "cgroup.procs").write_text(f"{pid}\n")


def _remove(child: Path, home: Path, timeout: float = 5.0) -> None:
    """Send anything still in ``child`` (processes started in it) home, then remove it."""
    deadline = time.monotonic() + timeout
    while True:
        for pid in (child / "cgroup.procs").read_text().split():
            try:
                _move(int(pid), home)
            except ProcessLookupError:
                pass
        try:
            child.rmdir()
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def tasks_in(cgroup: Path) -> int:
    """The tasks the cgroup holds now (``pids.current``: threads of every process in it and below)."""
    return int((cgroup / "pids.current").read_text())


@contextmanager
def tight_pids_cgroup(hierarchy: Hierarchy, headroom: int) -> Iterator[Path]:
    """Run the block in a new child cgroup whose ``pids.max`` is this process's tasks + ``headroom``.

    Always moves the process back to its own cgroup and removes the child, even on error.
    """
    enable_pids(hierarchy)
    child = hierarchy.mount / f"{PREFIX}{os.getpid()}-{uuid4().hex[:8]}"
    try:
        child.mkdir()
    except OSError as exc:
        raise CgroupUnavailable(f"cannot create {child}: {exc.strerror}") from exc
    try:
        _move(os.getpid(), child)
        tasks = tasks_in(child)
        (child / "pids.max").write_text(f"{tasks + headroom}\n")
        yield child
    finally:
        try:
            _move(os.getpid(), hierarchy.home)
        finally:
            _remove(child, hierarchy.home)
