"""A real child pids cgroup (v1 or v2) for tests, removed even when the test fails.

Import the ``child_pids_cgroup`` fixture into a test module to use it.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from uuid import uuid4

import pytest


@dataclass
class PidsCgroup:
    """A child pids cgroup; ``wrap`` makes a command start inside it."""

    path: Path
    version: int

    @property
    def procs_file(self) -> Path:
        return self.path / "cgroup.procs"

    def set_max(self, tasks: int | str) -> None:
        (self.path / "pids.max").write_text(f"{tasks}\n")

    def current(self) -> int:
        return int((self.path / "pids.current").read_text())

    def pids(self) -> list[int]:
        return [int(p) for p in self.procs_file.read_text().split()]

    def wrap(self, argv: list[str]) -> list[str]:
        """``argv`` run by a shell that first moves itself into this cgroup, then execs."""
        return ["sh", "-c", 'echo $$ > "$0" && exec "$@"', str(self.procs_file), *argv]


def find_pids_hierarchy() -> tuple[Path, int] | str:
    """(mount point, cgroup version) of a writable pids hierarchy, or why there is none."""
    if os.geteuid() != 0:
        return "creating a pids cgroup needs root"
    with open("/proc/self/mountinfo") as f:
        lines = f.read().splitlines()
    for line in lines:
        left, _, right = line.partition(" - ")
        mount_point, tail = Path(left.split()[4]), right.split()
        if tail[0] == "cgroup" and "pids" in tail[2].split(","):
            version = 1
        elif tail[0] == "cgroup2" and "pids" in (mount_point / "cgroup.controllers").read_text():
            version = 2
        else:
            continue
        if os.access(mount_point, os.W_OK):
            return mount_point, version
        return f"pids hierarchy at {mount_point} is not writable (read-only cgroupfs)"
    return "no pids cgroup hierarchy is mounted (cgroup v1 pids or cgroup v2 with pids)"


def _destroy(path: Path, timeout: float = 10.0) -> None:
    """Kill whatever is left in the cgroup, then remove it (only it: nothing else is moved)."""
    deadline = time.monotonic() + timeout
    while True:
        for pid in (int(p) for p in (path / "cgroup.procs").read_text().split()):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            path.rmdir()
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.fixture
def child_pids_cgroup() -> Iterator[PidsCgroup]:
    """A fresh child pids cgroup with ``pids.max`` = max; skipped where the machine has none."""
    found = find_pids_hierarchy()
    if isinstance(found, str):
        pytest.skip(found)
    mount, version = found
    if version == 2:
        control = mount / "cgroup.subtree_control"
        if "pids" not in control.read_text().split():
            try:
                control.write_text("+pids\n")
            except OSError as exc:  # e.g. the "no internal processes" rule of a non-root cgroup
                pytest.skip(f"cannot enable the pids controller in {control}: {exc}")
    path = mount / f"templ-test-{os.getpid()}-{uuid4().hex[:8]}"
    path.mkdir()
    try:
        yield PidsCgroup(path, version)
    finally:
        _destroy(path)
