"""Choosing a query's templates from a library: a 2D prefilter, then the largest common substructure.

TEMPL poses a query like the known ligand it shares the most with. Over a whole
library the maximum common substructure (MCS) is too slow to compute for every
template, so:

1. **Prefilter**: the Morgan-fingerprint Tanimoto similarity of the query to every
   template (RDKit's ``BulkTanimotoSimilarity``, one native call over the library:
   about 0.1 ms per 1,000 templates here) keeps the ``prefilter`` most similar.
2. **MCS**: RDKit's RascalMCES (maximum common edge subgraph, its largest connected
   fragment, rings matched only to rings, aromatic rings whole) on each of those,
   within one time budget per query (``mcs_timeout``). RascalMCES bounds each search
   in whole seconds, so one search may overrun the budget by up to a second; once
   the budget is spent, no further search starts and the candidates left keep their
   2D rank with no core (``mcs_timeout`` in the record).
3. **Rank**: by core size (atoms), then 2D similarity, then library order: on a
   full tie the earlier record wins, so the choice never depends on timing or
   on how many templates were searched in parallel.

``top=None`` keeps every template (no selection: today's "score against all").
Templates identical to the query (the same molecule, :func:`identity_key`) are
dropped with ``exclude_identical``, for leave-one-out benchmarks.

Worker processes import this module: RDKit and numpy only.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
from rdkit import Chem, DataStructs, rdBase
from rdkit.Chem import rdRascalMCES

from templ_pipeline.core.native_call import call_interruptibly, native_call_starting
from templ_pipeline.core.template_library import TemplateLibrary, fingerprint_generator, identity_key

DEFAULT_TOP = 5
DEFAULT_PREFILTER = 30
DEFAULT_MCS_TIMEOUT = 5.0
"""Seconds of MCS search per query at most (one search may overrun it by up to a second)."""


@dataclass(frozen=True, slots=True)
class ChoiceOptions:
    """How templates are chosen (``--top-templates``, ``--mcs-timeout``, ``--exclude-identical``)."""

    top: int | None = DEFAULT_TOP  # None: every template, none chosen (no MCS, no pinned core)
    prefilter: int = DEFAULT_PREFILTER
    mcs_timeout: float = DEFAULT_MCS_TIMEOUT
    exclude_identical: bool = False
    pin: bool = True  # False: the chosen templates score free conformers (no core pinned)

    def __post_init__(self) -> None:
        if self.top is not None and self.top < 1:
            raise ValueError(f"top must be at least 1 (or None for all), got {self.top}")
        if self.prefilter < 1:
            raise ValueError(f"prefilter must be at least 1, got {self.prefilter}")
        if self.mcs_timeout <= 0:
            raise ValueError(f"mcs_timeout must be positive, got {self.mcs_timeout}")

    @property
    def selects(self) -> bool:
        """Whether templates are chosen (and cores pinned), rather than all scored as given."""
        return self.top is not None

    def as_dict(self) -> dict[str, object]:
        return {"top": "all" if self.top is None else self.top, "prefilter": self.prefilter,
                "mcs_timeout": self.mcs_timeout, "exclude_identical": self.exclude_identical, "pin": self.pin}


@dataclass(frozen=True, slots=True)
class TemplateMatch:
    """One template chosen for a query: its place in the library, its 2D similarity and the shared core.

    ``atom_map`` pairs (query atom, template atom) indices of the heavy-atom molecules;
    ``smarts`` is the core as RascalMCES writes it; ``mcs_timed_out`` when the core is
    the best the search found in its time (or empty: no search was left time for).
    """

    index: int
    similarity: float
    atom_map: tuple[tuple[int, int], ...] = ()
    smarts: str = ""
    mcs_timed_out: bool = False

    @property
    def core_atoms(self) -> int:
        return len(self.atom_map)


@dataclass(frozen=True, slots=True)
class TemplateChoice:
    """The templates chosen for one query, best first, and how the choice went."""

    chosen: tuple[TemplateMatch, ...]
    library_size: int
    excluded: int = 0  # templates identical to the query, dropped
    searched: int = 0  # MCS searches run
    mcs_timeouts: int = 0  # searches that ran out of time (or were not started for lack of it)
    seconds: float = 0.0


def choose_templates(query: Chem.Mol, library: TemplateLibrary, options: ChoiceOptions = ChoiceOptions()
                     ) -> TemplateChoice:
    """The ``options.top`` templates of ``library`` that share the largest core with ``query`` (heavy atoms)."""
    started = time.perf_counter()
    query = Chem.RemoveHs(query)
    if not options.selects:
        everything = tuple(TemplateMatch(index, math.nan) for index in range(len(library)))
        return TemplateChoice(everything, len(library), seconds=time.perf_counter() - started)
    similarities = np.asarray(DataStructs.BulkTanimotoSimilarity(
        fingerprint_generator().GetFingerprint(query), library.fingerprints))
    allowed = np.ones(len(library), dtype=bool)
    if options.exclude_identical:
        key = identity_key(query)
        allowed = np.array([other != key for other in library.identity_keys], dtype=bool)
    # stable sort on -similarity: equal similarities keep library order
    order = [int(index) for index in np.argsort(-similarities, kind="stable") if allowed[index]]
    candidates = order[:max(options.prefilter, options.top or 0)]
    # off the main thread: a search does not hold up SIGINT or SIGTERM (RascalMCES ignores Python's handlers)
    matches, searched, timeouts = call_interruptibly(
        lambda: _search(query, library, candidates, similarities, started + options.mcs_timeout), name="templ-mcs")
    matches.sort(key=lambda match: (-match.core_atoms, -match.similarity, match.index))
    return TemplateChoice(tuple(matches[:options.top]), len(library), int((~allowed).sum()), searched, timeouts,
                          time.perf_counter() - started)


def _search(query: Chem.Mol, library: TemplateLibrary, candidates: list[int], similarities: np.ndarray,
            deadline: float) -> tuple[list[TemplateMatch], int, int]:
    """The MCS of ``query`` with each candidate until ``deadline``; the searches run and the timeouts."""
    matches: list[TemplateMatch] = []
    searched = timeouts = 0
    for index in candidates:
        left = deadline - time.perf_counter()
        if left <= 0:
            matches.append(TemplateMatch(index, float(similarities[index]), mcs_timed_out=True))
            timeouts += 1
            continue
        match = _mcs(query, library.mols[index], index, float(similarities[index]), math.ceil(left))
        searched += 1
        timeouts += match.mcs_timed_out
        matches.append(match)
    return matches, searched, timeouts


def _mcs(query: Chem.Mol, template: Chem.Mol, index: int, similarity: float, timeout: int) -> TemplateMatch:
    """The largest connected common substructure of ``query`` and ``template`` (RascalMCES)."""
    options = rdRascalMCES.RascalOptions()
    options.similarityThreshold = 0.0  # every prefiltered candidate is searched; the prefilter ranked them
    options.singleLargestFrag = True  # one connected core: its atoms are pinned together
    options.ringMatchesRingOnly = True
    options.completeAromaticRings = True
    options.timeout = max(1, timeout)
    native_call_starting()
    try:
        with rdBase.BlockLogs():
            results = rdRascalMCES.FindMCES(query, template, options)
    except RuntimeError as error:
        if "cancelled" in str(error).lower():  # RDKit took a SIGINT itself ("Rascal cancelled."): the user's stop
            raise KeyboardInterrupt(str(error)) from error
        raise
    if not results:
        return TemplateMatch(index, similarity)
    best = results[0]
    return TemplateMatch(index, similarity, tuple((int(q), int(t)) for q, t in best.atomMatches()),
                         best.smartsString, bool(best.timedOut))
