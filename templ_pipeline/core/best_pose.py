"""Which pose a query keeps: one rule for ``select-best``, ``demo`` and ``screen``.

Within one conformer set scored against one template, the conformer with the highest
score by the metric wins, the lowest conformer id on a tie. Across a query's prepared
molecules (its stereoisomers) and their templates, the pair whose best conformer
scores highest wins; on a tie the first isomer, then the template that comes first in
the template file. Ties are real: a symmetric molecule's isomers, or two copies of one
template, score alike to the last bit, and the same inputs must keep the same pose
whatever the order results arrive in.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, TypeVar

__all__ = ["best_conformer", "best_pair"]

T = TypeVar("T")


class ConformerScores(Protocol):
    """A scored conformer: its id and its ``shape``, ``color`` and ``combo`` scores as attributes."""

    @property
    def conf_id(self) -> int: ...


S = TypeVar("S", bound=ConformerScores)


def best_conformer(scored: Iterable[S], metric: str) -> S | None:
    """The conformer scoring highest by ``metric`` (the lowest ``conf_id`` on a tie); None when none scored."""
    return min(scored, key=lambda item: (-getattr(item, metric), item.conf_id), default=None)


def best_pair(contenders: Iterable[tuple[float | None, int, int, T]]) -> T | None:
    """The item of the ``(score, isomer, template, item)`` contender that ranks first: the highest score, then
    the lowest isomer index, then the lowest template position; contenders without a score (None) are out.
    None when no contender scored."""
    best: tuple[tuple[float, int, int], T] | None = None
    for score, isomer, template, item in contenders:
        if score is None:
            continue
        key = (-score, isomer, template)
        if best is None or key < best[0]:
            best = (key, item)
    return None if best is None else best[1]
