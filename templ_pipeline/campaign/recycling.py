"""When a campaign worker is replaced by a fresh one between two queries: its memory grew, or it ran its quota.

A worker reports its resident memory with every outcome (:func:`resident_bytes`); what it holds after its
first query is its baseline (RDKit imported, templates prepared, one molecule's allocations made). A leak
in a native library, or a heap that glibc keeps fragmented, grows with the queries and never shrinks, so a
worker is ended once it holds more than ``growth`` over its baseline, or once it has run ``max_queries``
(a ceiling that bounds what no measurement sees). The pool decides only between queries, after the outcome
has arrived: no query is lost or run twice, and a fresh worker scores as the old one did (same seed, same
code), so the rows and poses do not depend on recycling.

``TEMPL_RECYCLE_QUERIES`` and ``TEMPL_RECYCLE_GROWTH`` (a fraction: 0.5 is 50 %) override the defaults;
0 turns either check off, and a value that is not a number leaves the default.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Mapping
from dataclasses import dataclass

from templ_pipeline.core.limits.procfs import read_bytes

MAX_QUERIES = 10_000
"""Queries a worker runs at most. A fresh worker costs 0.2-0.5 s to start here (imports, templates), so
at 10,000 queries of 10 ms or more the replacement is under 0.5 % of the worker's time."""

GROWTH = 0.5
"""Growth of resident memory over the baseline that ends a worker. A worker holds about 96 MB here after its
first small query, and 97 MB after its second: half as much again (about 50 MB) is room for what a large
query leaves in glibc's arenas, and a leak of 5 kB a query reaches it within 10,000 queries."""

QUERIES_ENV = "TEMPL_RECYCLE_QUERIES"
GROWTH_ENV = "TEMPL_RECYCLE_GROWTH"

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@dataclass(frozen=True, slots=True)
class RecyclePolicy:
    """When a worker is recycled: after ``max_queries`` queries, or past ``growth`` over its baseline (0: never)."""

    max_queries: int = MAX_QUERIES
    growth: float = GROWTH

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> RecyclePolicy:
        """The defaults, with ``$TEMPL_RECYCLE_QUERIES`` and ``$TEMPL_RECYCLE_GROWTH`` where they are numbers."""
        queries = _number(environ.get(QUERIES_ENV), int)
        growth = _number(environ.get(GROWTH_ENV), float)
        return cls(MAX_QUERIES if queries is None else int(queries), GROWTH if growth is None else growth)

    def reason(self, queries: int, baseline: int, resident: int) -> str | None:
        """Why a worker that has run ``queries`` and holds ``resident`` bytes (``baseline`` after its first query)
        is recycled now; None while it goes on."""
        if self.max_queries > 0 and queries >= self.max_queries:
            return f"it ran {queries} queries (the most a worker runs: {self.max_queries})"
        if self.growth > 0 and baseline > 0 and resident > baseline * (1 + self.growth):
            return (f"its memory grew from {baseline / 2**20:.0f} MB after its first query to "
                    f"{resident / 2**20:.0f} MB (the limit: {self.growth:.0%} more)")
        return None


def resident_bytes() -> int:
    """This process's resident memory now: ``/proc/self/statm`` (a few microseconds), else its peak (getrusage)."""
    resident = parse_statm(read_bytes("/proc/self/statm"), _PAGE_SIZE)
    if resident is None:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux
    return resident


def parse_statm(data: bytes | None, page_size: int) -> int | None:
    """Resident bytes from the contents of ``/proc/<pid>/statm`` (its second field, in pages); None if unreadable."""
    fields = (data or b"").split()
    if len(fields) < 2 or not fields[1].isdigit():
        return None
    return int(fields[1]) * page_size


def _number(text: str | None, kind: type[int] | type[float]) -> float | None:
    try:
        value = kind((text or "").strip())
    except ValueError:
        return None
    return value if value >= 0 else None
