"""The stages a campaign worker times under its query's trace, as data in its result: the parent turns each
into a span (``telemetry``'s recorder) and counts nothing else from them.

Apart from the events (:mod:`templ_pipeline.core.events` re-exports them) so that a campaign worker imports
these three and not the 28 event classes, whose dataclasses took 19 ms of each worker's start: the
standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from templ_pipeline.core.pickled_by_fields import pickled_by_fields

if TYPE_CHECKING:
    from templ_pipeline.core.trace_context import WorkerSpan


@pickled_by_fields
@dataclass(frozen=True, slots=True)
class TemplatesChoiceTimed:
    """A worker chose one isomer's templates (the stage ``templates.choose``), timed under its query's span."""

    span: WorkerSpan
    isomer: int
    library: int
    chosen: int
    mcs_searched: int
    mcs_timeouts: int


@pickled_by_fields
@dataclass(frozen=True, slots=True)
class ConformersTimed:
    """A worker embedded one isomer's conformers (the stage ``conformers.generate``), timed under its query's
    span."""

    span: WorkerSpan
    isomer: int
    requested: int
    generated: int
    threads: int


@pickled_by_fields
@dataclass(frozen=True, slots=True)
class ScoringTimed:
    """A worker scored one isomer's conformers against its templates (the stage ``screen.score``)."""

    span: WorkerSpan
    isomer: int
    templates: int
    scored: int
    failed: int


StageTiming = TemplatesChoiceTimed | ConformersTimed | ScoringTimed
"""A stage a worker timed: data in its result, turned into a span of the query's trace by the parent."""
