"""A template library: the crystal ligands of one target, in one reference frame, prepared once per run.

A chemist's templates are hundreds to tens of thousands of ligands of one target.
They are read once (:func:`templ_pipeline.io.read_template_library`) and prepared
here once per process: heavy-atom molecules with their poses, a Morgan fingerprint
each for the 2D prefilter, and an identity key each, so that ``--exclude-identical``
can drop the query itself from its own library. A campaign sends the library to each
worker once (it pickles as its molecules and names; a worker rebuilds the
fingerprints, about 0.1 ms a ligand).

Records that repeat an earlier record exactly (same molecule, same pose) add nothing
and are dropped as duplicates; the same ligand in another pose (another crystal
structure) is kept, as it is another template.

A template is a ligand. A record that looks like the receptor (:func:`receptor_like`)
is left out unless the caller allows large templates: a protein saved as SDF was
scored without a word (combo 0.07) and posed nothing. The rule: more than
:data:`MAX_TEMPLATE_HEAVY_ATOMS` heavy atoms, or a peptide backbone of
:data:`RECEPTOR_RESIDUES` residues or more (a protein chain, or pocket residues cut
out of one). Drug-like ligands stay far below both (the 770 Polaris Mpro ligands: at
most 41 heavy atoms and 2 residues), and so do large ligands: cyclosporin A has 85
heavy atoms and 11 residues. A 40-residue peptide has 329 heavy atoms.

Worker processes import this module: RDKit and numpy only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property

import numpy as np
from rdkit import Chem, DataStructs, rdBase
from rdkit.Chem import rdFingerprintGenerator
from rdkit.Chem.MolStandardize import rdMolStandardize

FINGERPRINT_RADIUS = 2
FINGERPRINT_BITS = 2048
"""Morgan (ECFP4-like) bit vectors: the usual 2D similarity for choosing analogues."""

_DUPLICATE_DECIMALS = 2
"""Poses equal to 0.01 A are the same pose (SDF writes coordinates to 1e-4 A)."""

MAX_TEMPLATE_HEAVY_ATOMS = 150
"""More heavy atoms than this is a receptor (or a complex), not a ligand template."""
RECEPTOR_RESIDUES = 16
"""Peptide residues (N-CA-C(=O), counted by alpha carbon) from which a record is a protein chain or pocket:
a chain of 16 glycines has only 65 heavy atoms."""
_RESIDUE = Chem.MolFromSmarts("[NX3,NX4+][CX4][CX3](=[OX1])")


class LeftOut(StrEnum):
    """Why a record of the template file is not in the library."""

    UNREADABLE = "unreadable"
    NO_3D = "no_3d"
    DUPLICATE = "duplicate"
    RECEPTOR = "receptor"  # looks like a receptor (a polymer, far larger than a ligand)


@dataclass(frozen=True, slots=True)
class LibraryProblem:
    """A record of the template file that is not in the library, and why; ``record`` is 1-based."""

    record: int
    reason: LeftOut
    detail: str


def receptor_like(mol: Chem.Mol) -> str:
    """Why ``mol`` looks like a receptor rather than a ligand template, in a few words; "" when it does not."""
    heavy = mol.GetNumHeavyAtoms()
    if heavy > MAX_TEMPLATE_HEAVY_ATOMS:
        return f"{heavy} heavy atoms (a ligand template has at most {MAX_TEMPLATE_HEAVY_ATOMS})"
    residues = len({match[1] for match in mol.GetSubstructMatches(_RESIDUE, maxMatches=10 * heavy)})
    if residues >= RECEPTOR_RESIDUES:
        return f"a peptide backbone of {residues} residues (a ligand template has fewer than {RECEPTOR_RESIDUES})"
    return ""


def record_name(mol: Chem.Mol) -> str:
    """An SD record's title line, stripped ("" when it has none)."""
    return mol.GetProp("_Name").strip() if mol.HasProp("_Name") else ""


