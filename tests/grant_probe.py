"""Helpers for the kernel-limit test scripts (``run_python`` puts this folder on their path).

The pool worker functions must live in a module: spawned workers cannot import
what a ``python -c`` script defines.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

BARRIER = None


def init(barrier) -> None:
    global BARRIER
    BARRIER = barrier


def work(pids_dir: str) -> tuple[int, int]:
    """Touch BLAS as a scoring worker would, then read the cgroup's task count while every worker is up."""
    import numpy

    numpy.ones((256, 256)) @ numpy.ones((256, 256))
    BARRIER.wait(30)
    with open(os.path.join(pids_dir, "pids.current")) as current:
        peak = int(current.read())
    BARRIER.wait(30)
    return os.getpid(), peak


def run_threads_together(count: int, body=None) -> None:
    """Start ``count`` threads that all wait on one barrier with this one (``body(barrier)`` if given), then join."""
    import threading

    barrier = threading.Barrier(count + 1)
    target = body or (lambda b: b.wait(30))
    workers = [threading.Thread(target=target, args=(barrier,)) for _ in range(count)]
    for worker in workers:
        worker.start()
    barrier.wait(30)
    for worker in workers:
        worker.join(60)


@contextmanager
def idle_threads_until_refused(limit: int) -> Iterator[tuple[int, RuntimeError | None]]:
    """Start idle threads until the kernel refuses one (or ``limit`` run); yield (started, the refusal).

    The threads stay alive inside the block, so what is measured there sees the limit exhausted.
    """
    import threading

    stop = threading.Event()
    started: list[threading.Thread] = []
    error = None
    try:
        while len(started) < limit:
            thread = threading.Thread(target=stop.wait)
            try:
                thread.start()
            except RuntimeError as exc:
                error = exc
                break
            started.append(thread)
        yield len(started), error
    finally:
        stop.set()
        for thread in started:
            thread.join(30)
