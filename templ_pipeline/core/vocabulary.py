"""The names of pose properties and table columns, and how their numbers are written: one vocabulary.

``templ select-best``, ``templ demo`` and ``templ screen`` (its ``scores.csv``,
``hits.csv``, ``poses.sdf`` and ``hits.sdf``) name the same fact the same way, so
a script reads any of their outputs with one set of names. Data carried from the
input (a CSV's extra columns, an SD file's tags) is written under ``input.NAME``:
none of these names holds a dot, so input data never clashes with ours.

Numbers are written with fixed decimals (:data:`DECIMALS`): 4 for scores and
similarities (the shape and colour model agrees with itself to about 1e-6, so
the fourth decimal is still meaningful and ties are rare), 3 for distances in
angstrom and for seconds. Files are then the same bytes on every run and sort
the same way in any tool.

Imported by campaign workers: the standard library only.
"""

from __future__ import annotations

from enum import StrEnum


class Metric(StrEnum):
    """What poses are ranked by (``align_metric``, ``--metric``): shape or colour Tanimoto, or their mean.

    Here, not beside the scoring: a campaign's settings carry a member to every worker, and unpickling
    it imports its class's module; :mod:`core.scoring` would bring the executor's modules with it,
    about 40 ms before each worker's first query."""

    SHAPE = "shape"
    COLOR = "color"
    COMBO = "combo"


class Field(StrEnum):
    """A pose property or table column (the value is the name written)."""

    RANK = "rank"  # 1-based position among the records of the output it is in, best first by the metric
    QUERY_ID = "query_id"  # the input id, or ``ID#n`` for its n-th stereoisomer
    INPUT_ID = "input_id"  # the query's id in the input (groups the rows of one query)
    INPUT_RECORD = "input_record"  # 1-based position of the query in the input file
    QUERY_SMILES = "query_smiles"  # the molecule scored, after preparation (canonical)
    INPUT_SMILES = "input_smiles"  # the query as given
    ISOMER = "isomer"
    ISOMERS = "isomers"
    REMOVED = "removed"
    PREPARATION = "preparation"
    STATUS = "status"
    REASON = "reason"  # one bounded word (QueryFailureReason, or fewer_conformers)
    DETAIL = "detail"  # the reason as a sentence
    TEMPLATE_NAME = "template_name"
    TEMPLATE_RECORD = "template_record"  # 1-based record in the template file
    TEMPLATE_SIMILARITY = "template_similarity"
    CORE_ATOMS = "core_atoms"
    CORE_SMARTS = "core_smarts"
    POSE_METHOD = "pose_method"  # how the pose was made (PoseMethod)
    PIN_FALLBACK = "pin_fallback"
    PINNED_ATOMS = "pinned_atoms"
    RUNNER_UP = "runner_up"
    RMSD = "rmsd"
    N_CONFORMERS_REQUESTED = "n_conformers_requested"
    N_CONFORMERS = "n_conformers"
    N_SCORED = "n_scored"
    N_FAILED = "n_failed"
    METRIC = "metric"
    SHAPE = "shape"
    COLOR = "color"
    COMBO = "combo"
    CONFORMER_ID = "conformer_id"
    POSE_RANK = "pose_rank"  # 1-based rank of the pose among its own molecule's poses, best first
    SECONDS = "seconds"


INPUT_PREFIX = "input."
"""The prefix of the names of data carried from the input (``input.activity``)."""

DECIMALS: dict[str, int] = {
    Field.SHAPE: 4, Field.COLOR: 4, Field.COMBO: 4, Field.TEMPLATE_SIMILARITY: 4,
    Field.RMSD: 3, Field.SECONDS: 3,
}
"""Decimals written for each numeric field; any other float is written as its shortest exact text."""


def format_value(name: str, value: object) -> str:
    """``value`` as written in a column or pose property ``name``: empty for None, fixed decimals for
    :data:`DECIMALS`."""
    if value is None:
        return ""
    if isinstance(value, float):
        decimals = DECIMALS.get(name)
        return repr(value) if decimals is None else f"{value:.{decimals}f}"
    return str(value)


def rounded(name: str, value: float) -> float:
    """``value`` rounded as it is written (for JSON summaries that must agree with the files)."""
    decimals = DECIMALS.get(name)
    return value if decimals is None else round(value, decimals)


def input_name(column: str) -> str:
    """The namespaced name of an input column or SD tag (``input.activity``)."""
    return f"{INPUT_PREFIX}{column}"
