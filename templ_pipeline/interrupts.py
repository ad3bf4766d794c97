"""SIGTERM and SIGINT as an exception, so that a run stops cleanly where it is.

Batch schedulers end a job with SIGTERM (Slurm at its time limit or on
preemption, Kubernetes on eviction), a user with Ctrl-C. Python's default for
SIGTERM ends the process at once, leaving its pool workers behind; its default
for SIGINT is a ``KeyboardInterrupt``, which click turns into a bare "Abort".
Within :func:`signals_raise` both raise :class:`Interrupted` in the main thread
instead: a ``BaseException``, so no ``except Exception`` on the way swallows it,
and every ``finally`` and context manager on the way runs.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

HANDLED_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)


class Interrupted(BaseException):
    """A signal asked the run to stop; ``exit_code`` is the shell's 128 + signal number."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(self.name)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


@contextmanager
def signals_raise(signals: tuple[signal.Signals, ...] = HANDLED_SIGNALS) -> Iterator[None]:
    """Within the block, the first of ``signals`` raises :class:`Interrupted`; later ones are ignored.

    Ignoring the later ones keeps the clean-up that the first one started from being
    cut short half-way. Outside the main thread (where Python cannot set handlers)
    the block runs with the handlers as they are.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired = False

    def handler(signum: int, frame: object) -> None:
        nonlocal fired
        if not fired:
            fired = True
            raise Interrupted(signum)

    previous = {signum: signal.signal(signum, handler) for signum in signals}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def exit_while_starting(signals: tuple[signal.Signals, ...] = HANDLED_SIGNALS,
                        before_exit: Callable[[], object] | None = None) -> None:
    """Until :func:`signals_raise` takes over, the first of ``signals`` ends the process with one line.

    The command's imports (RDKit, numpy, OpenTelemetry) take a second or more; a
    Ctrl-C then was a ``KeyboardInterrupt`` traceback from inside an import. Nothing
    has been written yet, so the process leaves at once with the shell's status for
    the signal, after ``before_exit`` (which ends what was started early).
    """

    def handler(signum: int, frame: object) -> None:
        if before_exit is not None:
            before_exit()
        name = signal.Signals(signum).name
        os.write(2, f"interrupted by {name}: stopped while starting; no output written\n".encode())
        os._exit(128 + signum)

    for signum in signals:
        signal.signal(signum, handler)
