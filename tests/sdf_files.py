"""Writing test molecules to SDF files for runs of the ``templ`` command."""

from __future__ import annotations

from pathlib import Path

from rdkit import Chem


def write_sdf(path: Path, mol: Chem.Mol, copies: int = 1) -> Path:
    """Write every conformer of ``mol`` to ``path`` as one record each, ``copies`` times over; return ``path``."""
    with Chem.SDWriter(str(path)) as writer:
        for copy in range(copies):
            for conf in mol.GetConformers():
                mol.SetProp("_Name", f"copy{copy}-conf{conf.GetId()}")
                writer.write(mol, confId=conf.GetId())
    return path
