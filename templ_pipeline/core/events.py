"""What the executor reports: typed events, and nothing about how they are shown.

The executor, the conformer threads and the Dask backend emit these events to the
observers they are given (plain callables, ``Observer``); telemetry turns each into
its metric samples, span event and log line, and the selection report collects
them. Their bounded vocabularies are defined once in :mod:`templ_pipeline.core.labels`,
and the stages a campaign worker times in :mod:`templ_pipeline.core.stage_timings`; both
are re-exported here. Workers import those two, not this module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from templ_pipeline.core.labels import (
    REFUSED_STARTS as REFUSED_STARTS,
    ExecutorKind as ExecutorKind,
    FailureReason as FailureReason,
    FallbackCause as FallbackCause,
    FallbackReason as FallbackReason,
    LimitName as LimitName,
    PinFallback as PinFallback,
    PoseMethod as PoseMethod,
    PreparationAction as PreparationAction,
    QueryFailureReason as QueryFailureReason,
    QueryStatus as QueryStatus,
    ReductionReason as ReductionReason,
    ReplacementReason as ReplacementReason,
    ResubmissionReason as ResubmissionReason,
    StartKind as StartKind,
    TaskType as TaskType,
    cause_of as cause_of,
    no_room_reason as no_room_reason,
    values as values,
)
from templ_pipeline.core.stage_timings import (
    ConformersTimed as ConformersTimed,
    ScoringTimed as ScoringTimed,
    StageTiming as StageTiming,
    TemplatesChoiceTimed as TemplatesChoiceTimed,
)


def as_fields(event: object) -> dict[str, object]:
    """An event's fields as plain values, without its exception: for JSON and tables."""
    return {name: (str(value) if isinstance(value, StrEnum) else value)
            for name in event.__dataclass_fields__ if name != "error"  # type: ignore[attr-defined]
            for value in (getattr(event, name),)}


@dataclass(frozen=True, slots=True)
class WorkersGranted:
    """The grant met the request; ``detail`` says why when the work alone would have been cut
    (recent calls made it worth a pool)."""

    task_type: TaskType
    requested: int
    granted: int
    detail: str = ""


@dataclass(frozen=True, slots=True)
class WorkersReduced:
    """Fewer workers were granted than requested."""

    task_type: TaskType
    requested: int
    granted: int
    reason: ReductionReason
    detail: str = ""
    headroom: int | None = None


@dataclass(frozen=True, slots=True)
class ExecutorCreated:
    """A rung got its workers: a pool started (or reused), or a Dask cluster connected."""

    kind: ExecutorKind
    workers: int
    task_type: TaskType
    reused: bool


@dataclass(frozen=True, slots=True)
class Fallback:
    """One step down the ladder, from ``from_kind`` to ``to_kind``."""

    from_kind: ExecutorKind
    to_kind: ExecutorKind
    reason: FallbackReason
    cause: FallbackCause = FallbackCause.NONE
    detail: str = ""
    error: BaseException | None = None


@dataclass(frozen=True, slots=True)
class PoolRestarted:
    """A broken pool was discarded; the next call starts a fresh one."""

    kind: ExecutorKind
    reason: FallbackReason
    detail: str = ""
    error: BaseException | None = None


@dataclass(frozen=True, slots=True)
class BatchResubmitted:
    """A batch runs again because its worker was lost (it is still counted once, when it arrives)."""

    kind: ExecutorKind
    index: int
    reason: ResubmissionReason
    worker: str = ""


@dataclass(frozen=True, slots=True)
class QueryResubmitted:
    """A campaign query runs again because its Dask worker was lost (its row is still written once)."""

    kind: ExecutorKind
    index: int
    reason: ResubmissionReason
    worker: str = ""


@dataclass(frozen=True, slots=True)
class LimitsObserved:
    """The thread limits as the executor saw them around its batches (a cached snapshot)."""

    snapshot: Any  # templ_pipeline.core.limits.model.Snapshot
    context: str


@dataclass(frozen=True, slots=True)
class BatchDone:
    """A batch's result arrived; ``result`` is its ``BatchResult`` (with the worker's span, if traced)."""

    kind: ExecutorKind
    size: int
    result: Any  # templ_pipeline.core.batch.BatchResult


@dataclass(frozen=True, slots=True)
class CallDone:
    """The executor finished one call's batches."""

    task_type: TaskType
    requested: int
    granted: int
    kinds: tuple[ExecutorKind, ...]
    batches: int


