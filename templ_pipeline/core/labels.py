"""The bounded vocabularies of the executor's and the campaign's events: each a ``StrEnum``, defined once.

Telemetry's catalog takes its label value sets from them, so every value the executor can emit
is a value the metrics know (and export at 0 from the start). A ``StrEnum`` member is its string,
so ``Fallback.reason == "broken_pool"`` holds. :mod:`templ_pipeline.core.events` re-exports them
beside the events.

Apart from the events so that workers import these and not the 28 event classes (whose dataclasses
take 10-19 ms of each worker's start): a pool worker names failure reasons (``batch.py``), a campaign
worker preparation's actions and pose methods. The standard library only.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TypeVar


class ExecutorKind(StrEnum):
    """The kinds of rung on the fallback ladder."""

    PROCESS = "process"
    THREAD = "thread"
    SEQUENTIAL = "sequential"
    DASK = "dask"


class TaskType(StrEnum):
    """What workers are sized for: scoring batches (processes), conformer embedding (RDKit threads),
    or screening (processes that each embed one query on one RDKit thread and score it)."""

    SCORING = "scoring"
    CONFORMERS = "conformers"
    SCREENING = "screening"


class LimitName(StrEnum):
    """The kernel limits that can refuse a new thread or process."""

    PIDS_CGROUP = "pids_cgroup"
    RLIMIT_NPROC = "rlimit_nproc"
    THREADS_MAX = "threads_max"
    PID_MAX = "pid_max"
    STACK_MEMORY = "stack_memory"


_Vocabulary = TypeVar("_Vocabulary", bound=type[StrEnum])


def _extends_limits(vocabulary: _Vocabulary) -> _Vocabulary:
    """Check that ``vocabulary`` starts with every LimitName member, in order (a StrEnum cannot be extended,
    and a type checker cannot see members made at run time, so the limits are listed again and checked)."""
    limits = [(limit.name, limit.value) for limit in LimitName]
    if [(member.name, member.value) for member in vocabulary][:len(limits)] != limits:
        raise TypeError(f"{vocabulary.__name__} must start with the members of LimitName")
    return vocabulary


@_extends_limits
class ReductionReason(StrEnum):
    """Why fewer workers were granted than requested: a limit, a thread manager that could not answer,
    other processes sharing the limit that reserved its headroom (the shared ledger), a seccomp
    profile under which no thread can start, fewer CPUs than workers for CPU-bound work
    (``cpu_limit``: affinity or the cgroup CPU quota), work too small to repay starting them
    (``small_work``), or a pool that is starting in the background while the call runs in the caller
    (``pool_starting``)."""

    PIDS_CGROUP = "pids_cgroup"
    RLIMIT_NPROC = "rlimit_nproc"
    THREADS_MAX = "threads_max"
    PID_MAX = "pid_max"
    STACK_MEMORY = "stack_memory"
    MANAGER_UNAVAILABLE = "manager_unavailable"
    MANAGER_FAILED = "manager_failed"
    RESERVED_BY_OTHERS = "reserved_by_others"
    SECCOMP = "seccomp"
    CPU_LIMIT = "cpu_limit"
    SMALL_WORK = "small_work"
    POOL_STARTING = "pool_starting"

    @property
    def is_limit(self) -> bool:
        """Whether a limit or a failure cut the workers (worth a warning), not the sizing's own choice for speed
        (``small_work``, ``pool_starting``: the call runs faster as it is)."""
        return self not in (ReductionReason.SMALL_WORK, ReductionReason.POOL_STARTING)


class FallbackReason(StrEnum):
    """Why the executor stepped down a rung."""

    THREAD_START_FAILED = "thread_start_failed"
    PROCESS_START_FAILED = "process_start_failed"
    BROKEN_POOL = "broken_pool"
    MANAGER_UNAVAILABLE = "manager_unavailable"
    DAEMON_PROCESS = "daemon_process"
    NO_HEADROOM = "no_headroom"
    SUBMIT_FAILED = "submit_failed"
    SCHEDULER_UNREACHABLE = "scheduler_unreachable"  # no scheduler answered at the address
    SCHEDULER_LOST = "scheduler_lost"  # the scheduler went away while the run was on it
    NO_WORKERS = "no_workers"  # the scheduler had no worker for the bounded wait (none came, or all left)


class StartKind(StrEnum):
    """What the kernel refused to start: a thread, or a process (a pool worker)."""

    THREAD = "thread"
    PROCESS = "process"


#: The fallback reasons that are a refused start, and what was refused.
REFUSED_STARTS: dict[FallbackReason, StartKind] = {
    FallbackReason.THREAD_START_FAILED: StartKind.THREAD,
    FallbackReason.PROCESS_START_FAILED: StartKind.PROCESS,
}


@_extends_limits
class FallbackCause(StrEnum):
    """Which limit (or filter) refused a start; ``none`` when the fallback is not about a start."""

    PIDS_CGROUP = "pids_cgroup"
    RLIMIT_NPROC = "rlimit_nproc"
    THREADS_MAX = "threads_max"
    PID_MAX = "pid_max"
    STACK_MEMORY = "stack_memory"
    SECCOMP = "seccomp"
    UNKNOWN = "unknown"
    NONE = "none"


class ResubmissionReason(StrEnum):
    """Why a batch or query ran again: its worker died while running it, or died holding its result, or
    (a Dask campaign's query) the task it shared with other queries was cancelled or given up."""

    WORKER_LOST = "worker_lost"
    RESULT_LOST = "result_lost"
    TASK_CANCELLED = "task_cancelled"


class FailureReason(StrEnum):
    """Why one conformer could not be scored."""

    NO_COORDINATES = "no_coordinates"
    SANITIZATION_FAILED = "sanitization_failed"
    ALIGNMENT_FAILED = "alignment_failed"
    INVALID_MOLECULE = "invalid_molecule"


class QueryStatus(StrEnum):
    """How one query of a campaign ended: a best pose, or a failure with a reason."""

    OK = "ok"
    FAILED = "failed"


class QueryFailureReason(StrEnum):
    """Why one query of a campaign has no pose (the detail goes to the log, never to a label)."""

    INVALID_SMILES = "invalid_smiles"
    INVALID_RECORD = "invalid_record"
    UNSUPPORTED_ELEMENT = "unsupported_element"  # refused before embedding: no shape radius for an element
    TOO_SMALL = "too_small"  # refused before embedding: too few heavy atoms to align
    EMBEDDING_FAILED = "embedding_failed"
    NO_CONFORMER_SCORED = "no_conformer_scored"
    TIMEOUT = "timeout"
    WORKER_LOST = "worker_lost"
    ERROR = "error"


class PreparationAction(StrEnum):
    """What query preparation did to one query (``core.preparation``); a query may have several."""

    UNCHANGED = "unchanged"
    FRAGMENTS_REMOVED = "fragments_removed"  # counterions, solvents or smaller fragments dropped
    LARGE_FRAGMENT_REMOVED = "large_fragment_removed"  # one of them was a large organic part: a warning
    ISOTOPES_CLEARED = "isotopes_cleared"
    TAUTOMER_CANONICALIZED = "tautomer_canonicalized"
    STEREO_ENUMERATED = "stereo_enumerated"
    STEREO_CAPPED = "stereo_capped"  # more stereoisomers than the cap allowed
    STEREO_FIRST = "stereo_first"
    STEREO_UNASSIGNED = "stereo_unassigned"  # left to ETKDG, as asked
    UNSUPPORTED_ELEMENT = "unsupported_element"
    TOO_SMALL = "too_small"


class PoseMethod(StrEnum):
    """How a query's conformers were made for a template (``core.pinning``): the shared core pinned on the
    template's coordinates, part of it pinned (a stereocentre or unmet constraints left some free), or free
    ETKDG (no core to pin, or no template selection)."""

    PINNED = "pinned"
    PINNED_PARTIAL = "pinned_partial"
    INPUT = "input"  # the conformers given (--use-input-conformers), scored as they are
    FREE = "free"


class PinFallback(StrEnum):
    """Why the core was not pinned whole; ``none`` when it was."""

    NONE = "none"
    NOT_SELECTED = "not_selected"  # --top-templates all: every template scored, no core chosen
    PIN_OFF = "pin_off"  # --no-pin: templates chosen, conformers free
    SMALL_CORE = "small_core"  # the common substructure is too small to fix an orientation
    MCS_TIMEOUT = "mcs_timeout"  # the MCS search had no time left for this template
    STEREO_MISMATCH = "stereo_mismatch"  # the template would invert a stereocentre of the query
    CONSTRAINTS_UNMET = "constraints_unmet"  # ETKDG could not embed with the pins


class ReplacementReason(StrEnum):
    """Why a campaign worker was ended and replaced: its query ran over the time limit, it died, or it was
    recycled between queries (its memory grew, or it ran its quota of queries)."""

    TIMEOUT = "timeout"
    WORKER_LOST = "worker_lost"
    RECYCLED = "recycled"


def values(vocabulary: type[StrEnum]) -> tuple[str, ...]:
    """The string values of a vocabulary, in declaration order (the metric label value sets)."""
    return tuple(member.value for member in vocabulary)




def cause_of(limit: str | None) -> FallbackCause:
    """A grant's binding limit (or seccomp) as a fallback cause; ``none`` when neither was named."""
    return FallbackCause(limit) if limit in (*values(LimitName), "seccomp") else FallbackCause.NONE


def no_room_reason(limit: str | None) -> FallbackReason:
    """Why a grant left no room for workers: under seccomp no thread starts, else the headroom is gone."""
    return FallbackReason.THREAD_START_FAILED if limit == "seccomp" else FallbackReason.NO_HEADROOM
