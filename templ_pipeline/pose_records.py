"""A written pose as one SD record: its record name and its properties, as ``select-best``, ``demo`` and
``screen`` write them.

:func:`sd_text` is the one place poses become SD text: each record's name, then each
property in the order the caller gives (the order is the file's layout), each value as
:func:`~templ_pipeline.core.vocabulary.format_value` writes it (scores with their fixed
decimals, None as an empty value). RDKit numbers the records of one text in the
property headers (``>  <shape>  (2)``): ``select-best --all-ranked`` writes its poses
as one text; a campaign makes each record alone and appends it. :func:`isomer_name`
names the pose of a query's stereoisomer. RDKit only: campaign workers import this
module to build their queries' records, which keeps the parent's cost per query to a
write.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from rdkit import Chem

from templ_pipeline.core.vocabulary import format_value

__all__ = ["PoseRecord", "PropertyValue", "isomer_name", "sd_text"]

PropertyValue = str | int | float | None
"""An SD property value before it is written (:func:`~templ_pipeline.core.vocabulary.format_value`)."""


@dataclass(frozen=True, slots=True)
class PoseRecord:
    """One SD record: a single-conformer molecule, its record name and its SD properties, in order."""

    mol: Chem.Mol
    name: str
    properties: Mapping[str, PropertyValue]


def isomer_name(name: str, isomer: int) -> str:
    """The name of the pose of a query's ``isomer``-th stereoisomer: ``name#isomer`` (``name`` itself for
    isomer 0, a query whose stereoisomers were not enumerated)."""
    return f"{name}#{isomer}" if isomer else name


def sd_text(records: Iterable[PoseRecord]) -> str:
    """The SDF text of ``records``, each ending with ``$$$$``. Each ``mol`` is modified: it gets its record's
    name and properties, in order (a property it already has keeps its place, with the new value)."""
    buffer = io.StringIO()
    writer = Chem.SDWriter(buffer)
    for record in records:
        pose = record.mol
        pose.SetProp("_Name", record.name)
        for prop, value in record.properties.items():
            # float(): a numpy float prints as np.float64(...) where the vocabulary fixes no decimals
            pose.SetProp(prop, format_value(prop, float(value) if isinstance(value, float) else value))
        writer.write(pose, confId=pose.GetConformer().GetId())
    writer.close()  # flushes into the StringIO (which stays open)
    return buffer.getvalue()
