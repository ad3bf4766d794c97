"""Worker functions for the grant test: importable by spawned pool workers (not defined in ``python -c``)."""

from __future__ import annotations

import os

BARRIER = None


def init(barrier) -> None:
    global BARRIER
    BARRIER = barrier


def work(pids_dir: str) -> tuple[int, int]:
    """Touch BLAS as a scoring worker would, then read the cgroup's task count while every worker is up."""
    import numpy

    numpy.ones((256, 256)) @ numpy.ones((256, 256))
    BARRIER.wait(30)
    peak = int(open(os.path.join(pids_dir, "pids.current")).read())
    BARRIER.wait(30)
    return os.getpid(), peak
