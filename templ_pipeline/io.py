"""Reading templates and conformer sets from SDF, writing chosen poses, example data.

Bad input raises ``InputError`` with a one-line message naming the file and, for
SDF, the record number (1-based), so the CLI can report it without a traceback.
"""

from __future__ import annotations

import csv
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import BinaryIO

from rdkit import Chem, rdBase

from templ_pipeline.core.batch import has_coordinates


class InputError(ValueError):
    """Unusable input: a file, record or argument the user can fix."""


@dataclass(frozen=True)
class Example:
    """A bundled template/query pair."""

    name: str
    template: Chem.Mol
    query_smiles: str


def _open_sdf(path: Path) -> BinaryIO:
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        return open(path, "rb")
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from exc


def read_template(path: str | os.PathLike[str]) -> Chem.Mol:
    """The first record of an SDF file; it must carry a 3D pose."""
    path = Path(path)
    with _open_sdf(path) as handle, rdBase.BlockLogs():
        mol = next(iter(Chem.ForwardSDMolSupplier(handle, removeHs=True)), None)
    if mol is None:
        raise InputError(f"{path}: record 1 is not a readable molecule")
    if not has_coordinates(mol.GetConformer().GetPositions()) or not mol.GetConformer().Is3D():
        raise InputError(f"{path}: record 1 has no 3D coordinates; the template needs a 3D pose")
    return mol


def read_templates(path: str | os.PathLike[str]) -> list[Chem.Mol]:
    """Every record of an SDF file (the crystal ligands of one target, say); each needs a 3D pose."""
    path = Path(path)
    templates = []
    with _open_sdf(path) as handle, rdBase.BlockLogs():
        for number, mol in enumerate(Chem.ForwardSDMolSupplier(handle, removeHs=True), start=1):
            if mol is None:
                raise InputError(f"{path}: record {number} is not a readable molecule")
            if not has_coordinates(mol.GetConformer().GetPositions()) or not mol.GetConformer().Is3D():
                raise InputError(f"{path}: record {number} has no 3D coordinates; a template needs a 3D pose")
            templates.append(mol)
    if not templates:
        raise InputError(f"{path}: no molecule records")
    return templates


def read_conformers(path: str | os.PathLike[str]) -> Chem.Mol:
    """One molecule whose conformers are the SDF's records, conformer id = record number - 1.

    Every record must be the same molecule as record 1 (atoms may come in another
    order: they are renumbered to record 1's order).
    """
    path = Path(path)
    with _open_sdf(path) as handle, rdBase.BlockLogs():
        return conformers_of_records(Chem.ForwardSDMolSupplier(handle, removeHs=True), str(path))


def conformers_of_records(records: Iterable[Chem.Mol | None], source: str) -> Chem.Mol:
    """One molecule holding each record's conformer (id = record number - 1), or an ``InputError``
    naming ``source`` and the record that is unreadable or another molecule than record 1."""
    reference: Chem.Mol | None = None
    reference_smiles = ""
    for number, mol in enumerate(records, start=1):
        if mol is None:
            raise InputError(f"{source}: record {number} is not a readable molecule")
        if reference is None:
            reference = Chem.Mol(mol)
            reference.RemoveAllConformers()
            reference_smiles = Chem.MolToSmiles(mol)
        mol = _in_reference_order(mol, reference, reference_smiles, source, number)
        conformer = Chem.Conformer(mol.GetConformer())
        conformer.SetId(number - 1)
        reference.AddConformer(conformer, assignId=False)
    if reference is None:
        raise InputError(f"{source}: no molecule records")
    return reference


def _in_reference_order(mol: Chem.Mol, reference: Chem.Mol, smiles: str, path: str, number: int) -> Chem.Mol:
    """``mol`` with its atoms in ``reference``'s order, or an ``InputError``."""
    record_smiles = Chem.MolToSmiles(mol)
    if record_smiles != smiles:
        raise InputError(f"{path}: record {number} is another molecule ({record_smiles}) than record 1 ({smiles})")
    if _graph(mol) == _graph(reference):
        return mol
    match = mol.GetSubstructMatch(reference)
    if len(match) != reference.GetNumAtoms():
        raise InputError(f"{path}: record {number} cannot be matched atom by atom to record 1")
    return Chem.RenumberAtoms(mol, list(match))


def _graph(mol: Chem.Mol) -> tuple[tuple[int, ...], frozenset[tuple[int, int]]]:
    """Elements in atom order and bonds by atom index: equal graphs share one atom order."""
    elements = tuple(atom.GetAtomicNum() for atom in mol.GetAtoms())
    bonds = frozenset(tuple(sorted((bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()))) for bond in mol.GetBonds())
    return elements, bonds


def check_output_path(path: str | os.PathLike[str]) -> Path:
    """``path`` as a Path, or an ``InputError`` when its directory is missing or read-only."""
    path = Path(path)
    directory = path.parent
    if not directory.is_dir():
        raise InputError(f"{path}: directory {directory} does not exist")
    if not os.access(directory, os.W_OK):
        raise InputError(f"{path}: directory {directory} is not writable")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected a file name")
    return path


def write_poses(path: str | os.PathLike[str], poses: Iterable[tuple[Chem.Mol, dict[str, str | int | float]]]) -> int:
    """Write poses with their properties to ``path`` atomically; return the count."""
    path = check_output_path(path)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    count = 0
    try:
        with os.fdopen(fd, "w") as handle:
            writer = Chem.SDWriter(handle)
            for mol, properties in poses:
                for name, value in properties.items():
                    _set_prop(mol, name, value)
                writer.write(mol, confId=mol.GetConformer().GetId())
                count += 1
            writer.close()
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return count


def _set_prop(mol: Chem.Mol, name: str, value: str | int | float) -> None:
    if isinstance(value, bool) or isinstance(value, str):
        mol.SetProp(name, str(value))
    elif isinstance(value, int):
        mol.SetIntProp(name, value)
    else:
        mol.SetDoubleProp(name, float(value))


def examples() -> list[Example]:
    """The template/query pairs bundled in ``templ_pipeline/data``."""
    data = resources.files("templ_pipeline") / "data"
    with (data / "examples.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    found = []
    for row in rows:
        with resources.as_file(data / row["template_sdf"]) as template_path:
            found.append(Example(row["name"], read_template(template_path), row["query_smiles"]))
    return found
