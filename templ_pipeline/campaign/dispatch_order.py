"""Which query a free worker gets next: the largest of the next few, so that a campaign does not end on one.

A campaign's last minutes are the ones its workers wait in: when the last query handed out
is a large flexible ligand, every other worker is idle until it is done. Over the bundled
library at 2 workers the last query left one worker idle for 0.4 s of a 10 s campaign.
Handing out the largest query of a window first (the longest-processing-time rule) ends
the window, and the campaign, on small ones. The window is bounded, so a campaign of
millions is still read lazily, and the order changes nothing of a query's result: each is
embedded with its own seed (rows come in the order queries finish, as before).

The size is what the record says without parsing it (the parent builds no molecule per query):
a SMILES' atoms (bracket atoms and the organic subset, hydrogens not counted) or a molfile's
atom count. Conformer generation, most of a query's time, grows with it. The last few
queries of a campaign (``tail``: a few per worker) are ordered by work, the size times the
stereoisomers the query will be embedded as (:func:`isomers_embedded`): that is where a
query of two isomers handed out after the small ones leaves a worker idle (0.3 s of a 10 s
campaign over the bundled library). Counting needs a parse (0.1-0.2 ms a query), done once
per campaign for the tail only, so its cost does not grow with the campaign or the window.
What the order does not see (flexibility) makes it approximate, not wrong.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Callable, Iterator

from rdkit import Chem, rdBase
from rdkit.Chem.EnumerateStereoisomers import GetStereoisomerCount

from templ_pipeline.campaign.queries import QueryRecord
from templ_pipeline.core.preparation import PreparationOptions, StereoPolicy, stereo_enumeration

WINDOW = 64
"""Queries read ahead to choose from: a few seconds of work for 2-16 workers, a few hundred bytes each."""
TAIL_PER_WORKER = 4
TAIL = 2 * TAIL_PER_WORKER
"""The last queries ordered by work: ``TAIL_PER_WORKER`` per worker (the campaign passes its own), enough
that each worker's last few are small ones."""

_SMILES_ATOM = re.compile(r"\[(?!H\d*[\]+\-@:])[^\]]*\]|Br|Cl|[BCNOSPFI]|[bcnosp]")
"""A heavy atom of a SMILES: a bracket atom other than hydrogen, or an organic-subset symbol."""


def query_size(record: QueryRecord) -> int:
    """The heavy atoms of ``record``'s SMILES, or the atoms of its first molfile (0 when neither says)."""
    if record.smiles is not None:
        return len(_SMILES_ATOM.findall(record.smiles))
    if record.molblocks:
        lines = record.molblocks[0].split("\n", 4)
        counts = lines[3] if len(lines) > 3 else ""
        return int(counts[:3]) if counts[:3].strip().isdigit() else 0
    return 0


def isomers_embedded(record: QueryRecord, options: PreparationOptions) -> int:
    """The stereoisomers ``record`` will be embedded as under ``options`` (RDKit's count of those its unassigned
    centres allow, enumerated and capped as preparation does); 1 when it does not parse."""
    if options.stereo is not StereoPolicy.ENUMERATE:
        return 1
    # a record that does not parse (or that RDKit cannot count) is the worker's to report, as a row: the order
    # never stops a campaign
    with rdBase.BlockLogs():
        try:
            if record.smiles is not None:
                mol = Chem.MolFromSmiles(record.smiles)
            else:
                mol = Chem.MolFromMolBlock(record.molblocks[0]) if record.molblocks else None
            if mol is None:
                return 1
            return max(1, min(GetStereoisomerCount(mol, options=stereo_enumeration(options)), options.max_isomers))
        except Exception:  # RDKit's own errors (a RuntimeError from a molecule it cannot perceive)
            return 1


class LargestFirst(Iterator[QueryRecord]):
    """The records of ``records`` in windows of ``window``: each next one the largest of the window
    (the earliest in the input on a tie), the window refilled as it goes. Once the input is read to its end
    and ``tail`` records are left, those are ordered by size times ``isomers(record)`` (when given)."""

    def __init__(self, records: Iterator[QueryRecord], window: int = WINDOW,
                 isomers: Callable[[QueryRecord], int] | None = None, tail: int = TAIL) -> None:
        self._records = records
        self._window = max(1, window)
        self._isomers = isomers
        self._tail = max(1, tail)
        self._heap: list[tuple[int, int, QueryRecord]] = []
        self._read = 0
        self._ended = False

    def __next__(self) -> QueryRecord:
        self._read_window()
        if self._ended and self._isomers is not None and len(self._heap) <= self._tail:
            self._order_tail(self._isomers)
        if not self._heap:
            raise StopIteration
        return heapq.heappop(self._heap)[2]

    def in_tail(self) -> bool:
        """Whether at most ``tail`` records are left (the window read first, as the next record would)."""
        self._read_window()
        return self._ended and len(self._heap) <= self._tail

    def _read_window(self) -> None:
        while not self._ended and len(self._heap) < self._window:
            record = next(self._records, None)
            if record is None:
                self._ended = True
                break
            heapq.heappush(self._heap, (-query_size(record), self._read, record))
            self._read += 1

    def _order_tail(self, isomers: Callable[[QueryRecord], int]) -> None:
        self._isomers = None  # once
        self._heap = [(size * isomers(record), read, record) for size, read, record in self._heap]
        heapq.heapify(self._heap)
