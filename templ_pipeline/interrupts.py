"""SIGTERM and SIGINT as an exception, so that a run stops cleanly where it is.

Batch schedulers end a job with SIGTERM (Slurm at its time limit or on
preemption, Kubernetes on eviction), a user with Ctrl-C. Python's default for
SIGTERM ends the process at once, leaving its pool workers behind; its default
for SIGINT is a ``KeyboardInterrupt``, which click turns into a bare "Abort".
Within :func:`signals_raise` both raise :class:`Interrupted` in the main thread
instead: a ``BaseException``, so no ``except Exception`` on the way swallows it,
and every ``finally`` and context manager on the way runs.

RDKit takes SIGINT for itself during every substructure match, MCS search and
embedding (its ``ControlCHandler``, installed and removed around each call: 22,000
times in one library run measured here), and a SIGINT that arrives then is
swallowed: the call ends early or not at all, and the run goes on to the end. The
command line therefore routes SIGINT through one thread of its own
(:func:`route_sigint`), so that no handler RDKit installs can ever receive it.
"""

from __future__ import annotations

import _thread
import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

HANDLED_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)
WAKE_SIGNAL = signal.SIGURG
"""What the SIGINT thread sends the main thread, to cut short a wait there (a lock, a sleep) so that Python runs
the SIGINT handler at once. Its default disposition is to be ignored and nothing in the program uses it (out-of-band
socket data); Go's runtime chose it for the same job for the same reasons."""


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


def route_sigint() -> bool:
    """Block SIGINT in every thread and take it in one thread of its own, which hands it to Python's handler.

    A blocked signal waits, pending, whatever handler is installed, until ``sigwait`` in the SIGINT thread takes
    it; that thread then trips Python's SIGINT handler for the main thread (``interrupt_main``) and wakes the main
    thread with :data:`WAKE_SIGNAL`. Threads and child processes inherit the mask, so this is called before any
    other thread starts: every thread the run starts later, RDKit's own included, blocks SIGINT too. The pool
    workers block it anyway; other child processes are ended by the run that started them. Returns False, and
    leaves SIGINT as it was, off the main thread, once another thread runs (numpy's BLAS threads start when it is
    imported; any of them could take SIGINT for RDKit) or where the thread cannot start (RDKit's calls on helper
    threads then keep their guard, :mod:`templ_pipeline.core.native_call`).
    """
    if threading.current_thread() is not threading.main_thread() or _threads() != 1:
        return False
    main = threading.main_thread().ident
    assert main is not None
    signal.signal(WAKE_SIGNAL, _woken)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})

    def forward() -> None:
        while True:
            signal.sigwait({signal.SIGINT})
            handler = signal.getsignal(signal.SIGINT)
            if handler in (signal.SIG_DFL, None):  # interrupt_main would do nothing: end as the default does
                os._exit(128 + signal.SIGINT)
            _thread.interrupt_main(signal.SIGINT)  # nothing when the handler is SIG_IGN, as for a real SIGINT
            with suppress(ProcessLookupError):  # the main thread has ended: the process is leaving anyway
                signal.pthread_kill(main, WAKE_SIGNAL)

    try:
        threading.Thread(target=forward, name="templ-sigint", daemon=True).start()
    except RuntimeError:  # "can't start new thread": SIGINT as it was (a pending one is delivered now)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        signal.signal(WAKE_SIGNAL, signal.SIG_DFL)
        return False
    _keep_mask_across_tracker_start()
    return True


def _keep_mask_across_tracker_start() -> None:
    """Make multiprocessing's resource tracker leave the starting thread's signal mask as it found it.

    Its start blocks SIGINT and SIGTERM around the spawn of its process and then *unblocks* them, whatever they
    were before (CPython 3.9-3.13, ``ResourceTracker.ensure_running``). The first pool a campaign starts does
    that from the main thread: SIGINT was open there again, and in every thread started after it, so RDKit could
    take it (seen in ``templ screen``). The stdlib has no option for this, so its start is wrapped, where the
    tracker is reached: the module's function and the instance that ``getfd``, ``register`` and spawn's
    ``Popen`` call.
    """
    from multiprocessing import resource_tracker

    tracker = getattr(resource_tracker, "_resource_tracker", None)
    start = getattr(tracker, "ensure_running", None)
    if tracker is None or start is None or getattr(start, "keeps_mask", False):
        return

    def ensure_running() -> None:
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, ())
        try:
            start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)

    ensure_running.keeps_mask = True  # type: ignore[attr-defined]
    tracker.ensure_running = ensure_running
    resource_tracker.ensure_running = ensure_running


def _threads() -> int:
    """The threads of this process, native ones included (Linux); Python's count elsewhere."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


def _woken(signum: int, frame: object) -> None:
    """:data:`WAKE_SIGNAL`'s handler: nothing to do, its arrival has made Python run the pending SIGINT handler."""


def exit_while_starting(signals: tuple[signal.Signals, ...] = HANDLED_SIGNALS,
                        before_exit: Callable[[], object] | None = None) -> None:
    """Until :func:`signals_raise` takes over, the first of ``signals`` ends the process with one line.

    The command's imports (RDKit, numpy, OpenTelemetry) take a second or more; a
    Ctrl-C then was a ``KeyboardInterrupt`` traceback from inside an import. Nothing
    has been written yet, so the process leaves at once with the shell's status for
    the signal, after ``before_exit`` (which ends what was started early).
    """
    _exit_on(signals, "stopped while starting; no output written", before_exit)


def exit_while_ending(status: int, signals: tuple[signal.Signals, ...] = HANDLED_SIGNALS) -> None:
    """Once the command has ended with ``status``, the first of ``signals`` ends the process with one line.

    The exit handlers still run after it (a Dask cluster's close, the pools' shutdown: a
    few tenths of a second); a signal there met the start-up handler again, whose line said
    no output was written when the command had written all of it. The line says the
    command had ended, and with what status; the process leaves with the signal's.
    """
    _exit_on(signals, f"stopped while exiting, after the command ended with status {status}")


def _exit_on(signals: tuple[signal.Signals, ...], what: str, before_exit: Callable[[], object] | None = None
             ) -> None:
    """The first of ``signals`` runs ``before_exit``, writes ``interrupted by <SIGNAL>: <what>`` to stderr and
    ends the process with the shell's status for the signal, at once (no exit handler runs)."""

    def handler(signum: int, frame: object) -> None:
        if before_exit is not None:
            before_exit()
        name = signal.Signals(signum).name
        os.write(2, f"interrupted by {name}: {what}\n".encode())
        os._exit(128 + signum)

    for signum in signals:
        signal.signal(signum, handler)
