"""One canonical form of a molecule, so that answers depend on the molecule and not on how it was written.

ETKDG's conformers depend on the order of the atoms it is given (measured: the same
ligand rooted at another atom of its SMILES gave combo 0.7179 instead of 0.7212 at 50
conformers), and so do RDKit's stereoisomer enumeration and the atom map of a common
substructure. Two files describing the same molecule in different atom orders, or as
SMILES and as an SD record, would then give different poses.

:func:`canonical_molecule` rebuilds a molecule from its canonical isomeric SMILES: the
same SMILES text parsed the same way gives the same molecule, bit for bit (checked:
``Mol.ToBinary`` equal and ETKDG coordinates equal for a SMILES, any permutation of its
atoms, and an SD record of it read with or without its hydrogens, for charged,
aromatic-heterocycle, E/Z and ring-stereo cases). Whatever RDKit perceived on the way
in (stereo from 3D coordinates, explicit hydrogens, property-cache flags) is left behind.

:func:`canonical_order` keeps a molecule's atoms and conformers and only renumbers them
in the order the canonical SMILES writes them: for conformers that are used as given.

Worker processes import this module: RDKit only.
"""

from __future__ import annotations

from rdkit import Chem, rdBase

_OUTPUT_ORDER = "_smilesAtomOutputOrder"  # RDKit's computed property: atom indices in the order MolToSmiles wrote them


def canonical_molecule(mol: Chem.Mol) -> Chem.Mol:
    """The heavy-atom molecule rebuilt from its canonical isomeric SMILES, without conformers or properties.

    The SMILES of the rebuilt molecule is written once more and, where RDKit's
    canonicalisation has not settled (rare stereo cases), the molecule is rebuilt from
    that second text, so two spellings meet at the same string. A molecule whose SMILES
    RDKit cannot read back is renumbered in canonical order instead (:func:`canonical_order`).
    """
    with rdBase.BlockLogs():
        heavy = Chem.RemoveHs(mol, sanitize=False)
        heavy.RemoveAllConformers()
        smiles = Chem.MolToSmiles(heavy)
        rebuilt = Chem.MolFromSmiles(smiles)
        if rebuilt is None:
            return canonical_order(heavy)
        again = Chem.MolToSmiles(rebuilt)
        if again != smiles:
            settled = Chem.MolFromSmiles(again)
            rebuilt = settled if settled is not None else rebuilt
    return rebuilt


def canonical_order(mol: Chem.Mol) -> Chem.Mol:
    """``mol`` with its atoms (hydrogens included) renumbered in its canonical SMILES order; its conformers follow.

    Conformer properties do not survive RDKit's renumbering: callers that keep data on
    conformers set it afterwards.
    """
    probe = Chem.Mol(mol)
    with rdBase.BlockLogs():
        Chem.MolToSmiles(probe)
    order = [int(index) for index in probe.GetPropsAsDict(includePrivate=True, includeComputed=True)[_OUTPUT_ORDER]]
    return Chem.RenumberAtoms(mol, order)
