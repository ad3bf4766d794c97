"""Worker processes that take turns at their imports, so the process that started them keeps a CPU.

A worker spends 0.2-0.3 s importing RDKit and numpy before it can do anything. When its
parent is busy meanwhile (``templ screen``'s spare workers start while the CLI imports),
workers importing side by side take the parent's CPU: on 2 cores, two spares and the parent
each ran at two thirds of a core, and the parent reached its first query at 0.74 s instead
of 0.6 s. With at most CPUs - 1 workers importing at a time the parent keeps its CPU, and
the workers are still ready before the parent needs them.

A turn is a byte in a pipe the workers share (a named semaphore would start
multiprocessing's resource tracker, a process of its own); a worker that waits longer than
:data:`TURN_SECONDS` imports anyway, so a worker ended in its turn holds up no other for long.
"""

from __future__ import annotations

import os
import select
import time
from multiprocessing.context import BaseContext

TURN_SECONDS = 2.0
"""The longest a worker waits for its turn to import (one import takes 0.2-0.3 s here)."""


class ImportTurns:
    """At most ``size`` holders at a time, across the processes it is passed to (pickled with a spawn context)."""

    def __init__(self, context: BaseContext, size: int) -> None:
        self._take, self._give = context.Pipe(duplex=False)
        os.set_blocking(self._take.fileno(), False)  # several workers wait on it: whoever reads first has the turn
        for _ in range(size):
            os.write(self._give.fileno(), b"t")
        self._held = False

    def __enter__(self) -> ImportTurns:
        deadline = time.monotonic() + TURN_SECONDS
        while (left := deadline - time.monotonic()) > 0:
            readable, _, _ = select.select([self._take.fileno()], [], [], left)
            if not readable:
                break
            try:
                self._held = os.read(self._take.fileno(), 1) == b"t"
            except BlockingIOError:  # another worker took it first
                continue
            break
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._held:
            self._held = False
            os.write(self._give.fileno(), b"t")
        self.close()

    def close(self) -> None:
        """Close this process's ends of the pipe (the parent's, once every worker has its own)."""
        self._take.close()
        self._give.close()


def turns_for(context: BaseContext, workers: int, cpus: int) -> ImportTurns | None:
    """Turns that leave the parent one of ``cpus`` while ``workers`` import; None where it keeps one anyway
    (fewer workers than CPUs, or one CPU) or the pipe cannot be made."""
    if not 1 < cpus <= workers:
        return None
    try:
        return ImportTurns(context, cpus - 1)
    except OSError:
        return None
