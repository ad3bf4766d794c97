"""The scoring work this process asked for lately, so that a stream of small calls sizes as one piece of work.

A program that calls ``select_best`` in a loop asks for a few hundred conformers a
call: alone, each is too small to repay a cold pool (:mod:`templ_pipeline.core.sizing`),
so judged one by one the pool never starts. Calls that keep coming are the best
forecast of the calls still to come, so a call is sized with the calls of the last
:data:`RECENT_WORK_SECONDS` (:func:`templ_pipeline.core.sizing.pool_serves`): a loop
of 200-conformer calls starts its pool at the second call and then reuses it
(:mod:`templ_pipeline.core.pools`), while a single call, with nothing before it,
still runs in the caller.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass

RECENT_WORK_SECONDS = 30.0
"""How long a call counts towards the next one. A loop's calls are seconds apart (between
them it reads or embeds the next molecule: ETKDG of 200 conformers of a drug-like ligand
takes seconds on one core); a call that comes later than this starts a new stream."""


@dataclass(frozen=True, slots=True)
class RecentWork:
    """Calls and conformers asked for within the last ``window`` seconds, before the call being sized."""

    calls: int = 0
    conformers: int = 0
    window: float = RECENT_WORK_SECONDS


NO_RECENT_WORK = RecentWork()
"""A call sized alone: no call before it within the window."""


class WorkHistory:
    """The scoring calls of this process within a sliding window of ``window`` seconds; thread-safe.

    Memory is bounded by the calls of one window (a timestamp and a count each).
    """

    def __init__(self, window: float = RECENT_WORK_SECONDS) -> None:
        self.window = window
        self._lock = threading.Lock()
        self._calls: deque[tuple[float, int]] = deque()
        self._conformers = 0

    def record(self, conformers: int) -> RecentWork:
        """Note a call of ``conformers`` now; return the work of the calls before it within the window."""
        now = time.monotonic()
        with self._lock:
            while self._calls and self._calls[0][0] < now - self.window:
                self._conformers -= self._calls.popleft()[1]
            before = RecentWork(len(self._calls), self._conformers, self.window)
            self._calls.append((now, conformers))
            self._conformers += conformers
        return before

    def forget(self) -> None:
        """Drop every call noted so far: the next call is sized alone."""
        with self._lock:
            self._calls.clear()
            self._conformers = 0


SCORING_HISTORY = WorkHistory()
"""The scoring calls of this process (``select_best`` and the executor's callers record here)."""
