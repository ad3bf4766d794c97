"""A pose as the SDF record a campaign writes: the query's name, SMILES, template and scores as properties.

Campaign workers build their queries' records (RDKit only, so they import this
module), which keeps the parent's cost per query to a write: one parent can then
keep many workers busy.
"""

from __future__ import annotations

import io
from collections.abc import Mapping

import numpy as np
from rdkit import Chem


def aligned_pose(topology: Chem.Mol, conf_id: int, positions: np.ndarray) -> Chem.Mol:
    """``topology`` (no conformer) with one 3D conformer ``conf_id`` at ``positions``."""
    mol = Chem.Mol(topology)
    conformer = Chem.Conformer(mol.GetNumAtoms())
    conformer.SetPositions(positions)
    conformer.SetId(conf_id)
    conformer.Set3D(True)
    mol.AddConformer(conformer, assignId=False)
    return mol


def pose_record(pose: Chem.Mol, *, name: str, smiles: str, template: str, shape: float | None,
                color: float | None, combo: float | None, conformer_id: int | None,
                preparation: Mapping[str, str | int] | None = None) -> str:
    """The SDF record of ``pose`` (modified: it gets the name and properties), ending with ``$$$$``.

    ``preparation`` (input SMILES, isomer, removed fragments, what was done) is
    written after ``smiles`` and ``template``, before the scores.
    """
    pose.SetProp("_Name", name)
    pose.SetProp("smiles", smiles)
    pose.SetProp("template", template)
    for prop, value in (preparation or {}).items():
        if isinstance(value, int):
            pose.SetIntProp(prop, value)
        else:
            pose.SetProp(prop, str(value))
    for prop, value in (("shape", shape), ("color", color), ("combo", combo)):
        if value is not None:
            pose.SetDoubleProp(prop, float(value))
    if conformer_id is not None:
        pose.SetIntProp("conformer_id", conformer_id)
    buffer = io.StringIO()
    writer = Chem.SDWriter(buffer)
    writer.write(pose, confId=pose.GetConformer().GetId())
    writer.close()  # flushes into the StringIO (which stays open)
    return buffer.getvalue()
