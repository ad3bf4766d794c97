"""One batch of conformers scored against a template: the unit of work a pool runs.

This module is what worker processes import, so it stays small: RDKit, the standard
library and the events' vocabularies (:mod:`core.labels`, not the events);
OpenTelemetry's API only once a task carries a trace (:mod:`core.trace_context` times
the batch span; it loads no part of ``telemetry``). Metrics, logs and
span export live in the parent, which counts what the workers send back (each
batch result is counted exactly once, where it arrives).

A pool worker runs :func:`align_batch`, which never touches numpy: numpy is 63 ms of a
fresh worker's 118 ms of imports here (RDKit 42 ms), and RDKit loads it at the first
``GetPositions``. So the worker sends back its batch molecule, aligned, and the parent
reads the coordinates (:func:`with_positions`, as each result arrives); the parent also
checks the conformers' coordinates before it makes the batches (:func:`split_usable`).
:func:`score_batch` does the three in one process.
"""

from __future__ import annotations

import math
import os
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from rdkit import Chem
from rdkit.Chem import rdShapeAlign

from templ_pipeline.core.labels import FailureReason, values
from templ_pipeline.core.trace_context import WorkerSpan, start_worker_span

if TYPE_CHECKING:
    import numpy as np

# Full-precision pickles: RDKit stores coordinates as 32-bit floats in a pickle by
# default, which moved scores by up to 4e-4 between process-pool and in-process runs.
_PICKLE_FLAGS = Chem.PropertyPickleOptions.AllProps | Chem.PropertyPickleOptions.CoordsAsDouble

FAILURE_REASONS: tuple[str, ...] = values(FailureReason)


def mol_to_bytes(mol: Chem.Mol) -> bytes:
    """Serialise a molecule with double-precision coordinates and all properties."""
    binary: bytes = mol.ToBinary(_PICKLE_FLAGS)
    return binary


@dataclass(frozen=True, slots=True)
class ConformerScore:
    """Scores of one conformer and its aligned coordinates (float64, angstrom)."""

    conf_id: int
    shape: float
    color: float
    positions: np.ndarray

    @property
    def combo(self) -> float:
        return 0.5 * (self.shape + self.color)

    def scores(self) -> dict[str, float]:
        return {"shape": self.shape, "color": self.color, "combo": self.combo}


@dataclass(frozen=True, slots=True)
class ConformerFailure:
    """A conformer that could not be scored, with a reason from ``FAILURE_REASONS``."""

    conf_id: int
    reason: FailureReason
    detail: str = ""


@dataclass(slots=True)
class BatchResult:
    """What one batch produced; every conformer id of the task is in exactly one of ``scored``, ``failed`` and
    ``aligned_scores``.

    As :func:`align_batch` leaves it, the scored conformers are ``aligned_scores``
    (id, shape, colour) and their coordinates are in ``aligned``, the batch's
    molecule; :func:`with_positions` makes them ``scored``. Pickled, ``aligned``
    keeps its coordinates in double precision, as a task's molecules do.
    """

    index: int
    scored: list[ConformerScore] = field(default_factory=list)
    failed: list[ConformerFailure] = field(default_factory=list)
    duration_seconds: float = 0.0
    pid: int = 0
    span: WorkerSpan | None = None  # the batch span, when the task carried a trace context
    aligned_scores: list[tuple[int, float, float]] = field(default_factory=list)
    aligned: Chem.Mol | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = {name: getattr(self, name) for name in self.__dataclass_fields__}
        if self.aligned is not None:
            state["aligned"] = mol_to_bytes(self.aligned)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        for name, value in state.items():
            object.__setattr__(self, name, Chem.Mol(value) if name == "aligned" and value is not None else value)