def template_names(templates: Sequence[Chem.Mol]) -> list[str]:
    """Each template's record name, or ``template_<n>`` (1-based) when it has none."""
    return [record_name(mol) or f"template_{number}" for number, mol in enumerate(templates, start=1)]


def identity_key(mol: Chem.Mol) -> str:
    """What makes two ligands the same molecule: the canonical isomeric SMILES of the neutralised heavy-atom
    molecule (a protonation state is not another molecule)."""
    with rdBase.BlockLogs():
        heavy = Chem.RemoveHs(mol, sanitize=False)
        try:
            heavy = rdMolStandardize.Uncharger().uncharge(heavy)
        except (RuntimeError, ValueError):  # an unchargeable valence: the molecule as given
            pass
        return str(Chem.MolToSmiles(heavy))


def fingerprint_generator() -> rdFingerprintGenerator.FingerprintGenerator64:
    return rdFingerprintGenerator.GetMorganGenerator(radius=FINGERPRINT_RADIUS, fpSize=FINGERPRINT_BITS)


def pose_key(mol: Chem.Mol) -> tuple[str, bytes]:
    """The molecule and its pose in canonical atom order, rounded: equal keys are duplicate records."""
    order = list(Chem.CanonicalRankAtoms(mol, breakTies=True))
    positions = mol.GetConformer().GetPositions()
    ranked = np.empty_like(positions)
    ranked[order] = positions
    return identity_key(mol), np.round(ranked, _DUPLICATE_DECIMALS).tobytes()


class TemplateLibrary:
    """The templates of one run, in file order: heavy-atom molecules with a 3D pose, their names, their
    1-based record numbers in the file, and what was left out (``problems``)."""

    def __init__(self, mols: Sequence[Chem.Mol], names: Sequence[str], records: Sequence[int] | None = None,
                 problems: Sequence[LibraryProblem] = ()) -> None:
        if len(mols) != len(names):
            raise ValueError("a template library needs one name per molecule")
        self.mols = list(mols)
        self.names = list(names)
        self.records = list(records) if records is not None else list(range(1, len(mols) + 1))
        self.problems = tuple(problems)

    def __len__(self) -> int:
        return len(self.mols)

    def __reduce__(self) -> tuple[object, ...]:
        # molecules as RDKit binaries with double-precision coordinates; fingerprints are rebuilt where used
        from templ_pipeline.core.batch import mol_to_bytes

        return (_rebuild, (tuple(mol_to_bytes(mol) for mol in self.mols), tuple(self.names), tuple(self.records),
                           self.problems))

    @cached_property
    def fingerprints(self) -> list[DataStructs.ExplicitBitVect]:
        generator = fingerprint_generator()
        return [generator.GetFingerprint(mol) for mol in self.mols]

    @cached_property
    def identity_keys(self) -> list[str]:
        return [identity_key(mol) for mol in self.mols]

    @classmethod
    def from_records(cls, records: Sequence[tuple[int, Chem.Mol]], names: Sequence[str],
                     problems: Sequence[LibraryProblem] = ()) -> TemplateLibrary:
        """The library of the readable ``(record, molecule)`` pairs, exact duplicates left out as problems."""
        seen: dict[tuple[str, bytes], int] = {}
        kept: list[tuple[int, Chem.Mol, str]] = []
        found = list(problems)
        for (record, mol), name in zip(records, names, strict=True):
            key = pose_key(mol)
            if key in seen:
                found.append(LibraryProblem(record, LeftOut.DUPLICATE,
                                            f"the same molecule and pose as record {seen[key]}"))
                continue
            seen[key] = record
            kept.append((record, mol, name))
        found.sort(key=lambda problem: problem.record)
        return cls([mol for _, mol, _ in kept], [name for _, _, name in kept], [record for record, _, _ in kept],
                   found)


def _rebuild(binaries: tuple[bytes, ...], names: tuple[str, ...], records: tuple[int, ...],
             problems: tuple[LibraryProblem, ...]) -> TemplateLibrary:
    return TemplateLibrary([Chem.Mol(binary) for binary in binaries], names, records, problems)
