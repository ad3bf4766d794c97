"""Known poses (``--reference``): how far each predicted pose is from the crystal pose of its query.

A methods developer benchmarks against poses known from crystal structures. Each
query is matched to its reference by name (the reference record's name is the
query's id, as in a leave-one-out over a library) or else by being the same
molecule (:func:`~templ_pipeline.core.template_library.identity_key`, then the same
molecule ignoring stereo). The distance
is the heavy-atom RMSD *in place*: no superposition (the poses share the
reference's frame, as the templates do), symmetry-aware (RDKit's ``CalcRMS`` tries
the molecule's automorphisms, so a flipped phenyl ring is not an error). A pose whose
molecule differs from the reference's only in protonation is compared neutralised.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from rdkit import Chem, rdBase
from rdkit.Chem import rdMolAlign
from rdkit.Chem.MolStandardize import rdMolStandardize

from templ_pipeline.core.template_library import identity_key
from templ_pipeline.errors import InputError
from templ_pipeline.io import read_sdf_records

MAX_MATCHES = 10_000
"""Symmetry matches tried per RMSD: a ligand with several symmetric groups has thousands; RDKit's default
(a million) can take seconds for one pose."""

RMSD_DECIMALS = 3


@dataclass
class ReferencePoses:
    """Reference poses by record name and by molecule identity (the first record wins on a repeat)."""

    by_name: dict[str, Chem.Mol] = field(default_factory=dict)
    by_identity: dict[str, Chem.Mol] = field(default_factory=dict)
    by_graph: dict[str, Chem.Mol] = field(default_factory=dict)  # by the molecule without its stereo

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> ReferencePoses:
        """The poses of an SDF file; ``InputError`` when none is readable."""
        path = Path(path)
        references = cls()
        for _record, mol, _problem in read_sdf_records(path):
            if mol is None:
                continue
            heavy = Chem.RemoveHs(mol)
            name = mol.GetProp("_Name").strip() if mol.HasProp("_Name") else ""
            if name:
                references.by_name.setdefault(name, heavy)
            references.by_identity.setdefault(identity_key(heavy), heavy)
            references.by_graph.setdefault(graph_key(heavy), heavy)
        if not references.by_identity:
            raise InputError(f"{path}: no readable reference pose (--reference)")
        return references

    def find(self, name: str, pose: Chem.Mol) -> Chem.Mol | None:
        """The reference pose of the query called ``name`` whose pose is ``pose``; None when there is none."""
        reference = self.by_name.get(name)
        if reference is not None and graph_key(reference) == graph_key(pose):
            return reference
        return self.by_identity.get(identity_key(pose)) or self.by_graph.get(graph_key(pose))

    def rmsd(self, name: str, pose: Chem.Mol) -> float | None:
        """The pose's heavy-atom RMSD in place to its reference (A), None without one."""
        reference = self.find(name, pose)
        return None if reference is None else rmsd_in_place(pose, reference)


def graph_key(mol: Chem.Mol) -> str:
    """The molecule without stereo. A pose read back from its SD record has the stereo RDKit perceives in its
    coordinates, which a strained pose can change (a sulfonyl sulphur read as trigonal-bipyramidal): the
    pose is still of its query, and the RMSD (which ignores stereo tags) is still its distance."""
    flat = Chem.Mol(mol)
    Chem.RemoveStereochemistry(flat)
    return identity_key(flat)


def rmsd_in_place(pose: Chem.Mol, reference: Chem.Mol) -> float | None:
    """Symmetry-aware heavy-atom RMSD of ``pose`` to ``reference`` without superposition; None when the two
    are not the same molecule even neutralised."""
    probe, target = Chem.RemoveHs(pose), Chem.RemoveHs(reference)
    for attempt in range(2):
        try:
            with rdBase.BlockLogs():
                return round(rdMolAlign.CalcRMS(probe, target, maxMatches=MAX_MATCHES), RMSD_DECIMALS)
        except (RuntimeError, ValueError):
            if attempt:
                return None
            uncharger = rdMolStandardize.Uncharger()
            with rdBase.BlockLogs():
                probe, target = uncharger.uncharge(probe), uncharger.uncharge(target)
    return None
