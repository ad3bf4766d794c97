"""Run a long native call off the main thread, so that SIGTERM and Ctrl-C are handled at once.

Python runs signal handlers in the main thread only, between bytecodes: a long
native call made there delays them until it returns. Measured here: a SIGTERM
handler raised only after a 33 s ``EmbedMultipleConfs`` returned. RDKit releases
the GIL while it embeds, so when the call runs in a helper thread the main thread
waits in short, interruptible steps and an interrupt ends the wait at once.

RDKit (2025.03 and later) also takes SIGINT for itself: ``EmbedMultipleConfs``,
RascalMCES and others install their own handler for the length of the call
(``ControlCHandler``), and on Ctrl-C the embedding returns *no conformer* without
an error (checked on 2026.09: 0 of 200, exit 0). Taken as an embedding failure,
that answer was retried with random coordinates and the run went on with another
result. While it waits, the main thread therefore puts the process's SIGINT
disposition back whenever it finds RDKit's in its place (:class:`SigintKeeper`),
so Ctrl-C reaches Python's handler and stops the run. RDKit installs its handler
a few milliseconds into a call; the waiting thread checks every millisecond for
the first :data:`FAST_SECONDS` of the call and of every RDKit call that
announces itself with :func:`native_call_starting`, and every :data:`POLL_SECONDS`
otherwise (polling every millisecond throughout costs 3 % of a core). A SIGINT
within that millisecond can still be taken by RDKit: a cancelled RascalMCES search
raises, and :mod:`~templ_pipeline.core.template_choice` makes that the stop it is;
a cancelled embedding still looks like no conformer. The ``templ`` command closes
that window: it blocks SIGINT in every thread and takes it in one of its own
(:func:`templ_pipeline.interrupts.route_sigint`), so no RDKit handler ever receives
it. Where the calling thread blocks SIGINT so, nothing needs keeping and the
waiting thread only waits.

The helper thread is optional: where it cannot start (no thread headroom) the call
runs in the calling thread, with one warning per process, and signals wait for it.
"""

from __future__ import annotations

import ctypes
import functools
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

POLL_SECONDS = 0.05
"""How often the waiting main thread wakes up (runs a signal handler, checks the SIGINT disposition)."""
FAST_POLL_SECONDS = 0.001
FAST_SECONDS = 0.25
"""How long after a native call starts the waiting thread checks the SIGINT disposition every millisecond."""

_running: set[threading.Thread] = set()  # helper threads whose call has not returned
_lock = threading.Lock()
_warned = False
_abandoned = False  # an interrupt ended a wait: its native call may still be finishing
_native_started = threading.Event()


def busy() -> bool:
    """Whether a native call abandoned by an interrupt may still be running in a helper thread.

    Such a thread cannot be stopped; a process that ends now should leave with
    ``os._exit`` rather than run interpreter finalization under it. A helper that
    Python already counts as finished is no proof: after an interrupted MCS search
    (its helper just ended), interpreter finalization aborted the process in 2 of 6
    runs here ("terminate called without an active exception", exit 134).
    """
    with _lock:
        return _abandoned or any(thread.is_alive() for thread in _running)


def native_call_starting() -> None:
    """Announce an RDKit call that may install its own SIGINT handler (the waiting thread then checks often)."""
    _native_started.set()


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """The C library's ``sigaction`` (Linux), or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


class _SigAction(ctypes.Structure):
    """glibc's ``struct sigaction`` (Linux; the handler is all that is compared)."""

    _fields_ = [("handler", ctypes.c_void_p), ("mask", ctypes.c_ulong * 16), ("flags", ctypes.c_int),
                ("restorer", ctypes.c_void_p)]


class SigintKeeper:
    """Keeps the SIGINT disposition this process had when it was made, undoing a native library's replacement.

    Python's ``signal`` module reports only the handlers it installed itself, not one a C++
    library put in with ``std::signal``, so the disposition is read and restored with
    ``sigaction(2)`` through ctypes.
    """

    def __init__(self, libc: ctypes.CDLL, saved: _SigAction) -> None:
        self._libc = libc
        self._saved = saved
        self.restored = 0  # times a replaced disposition was put back

    @classmethod
    def capture(cls) -> SigintKeeper | None:
        """The current disposition, or None where it cannot be read (not Linux, no libc)."""
        libc = _libc()
        if libc is None:
            return None
        try:
            saved = _SigAction()
            if libc.sigaction(signal.SIGINT, None, ctypes.byref(saved)) != 0:
                return None
        except (OSError, AttributeError):
            return None
        return cls(libc, saved)

    def keep(self) -> None:
        """Put the captured disposition back if something replaced it."""
        current = _SigAction()
        if self._libc.sigaction(signal.SIGINT, None, ctypes.byref(current)) != 0:
            return
        if current.handler != self._saved.handler:
            self._libc.sigaction(signal.SIGINT, ctypes.byref(self._saved), None)
            self.restored += 1


def call_interruptibly(fn: Callable[[], T], *, name: str,
                       on_inline: Callable[[BaseException], None] | None = None) -> T:
    """``fn()``, run in a daemon helper thread while the main thread waits interruptibly.

    Off the main thread, ``fn`` simply runs in the caller's thread (signals do not
    reach it anyway). When the helper cannot start, ``fn`` runs here and
    ``on_inline(error)`` is called the first time in this process. If the wait is
    interrupted, the exception propagates and the helper's result is dropped.
    """
    global _warned, _abandoned
    if threading.current_thread() is not threading.main_thread():
        return fn()
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as error:  # handed to the waiting thread, which re-raises it
            outcome["error"] = error
        finally:
            with _lock:
                _running.discard(thread)

    thread = threading.Thread(target=run, name=name, daemon=True)
    keeper = None if signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, ()) else SigintKeeper.capture()
    with _lock:
        _running.add(thread)
    try:
        thread.start()
    except RuntimeError as error:  # "can't start new thread": do the work here instead
        with _lock:
            _running.discard(thread)
            first, _warned = not _warned, True
        if first and on_inline is not None:
            on_inline(error)
        return fn()
    try:
        _wait(thread, keeper)
    except BaseException:
        _abandoned = True
        raise
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]


def _wait(thread: threading.Thread, keeper: SigintKeeper | None) -> None:
    """Wait for ``thread`` in short steps, keeping the SIGINT disposition, often while a native call starts."""
    _native_started.clear()
    fast_until = time.monotonic() + FAST_SECONDS
    while thread.is_alive():
        if keeper is None:
            thread.join(POLL_SECONDS)
            continue
        if time.monotonic() < fast_until:
            thread.join(FAST_POLL_SECONDS)
        elif _native_started.wait(POLL_SECONDS):
            _native_started.clear()
            fast_until = time.monotonic() + FAST_SECONDS
        keeper.keep()