@dataclass(frozen=True, slots=True)
class ConformersEmbedded:
    """One embedding call returned ``embedded`` of the ``requested`` conformers after ``seconds``.

    RDKit's ``EmbedMultipleConfs`` reports nothing while it runs, and splitting a call would change the
    conformers, so a call is the finest step there is: one per prepared molecule, or one per template
    share when the core is pinned (more when pinning steps down to fewer pins or to free embedding). A
    probe of the pins (one conformer, thrown away) is not reported: the share's call embeds it again.
    """

    requested: int
    embedded: int
    seconds: float


@dataclass(frozen=True, slots=True)
class CampaignStarted:
    """A screening campaign starts: ``total`` queries in the input when cheap to know (else None),
    ``skipped`` of them already done by an earlier run (``--resume``)."""

    total: int | None
    skipped: int
    templates: int
    workers_requested: int = 1


@dataclass(frozen=True, slots=True)
class QueryStarted:
    """A query was taken from the input for a worker (or for this process); ``in_flight`` counts it.

    ``carrier`` starts empty: an observer that traces fills it with the W3C ``traceparent`` of the query's
    span, and the query carries it to its worker, which times its stages under it.
    """

    index: int
    in_flight: int
    carrier: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class QueryFinished:
    """A query's result arrived (``reason`` is None when ``status`` is ok).

    ``query_id`` and ``detail`` are for the log line only, never for a label;
    ``conformers < conformers_requested`` is a shortfall (ETKDG embedded fewer than asked).
    """

    query_id: str
    kind: ExecutorKind
    status: QueryStatus
    reason: QueryFailureReason | None
    seconds: float
    conformers_requested: int
    conformers: int
    scored: int
    failed: int
    in_flight: int
    detail: str = ""
    index: int = -1
    stages: tuple[StageTiming, ...] = ()  # the stages its worker timed under the query's carrier

    @property
    def shortfall(self) -> bool:
        """Some, but not all, of the conformers asked for were embedded."""
        return 0 < self.conformers < self.conformers_requested


@dataclass(frozen=True, slots=True)
class QueryPrepared:
    """A query was prepared for embedding (``core.preparation``): what was done to it, and what came out.

    ``query_id``, the SMILES and ``warning`` are for the log line only; ``actions`` is bounded
    (``PreparationAction``), one count each.
    """

    query_id: str
    input_smiles: str
    smiles: tuple[str, ...]  # the prepared molecules: the query, or each stereoisomer scored
    stereoisomers_possible: int
    removed: str
    actions: tuple[PreparationAction, ...]
    conformers_requested: int
    conformers: int
    warning: str = ""

    @property
    def isomers(self) -> int:
        """The prepared molecules scored."""
        return len(self.smiles)

    def __post_init__(self) -> None:
        if not self.actions:  # nothing done is ``unchanged``, so every query counts once at least
            object.__setattr__(self, "actions", (PreparationAction.UNCHANGED,))

    @property
    def warned(self) -> str:
        """Whether preparation warned, as a bounded value."""
        return "true" if self.warning else "false"


@dataclass(frozen=True, slots=True)
class TemplatesChosen:
    """A query's templates were chosen from the library and its pose made: once per query (select-best or a
    campaign query), for the pose kept (its best stereoisomer's best template).

    ``method`` and ``fallback`` are bounded (``PoseMethod``, ``PinFallback``); the query id, the template's
    name and the core's SMARTS are for the log line only, never for a label.
    """

    query_id: str
    library: int
    chosen: int
    template: str
    similarity: float | None
    core_atoms: int
    core_smarts: str
    method: PoseMethod
    fallback: PinFallback
    pinned_atoms: int
    mcs_timeouts: int
    seconds: float  # choosing the templates (prefilter and MCS), summed over the query's stereoisomers


@dataclass(frozen=True, slots=True)
class WorkerReplaced:
    """A campaign worker was ended (or found dead) and another started in its place."""

    kind: ExecutorKind
    reason: ReplacementReason
    detail: str = ""


@dataclass(frozen=True, slots=True)
class CampaignDone:
    """A campaign ended: queries done in this run, by outcome; ``interrupted`` by a signal."""

    done: int
    ok: int
    failed: int
    seconds: float
    interrupted: bool
    workers_granted: int = 0
    error: BaseException | None = None  # what ended it early, if anything (a signal is not an error)


@dataclass(frozen=True, slots=True)
class EmbeddingInline:
    """No thread could start to run an embedding off the main thread, so it runs there: a signal takes effect
    only when it returns. Once per process."""

    error: str
    note: str = ("no thread for the embedding: it runs in the main thread, and SIGTERM or Ctrl-C take effect "
                 "when it returns")


# ---------------------------------------------------------------------------------------------------------
# Spans are events too: a call's start and end, and the stages a worker timed (data in a result)
# ---------------------------------------------------------------------------------------------------------
def outcome_of(error: BaseException | None) -> str:
    """``ok``, or ``error`` when something escaped (an interrupt included)."""
    return "ok" if error is None else "error"


