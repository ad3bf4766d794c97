"""What every process worker runs first: leave SIGINT to its parent, and exit when the parent is gone.

Workers of a pool block on their call queue, and each holds both ends of that
pipe, so a parent killed without cleaning up (SIGKILL, the OOM killer) leaves them
waiting forever, holding tasks of the very budget the thread manager shares out.
``PR_SET_PDEATHSIG`` makes the kernel signal the worker instead. The kernel sends
that signal when the *thread* that started the worker exits, not only when the
process does (prctl(2); a pool started from a short-lived thread would otherwise
lose its workers with that thread), so the signal chosen is a harmless real-time
one whose handler exits only when the parent process really is gone: the worker
has then been re-parented, and ``getppid()`` no longer names it. The handler runs
between bytecodes, so at most one batch (well under a second) delays the exit.
"""

from __future__ import annotations

import os
import signal
import sys

PR_SET_PDEATHSIG = 1
EXIT_PARENT_GONE = 70  # EX_SOFTWARE: the worker ended itself, its parent had died

_parent_pid = 0


def parent_death_signal() -> int:
    """The signal a worker receives when the thread that started it exits."""
    return signal.SIGRTMIN + 2


def _exit_if_orphaned(signum: int = 0, frame: object = None) -> None:
    if os.getppid() != _parent_pid:
        os._exit(EXIT_PARENT_GONE)


def _arm_parent_death_signal() -> bool:
    """Ask the kernel for :func:`parent_death_signal` when the parent thread exits (Linux only)."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes  # only here: the worker needs ctypes for this one call

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, parent_death_signal(), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def init_worker(parent_pid: int) -> None:
    """Pool initializer: SIGINT is the parent's to handle; exit promptly once ``parent_pid`` is gone.

    A terminal's Ctrl-C reaches the whole process group; the parent decides what
    to do and ends its workers, so a worker does not die half-way with a traceback.
    """
    global _parent_pid
    _parent_pid = parent_pid
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(parent_death_signal(), _exit_if_orphaned)
    if _arm_parent_death_signal():
        _exit_if_orphaned()  # the parent may have died before the signal was armed