class BatchTask:
    """A batch: the template, a query molecule holding only this batch's conformers.

    In-process runs use the molecules as they are; when the task crosses a process
    boundary it pickles them with double-precision coordinates (``__getstate__``).
    ``align=False`` scores each conformer where it is (a pose pinned on the template's
    core, kept as made) instead of aligning it onto the template first.
    """

    __slots__ = ("index", "template", "template_key", "query", "conf_ids", "carrier", "align")

    def __init__(
        self,
        index: int,
        template: Chem.Mol,
        template_key: str,
        query: Chem.Mol,
        conf_ids: tuple[int, ...],
        carrier: dict[str, str] | None = None,
        align: bool = True,
    ) -> None:
        self.index = index
        self.align = align
        self.template = template
        self.template_key = template_key
        self.query = query
        self.conf_ids = conf_ids
        self.carrier = carrier or {}  # W3C trace context for spans made in a worker

    def __getstate__(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "template": mol_to_bytes(self.template),
            "template_key": self.template_key,
            "query": mol_to_bytes(self.query),
            "conf_ids": self.conf_ids,
            "carrier": self.carrier,
            "align": self.align,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.index = state["index"]
        self.template = Chem.Mol(state["template"])
        self.template_key = state["template_key"]
        self.query = Chem.Mol(state["query"])
        self.conf_ids = state["conf_ids"]
        self.carrier = state["carrier"]
        self.align = state["align"]


class _ShapeCache:
    """Prepared template shapes of this process, so a template is prepared once per call
    (and once per campaign worker, for up to ``size`` templates)."""

    def __init__(self, size: int = 16) -> None:
        self._size = size
        self._shapes: OrderedDict[str, rdShapeAlign.ShapeInput] = OrderedDict()

    def get(self, key: str, template: Chem.Mol) -> rdShapeAlign.ShapeInput:
        shape = self._shapes.get(key)
        if shape is None:
            shape = rdShapeAlign.PrepareConformer(template, -1)
            self._shapes[key] = shape
            while len(self._shapes) > self._size:
                self._shapes.popitem(last=False)
        else:
            self._shapes.move_to_end(key)
        return shape


_SHAPES = _ShapeCache()
_IN_PLACE = rdShapeAlign.ShapeInputOptions()
_IN_PLACE.useColors = True  # the colour (pharmacophore) score, as AlignMol's useColors=True


def _usable(stacked: np.ndarray) -> np.ndarray:
    """Which of the conformers ``stacked`` (conformers, atoms, 3) have usable coordinates: some atoms, all
    finite, not all at one point."""
    import numpy as np  # the parent's: a pool worker never checks coordinates

    if stacked.shape[1] == 0:
        return np.zeros(len(stacked), dtype=bool)
    usable: np.ndarray = np.isfinite(stacked).all(axis=(1, 2)) & np.ptp(stacked, axis=1).any(axis=1)
    return usable


def has_coordinates(positions: np.ndarray) -> bool:
    """True when the conformer has usable coordinates (finite and not all at one point)."""
    return bool(_usable(positions[None])[0])


def split_usable(confs: Chem.Mol, conf_ids: Sequence[int]) -> tuple[list[int], list[ConformerFailure]]:
    """``conf_ids`` whose conformers have usable coordinates (:func:`has_coordinates`), and the others as
    failures: checked before batching, all at once (a call's 200 conformers one by one cost its caller 1.5 ms
    here)."""
    import numpy as np

    if not conf_ids:
        return [], []
    usable = _usable(np.stack([confs.GetConformer(conf_id).GetPositions() for conf_id in conf_ids])).tolist()
    return ([conf_id for conf_id, ok in zip(conf_ids, usable, strict=True) if ok],
            [ConformerFailure(conf_id, FailureReason.NO_COORDINATES, "coordinates missing or not finite")
             for conf_id, ok in zip(conf_ids, usable, strict=True) if not ok])


def sanitized_copy_without_conformers(confs: Chem.Mol) -> Chem.Mol | None:
    """The query topology, sanitized once per call; None when it cannot be sanitized."""
    base = Chem.Mol(confs)
    base.RemoveAllConformers()
    try:
        flags = Chem.SanitizeMol(base, catchErrors=True)
    except Exception:  # RDKit raises assorted types for broken valences and kekulisation
        return None
    return base if flags == Chem.SanitizeFlags.SANITIZE_NONE else None


def batch_query(base: Chem.Mol, confs: Chem.Mol, conf_ids: Sequence[int]) -> Chem.Mol:
    """The batch's own molecule: the query topology plus copies of its conformers."""
    query = Chem.Mol(base)
    for conf_id in conf_ids:
        query.AddConformer(confs.GetConformer(conf_id), assignId=False)
    return query


def score_batch(task: BatchTask) -> BatchResult:
    """Check, align and score every conformer of ``task.query`` in this process: :func:`split_usable`,
    :func:`align_batch` on the others, then :func:`with_positions`.

    Never raises for one conformer: a failure is recorded with its reason. The
    query is modified in place (it is the batch's own copy, made by the caller).
    """
    usable, unusable = split_usable(task.query, task.conf_ids)
    if unusable:
        task = BatchTask(task.index, task.template, task.template_key, task.query, tuple(usable), task.carrier,
                         align=task.align)
    result = with_positions(align_batch(task))
    if unusable:
        result.failed = sorted([*unusable, *result.failed], key=lambda failure: failure.conf_id)
    return result


def align_batch(task: BatchTask) -> BatchResult:
    """Align every conformer of ``task.query`` onto the template and score it: what a pool worker runs.

    The conformers' coordinates are the parent's to check (:func:`split_usable`), and their aligned
    coordinates the parent's to read (:func:`with_positions`): here they stay in the molecule, which goes
    back whole. Never raises for one conformer: a failure is recorded with its reason. The query is
    modified in place (it is the batch's own copy, made by the caller).
    """
    started = time.perf_counter()
    result = BatchResult(index=task.index, pid=os.getpid())
    clock = start_worker_span(task.carrier, result.pid)
    shape = _SHAPES.get(task.template_key, task.template)
    query = task.query
    for conf_id in task.conf_ids:
        try:
            if task.align:
                shape_score, color_score = rdShapeAlign.AlignMol(
                    shape, query, probeConfId=conf_id, useColors=True, applyRefShift=True
                )
            else:
                shape_score, color_score = rdShapeAlign.ScoreMol(shape, query, _IN_PLACE, molConfId=conf_id)
        except (RuntimeError, ValueError) as exc:
            result.failed.append(
                ConformerFailure(conf_id, FailureReason.ALIGNMENT_FAILED, f"{type(exc).__name__}: {exc}"))
            continue
        if not (math.isfinite(shape_score) and math.isfinite(color_score)):
            result.failed.append(ConformerFailure(conf_id, FailureReason.ALIGNMENT_FAILED, "non-finite score"))
            continue
        result.aligned_scores.append((conf_id, shape_score, color_score))
    if result.aligned_scores:
        result.aligned = query
    result.duration_seconds = time.perf_counter() - started
    if clock is not None:
        result.span = clock.finish()
    return result


def with_positions(result: BatchResult) -> BatchResult:
    """``result`` with its aligned conformers as ``scored``, each with its coordinates read from the batch's
    molecule (the same ``result`` when there is nothing to read)."""
    if not result.aligned_scores:
        return result
    aligned = result.aligned
    assert aligned is not None
    scored = [ConformerScore(conf_id, shape, color, aligned.GetConformer(conf_id).GetPositions())
              for conf_id, shape, color in result.aligned_scores]
    return replace(result, scored=[*result.scored, *scored], aligned_scores=[], aligned=None)
