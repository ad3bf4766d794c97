"""Run a long native call off the main thread, so that SIGTERM and Ctrl-C are handled at once.

Python runs signal handlers in the main thread only, between bytecodes: a long
native call made there delays them until it returns. Measured here: a SIGTERM
handler raised only after a 33 s ``EmbedMultipleConfs`` returned. RDKit releases
the GIL while it embeds, so when the call runs in a helper thread the main thread
waits in short, interruptible steps and an interrupt ends the wait at once.

The helper thread is optional: where it cannot start (no thread headroom) the call
runs in the calling thread, with one warning per process, and signals wait for it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

POLL_SECONDS = 0.2
"""How often the waiting main thread wakes up (and can run a signal handler)."""

_running: set[threading.Thread] = set()  # helper threads whose call has not returned
_lock = threading.Lock()
_warned = False


def busy() -> bool:
    """Whether a native call abandoned by an interrupt may still be running in a helper thread.

    Such a thread cannot be stopped; a process that ends now should leave with
    ``os._exit`` rather than run interpreter finalization under it.
    """
    with _lock:
        return any(thread.is_alive() for thread in _running)


def call_interruptibly(fn: Callable[[], T], *, name: str, on_inline: Callable[[BaseException], None] | None = None) -> T:
    """``fn()``, run in a daemon helper thread while the main thread waits interruptibly.

    Off the main thread, ``fn`` simply runs in the caller's thread (signals do not
    reach it anyway). When the helper cannot start, ``fn`` runs here and
    ``on_inline(error)`` is called the first time in this process. If the wait is
    interrupted, the exception propagates and the helper's result is dropped.
    """
    global _warned
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
    while thread.is_alive():
        thread.join(POLL_SECONDS)
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]
