"""A pose as the SDF record a campaign writes: the query's name, SMILES, template and scores as properties
(named by :class:`~templ_pipeline.core.vocabulary.Field`, numbers as :func:`format_value` writes them).

Campaign workers build their queries' records (RDKit only, so they import this
module), which keeps the parent's cost per query to a write: one parent can then
keep many workers busy. The record itself is made by
:func:`~templ_pipeline.pose_records.sd_text`, as ``select-best`` makes its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
from rdkit import Chem

from templ_pipeline.core.vocabulary import Field, format_value
from templ_pipeline.pose_records import PoseRecord, PropertyValue, sd_text


def aligned_pose(topology: Chem.Mol, conf_id: int, positions: np.ndarray) -> Chem.Mol:
    """``topology`` (no conformer) with one 3D conformer ``conf_id`` at ``positions``."""
    mol = Chem.Mol(topology)
    conformer = Chem.Conformer(mol.GetNumAtoms())
    conformer.SetPositions(positions)
    conformer.SetId(conf_id)
    conformer.Set3D(True)
    mol.AddConformer(conformer, assignId=False)
    return mol


def pose_record(pose: Chem.Mol, *, name: str, query_smiles: str, template_name: str, metric: str,
                shape: float | None, color: float | None, combo: float | None, conformer_id: int | None,
                pose_rank: int | None = 1, preparation: Mapping[str, PropertyValue] | None = None) -> str:
    """The SDF record of ``pose`` (modified: it gets the name and properties), ending with ``$$$$``.

    ``preparation`` (input SMILES, isomer, removed fragments, what was done, the template choice) is
    written after ``query_smiles`` and ``template_name``, before the metric and scores; scores, conformer
    id and pose rank that are None are left out.
    """
    scores: dict[str, PropertyValue] = {Field.SHAPE: shape, Field.COLOR: color, Field.COMBO: combo,
                                        Field.CONFORMER_ID: conformer_id, Field.POSE_RANK: pose_rank}
    properties: dict[str, PropertyValue] = {
        Field.QUERY_SMILES: query_smiles, Field.TEMPLATE_NAME: template_name, **(preparation or {}),
        Field.METRIC: metric, **{prop: value for prop, value in scores.items() if value is not None}}
    return sd_text([PoseRecord(pose, name, properties)])


def with_properties(record: str, items: Iterable[tuple[str, object]]) -> str:
    """An SDF record (ending with ``$$$$``) with data items added at its end, in order.

    A value is written on as many lines as it has, blank lines left out (a blank line
    ends an SD value); a value line that reads ``$$$$`` gets a leading space, so it
    never ends the record. ``<`` and ``>`` in a name become ``_``.
    """
    body, separator, end = record.rpartition("$$$$")
    if not separator:
        raise ValueError("not an SDF record: no $$$$ line")
    added = []
    for name, value in items:
        lines = [line if line.rstrip() != "$$$$" else f" {line}"
                 for line in format_value(name, value).replace("\r\n", "\n").replace("\r", "\n").split("\n")
                 if line.strip()]
        label = name.replace("<", "_").replace(">", "_")
        added.append(f">  <{label}>  \n" + "".join(f"{line}\n" for line in lines) + "\n")
    return f"{body}{''.join(added)}{separator}{end}"
