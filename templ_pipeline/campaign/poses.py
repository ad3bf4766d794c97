"""A pose as the SDF record a campaign writes: the query's name, SMILES, template and scores as properties
(named by :class:`~templ_pipeline.core.vocabulary.Field`, numbers as :func:`format_value` writes them).

Campaign workers build their queries' records (RDKit only, so they import this
module), which keeps the parent's cost per query to a write: one parent can then
keep many workers busy.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping

import numpy as np
from rdkit import Chem

from templ_pipeline.core.vocabulary import Field, format_value


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
                pose_rank: int | None = 1, preparation: Mapping[str, str | int | float] | None = None) -> str:
    """The SDF record of ``pose`` (modified: it gets the name and properties), ending with ``$$$$``.

    ``preparation`` (input SMILES, isomer, removed fragments, what was done, the template choice) is
    written after ``query_smiles`` and ``template_name``, before the metric and scores.
    """
    pose.SetProp("_Name", name)
    pose.SetProp(Field.QUERY_SMILES, query_smiles)
    pose.SetProp(Field.TEMPLATE_NAME, template_name)
    for prop, value in (preparation or {}).items():
        pose.SetProp(prop, format_value(prop, value))
    pose.SetProp(Field.METRIC, metric)
    for prop, value in ((Field.SHAPE, shape), (Field.COLOR, color), (Field.COMBO, combo),
                        (Field.CONFORMER_ID, conformer_id), (Field.POSE_RANK, pose_rank)):
        if value is not None:
            pose.SetProp(prop, format_value(prop, value))
    buffer = io.StringIO()
    writer = Chem.SDWriter(buffer)
    writer.write(pose, confId=pose.GetConformer().GetId())
    writer.close()  # flushes into the StringIO (which stays open)
    return buffer.getvalue()


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