@dataclass(frozen=True, slots=True)
class SelectBestStarted:
    """A ``select_best`` call starts scoring ``n_conformers`` conformers on up to ``workers_requested``."""

    n_conformers: int
    workers_requested: int


@dataclass(frozen=True, slots=True)
class SelectBestFinished:
    """A ``select_best`` call ended: what was scored and failed (by reason), or the ``error`` that ended it."""

    n_conformers: int
    workers_requested: int
    workers_granted: int | None
    executor_kind: ExecutorKind | None
    scored: int
    failed_by_reason: Mapping[str, int]
    seconds: float
    error: BaseException | None = None

    @property
    def failed(self) -> int:
        """Conformers that could not be scored."""
        return sum(self.failed_by_reason.values())

    @property
    def outcome(self) -> str:
        return outcome_of(self.error)


@dataclass(frozen=True, slots=True)
class ConformersStarted:
    """Conformer generation for one query starts: ``requested`` conformers on up to ``threads_requested``."""

    requested: int
    threads_requested: int


@dataclass(frozen=True, slots=True)
class ConformersFinished:
    """Conformer generation ended: ``generated`` conformers on ``threads`` RDKit threads, or the ``error``."""

    requested: int
    threads_requested: int
    generated: int
    threads: int
    seconds: float
    error: BaseException | None = None

    @property
    def outcome(self) -> str:
        return outcome_of(self.error)


@dataclass(frozen=True, slots=True)
class TemplatesChoosing:
    """Choosing one query's templates from a library of ``library`` starts (select-best, in this process)."""

    library: int


@dataclass(frozen=True, slots=True)
class TemplatesChoiceDone:
    """Choosing the templates ended: ``chosen`` kept, ``mcs_searched`` searched, ``mcs_timeouts`` out of time."""

    chosen: int
    mcs_searched: int
    mcs_timeouts: int
    error: BaseException | None = None




ExecutorEvent = (WorkersGranted | WorkersReduced | ExecutorCreated | Fallback | PoolRestarted | BatchResubmitted
                 | LimitsObserved | BatchDone | CallDone | CampaignStarted | QueryStarted | QueryFinished
                 | WorkerReplaced | QueryResubmitted | CampaignDone | QueryPrepared | TemplatesChosen
                 | ConformersEmbedded | SelectBestStarted | SelectBestFinished | ConformersStarted
                 | ConformersFinished | TemplatesChoosing | TemplatesChoiceDone | EmbeddingInline)

Observer = Callable[[ExecutorEvent], None]
"""Anything that wants to hear of events: called in the emitting thread, in order."""

_process_observers: list[Observer] = []


def subscribe_process(observer: Observer) -> None:
    """Let ``observer`` hear every event of this process's calls, besides their own observers: how the CLI
    wires telemetry in (the chemistry imports none), and how a library user can."""
    if observer not in _process_observers:
        _process_observers.append(observer)


def unsubscribe_process(observer: Observer) -> None:
    """Stop ``observer`` hearing this process's events."""
    if observer in _process_observers:
        _process_observers.remove(observer)


def process_observers() -> tuple[Observer, ...]:
    """The observers every call's events go to, in subscription order."""
    return tuple(_process_observers)


@contextmanager
def reported(emit: Observer, started: ExecutorEvent,
             finished: Callable[[BaseException | None], ExecutorEvent]) -> Iterator[None]:
    """Emit ``started``, run the block, then emit ``finished(error)``: ``error`` is None when the block ended,
    else what escaped it (re-raised). How a call's start and end become events, so a span opened by the first
    is always closed by the second; ``finished`` reads the block's results when it is called (a closure)."""
    emit(started)
    error: BaseException | None = None
    try:
        yield
    except BaseException as escaped:
        error = escaped
        raise
    finally:
        emit(finished(error))


class Emitter:
    """Hands each event to every observer, in order; an observer that raises does not stop the run.

    Reporting must never break the work it reports on: an ``Exception`` from an
    observer is dropped (telemetry counts its own degradations).
    """

    __slots__ = ("_observers",)

    def __init__(self, observers: Iterable[Observer] = ()) -> None:
        self._observers: list[Observer] = list(observers)

    def subscribe(self, observer: Observer) -> None:
        self._observers.append(observer)

    def unsubscribe(self, observer: Observer) -> None:
        if observer in self._observers:
            self._observers.remove(observer)

    def __call__(self, event: ExecutorEvent) -> None:
        for observer in self._observers:
            try:
                observer(event)
            except Exception:
                pass
