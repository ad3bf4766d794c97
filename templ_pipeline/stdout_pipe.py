"""Telling a reader that closed stdout early (``templ doctor | head -1``) from a failed command.

A closed pipe is the reader's choice, not a failure: the command ends quietly with 0.
The libraries in between each turn the ``BrokenPipeError`` into ``SystemExit(1)``
before the CLI sees it (measured, rich 14 and typer 0.29):

- rich (``Console.on_broken_pipe``) points fd 1 at /dev/null, as the Python docs'
  "Note on SIGPIPE" recommends, then raises ``SystemExit(1)``;
- typer (``typer.core._main``) catches an ``EPIPE`` ``OSError`` and calls ``sys.exit(1)``,
  leaving fd 1 on the pipe.

So the CLI notes what fd 1 was at start; an exit of 1 where fd 1 was a pipe and now is
another file (rich's redirect) or a pipe without a reader (Linux's pipe poll reports
``POLLERR`` once the last reader is gone) is the reader leaving.
"""

from __future__ import annotations

import os
import select
import stat
from dataclasses import dataclass

__all__ = ["StdoutPipe", "silence_stdout"]

_STDOUT = 1


@dataclass(frozen=True, slots=True)
class StdoutPipe:
    """The pipe fd 1 was when the command started."""

    device: int
    inode: int

    @classmethod
    def current(cls) -> StdoutPipe | None:
        """fd 1's pipe, or None when stdout is no pipe (a terminal, a file) or closed."""
        try:
            info = os.fstat(_STDOUT)
        except OSError:
            return None
        return cls(info.st_dev, info.st_ino) if stat.S_ISFIFO(info.st_mode) else None

    def reader_left(self) -> bool:
        """Whether this pipe's reader has gone: fd 1 was moved off it, or it has no reader any more."""
        try:
            info = os.fstat(_STDOUT)
        except OSError:
            return True
        if (info.st_dev, info.st_ino) != (self.device, self.inode):
            return True
        poller = select.poll()
        poller.register(_STDOUT, select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))


def silence_stdout() -> None:
    """Point fd 1 at /dev/null, so the interpreter's last flush into the closed pipe raises nothing."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, _STDOUT)
    finally:
        os.close(devnull)
