"""A real child pids cgroup (v1 or v2) for tests, removed even when the test fails.

Import the ``child_pids_cgroup`` fixture into a test module to use it.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from uuid import uuid4

import pytest

from templ_pipeline.pids_cgroup import CgroupUnavailable, enable_pids, find_hierarchy


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

    def run_loaded(self, argv: list[str], headroom: int, timeout: float,
                   env: Mapping[str, str] | None = None) -> dict:
        """Run ``argv`` in this cgroup: once it prints ``READY`` (loaded), cap ``pids.max`` at its tasks plus
        ``headroom``, send it ``go``, and return the last line it prints, as JSON. It is killed if still
        running when this returns or fails."""
        process = subprocess.Popen(self.wrap(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, env=env)
        try:
            assert process.stdout.readline().strip() == "READY", process.stderr.read()[-3000:]
            self.set_max(self.current() + headroom)
            out, err = process.communicate("go\n", timeout=timeout)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)
        assert process.returncode == 0, err[-3000:]
        return json.loads(out.strip().splitlines()[-1])


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
    try:
        hierarchy = find_hierarchy()
        enable_pids(hierarchy)
    except CgroupUnavailable as exc:
        pytest.skip(str(exc))
    path = hierarchy.mount / f"templ-test-{os.getpid()}-{uuid4().hex[:8]}"
    path.mkdir()
    try:
        yield PidsCgroup(path, hierarchy.version)
    finally:
        _destroy(path)
