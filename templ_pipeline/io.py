"""Reading templates and conformer sets from SDF (plain or gzip-compressed), example data.

Bad input raises ``InputError`` with a one-line message naming the file and, for
SDF, the record number (1-based), so the CLI can report it without a traceback.
Writing poses is :mod:`templ_pipeline.pose_output`'s job.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import BinaryIO

from rdkit import Chem, rdBase

from templ_pipeline.core.batch import has_coordinates
from templ_pipeline.core.canonical import canonical_order
from templ_pipeline.core.template_library import LeftOut, LibraryProblem, TemplateLibrary, receptor_like, record_name
from templ_pipeline.errors import InputError
from templ_pipeline.safe_files import describe_mode

__all__ = ["Example", "ExampleName", "InputError", "conformers_of_records", "example_names", "examples",
           "read_conformers", "read_sdf_records", "read_template", "read_template_library", "record_properties"]

_RECORD_NAME = "_Name"  # RDKit's property for an SD record's first line

#: The first two bytes of every gzip member (RFC 1952): compressed input is recognised by content, not name.
_GZIP_MAGIC = b"\x1f\x8b"
#: Protein structure files, each also gzip-compressed: never a template (a template is a ligand, as SDF).
_STRUCTURE_SUFFIXES = (".pdb", ".ent", ".cif", ".mmcif", ".pdbqt")
#: How a PDB file's first line starts (its record names), or an mmCIF file's (a data block).
_STRUCTURE_STARTS = ("HEADER", "TITLE ", "COMPND", "REMARK", "CRYST1", "ATOM  ", "HETATM", "MODEL ", "data_")


@dataclass(frozen=True)
class Example:
    """A bundled template/query pair."""

    name: str
    template: Chem.Mol
    query_smiles: str


def _examples_table() -> list[dict[str, str]]:
    with (resources.files("templ_pipeline") / "data" / "examples.csv").open() as handle:
        return list(csv.DictReader(handle))


def example_names() -> tuple[str, ...]:
    """The names of the bundled pairs, in ``examples.csv`` order (no template is read)."""
    return tuple(row["name"] for row in _examples_table())


#: The bundled pairs (``templ demo --example``), one member per row of ``examples.csv``.
ExampleName = StrEnum("ExampleName", [(name, name) for name in example_names()])  # type: ignore[misc]  # from the data


@contextmanager
def _sdf_stream(path: Path) -> Iterator[BinaryIO]:
    """The SDF bytes of ``path``, gunzipped when it is gzip data; unreadable files are ``InputError``.

    Gzip data is decompressed here, before RDKit reads it: an exception raised inside
    RDKit's reads of a Python file object comes out as a ``SystemError`` without the
    cause (measured with a truncated ``.sdf.gz``), so corrupt data could not be named.
    """
    if not path.is_file():
        what = (f"is {describe_mode(path.stat().st_mode)}, expected an SDF file" if path.exists()
                else "standard input is not read here, give the SDF file" if str(path) == "-"
                else "no such file")
        raise InputError(f"{path}: {what}")
    try:
        with open(path, "rb") as handle:
            compressed = handle.read(2) == _GZIP_MAGIC
            handle.seek(0)
            if compressed:
                stream: BinaryIO = io.BytesIO(gzip.GzipFile(fileobj=handle, mode="rb").read())
            else:
                stream = open(path, "rb")  # noqa: SIM115 - the with below closes it
    except OSError as exc:  # gzip.BadGzipFile is an OSError
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except (EOFError, zlib.error) as exc:
        raise InputError(f"{path}: cannot read: corrupt gzip data ({exc})") from None
    with stream, rdBase.BlockLogs():
        yield stream


def _supplier(stream: BinaryIO, *, remove_hs: bool) -> Chem.ForwardSDMolSupplier:
    return Chem.ForwardSDMolSupplier(stream, removeHs=remove_hs)


def read_template(path: str | os.PathLike[str]) -> Chem.Mol:
    """The first record of an SDF file; it must carry a 3D pose."""
    path = Path(path)
    with _sdf_stream(path) as stream:
        mol = next(iter(_supplier(stream, remove_hs=True)), None)
    if mol is None:
        raise InputError(f"{path}: record 1 is not a readable molecule")
    if not has_coordinates(mol.GetConformer().GetPositions()) or not mol.GetConformer().Is3D():
        raise InputError(f"{path}: record 1 has no 3D coordinates; the template needs a 3D pose")
    return mol


def read_sdf_records(path: str | os.PathLike[str], *, remove_hs: bool = True
                     ) -> Iterator[tuple[int, Chem.Mol | None, str]]:
    """Each record of an SDF file (plain or gzip) as ``(record, molecule, problem)``: the molecule is None when
    RDKit cannot read the record, and ``problem`` says why (else "")."""
    path = Path(path)
    with _sdf_stream(path) as stream:
        for number, mol in enumerate(_supplier(stream, remove_hs=remove_hs), start=1):
            yield number, mol, "" if mol is not None else "not a readable molecule"


def read_template_library(path: str | os.PathLike[str], *, allow_large: bool = False) -> TemplateLibrary:
    """The template library of an SDF file (the crystal ligands of one target, one reference frame).

    Unreadable records, records without a 3D pose, records that look like a receptor
    (:func:`~templ_pipeline.core.template_library.receptor_like`; kept with ``allow_large``)
    and exact duplicates are left out and listed in ``problems``; ``InputError`` only when
    no record is usable, or when the file is a protein structure (PDB or mmCIF, by name
    or content): the template is a ligand, given as SDF.
    """
    path = Path(path)
    suffixes = "".join(path.suffixes[-2:]).lower()
    if any(suffixes.endswith(ext + gz) for ext in _STRUCTURE_SUFFIXES for gz in ("", ".gz")):
        raise InputError(_structure_file(path))
    records: list[tuple[int, Chem.Mol]] = []
    problems: list[LibraryProblem] = []
    for number, mol, problem in read_sdf_records(path):
        if mol is None:
            problems.append(LibraryProblem(number, LeftOut.UNREADABLE, problem))
        elif not has_coordinates(mol.GetConformer().GetPositions()) or not mol.GetConformer().Is3D():
            problems.append(LibraryProblem(number, LeftOut.NO_3D, "no 3D coordinates; a template needs a 3D pose"))
        elif not allow_large and (why := receptor_like(mol)):
            problems.append(LibraryProblem(number, LeftOut.RECEPTOR,
                                           f"looks like a receptor, not a ligand: {why}; give the ligand's pose "
                                           "(or allow large templates: --allow-large-templates)"))
        else:
            records.append((number, mol))
    if not records:
        if _structure_text(path):
            raise InputError(_structure_file(path))
        if not problems:
            raise InputError(f"{path}: no molecule records")
        first = problems[0]
        raise InputError(f"{path}: no usable template: record {first.record} {first.detail}"
                         + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
    names = [record_name(mol) or f"template_{number}" for number, mol in records]
    return TemplateLibrary.from_records(records, names, problems)


def _structure_file(path: Path) -> str:
    return (f"{path}: a protein structure file (PDB/mmCIF); the template must be the ligand's 3D pose as SDF "
            "(.sdf or .sdf.gz), e.g. the ligand extracted from this structure")


def _structure_text(path: Path) -> bool:
    """Whether the file's first line is a PDB record or an mmCIF data block: a structure under another name."""
    with _sdf_stream(path) as stream:
        first = stream.readline(256).decode("ascii", "replace")
    return first.startswith(_STRUCTURE_STARTS)


def read_conformers(path: str | os.PathLike[str]) -> Chem.Mol:
    """One molecule whose conformers are the SDF's records, conformer id = record number - 1.

    Every record must be the same molecule as record 1 (atoms may come in any order:
    every record is renumbered in the molecule's canonical order). Explicit hydrogens are kept:
    shape and colour scores ignore them (measured: identical scores with and without),
    and the written pose is the user's molecule, hydrogens and all.
    """
    path = Path(path)
    with _sdf_stream(path) as stream:
        return conformers_of_records(_supplier(stream, remove_hs=False), str(path))


def conformers_of_records(records: Iterable[Chem.Mol | None], source: str) -> Chem.Mol:
    """One molecule holding each record's conformer (id = record number - 1), or an ``InputError``
    naming ``source`` and the record that is unreadable or another molecule than record 1.

    Atoms are in the molecule's canonical order (:func:`~templ_pipeline.core.canonical.canonical_order`),
    whatever order the file wrote them in, the coordinates following them: the same molecule and poses give
    the same templates, scores and written poses from any file.
    Each conformer carries its record's name and SD properties (conformer properties,
    which survive RDKit's pickles), so a pose written for conformer 17 says what
    record 18 said: :func:`record_properties` gives them back.
    """
    reference: Chem.Mol | None = None
    reference_smiles = ""
    for number, mol in enumerate(records, start=1):
        if mol is None:
            raise InputError(f"{source}: record {number} is not a readable molecule")
        properties = {name: mol.GetProp(name) for name in mol.GetPropNames()}  # text: "1.50" stays "1.50"
        record_name = mol.GetProp(_RECORD_NAME) if mol.HasProp(_RECORD_NAME) else ""
        mol = canonical_order(mol)  # RDKit's renumbering keeps no property: they are read first
        if reference is None:
            reference = Chem.Mol(mol)
            reference.RemoveAllConformers()
            reference_smiles = Chem.MolToSmiles(mol)
        mol = _in_reference_order(mol, reference, reference_smiles, source, number)
        conformer = Chem.Conformer(mol.GetConformer())
        conformer.SetId(number - 1)
        for name, value in properties.items():
            conformer.SetProp(name, value)
        conformer.SetProp(_RECORD_NAME, record_name)
        reference.AddConformer(conformer, assignId=False)
    if reference is None:
        raise InputError(f"{source}: no molecule records")
    return reference


def record_properties(mol: Chem.Mol, conf_id: int) -> tuple[str | None, dict[str, str]]:
    """The record name and SD properties :func:`conformers_of_records` kept on conformer ``conf_id``;
    ``(None, {})`` for a conformer that came from no record (one generated from SMILES)."""
    conformer = mol.GetConformer(conf_id)
    if not conformer.HasProp(_RECORD_NAME):
        return None, {}
    properties = {name: conformer.GetProp(name) for name in conformer.GetPropNames()}
    return conformer.GetProp(_RECORD_NAME), properties


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
    ends = ((bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()) for bond in mol.GetBonds())
    bonds = frozenset((min(a, b), max(a, b)) for a, b in ends)
    return elements, bonds


def examples() -> list[Example]:
    """The template/query pairs bundled in ``templ_pipeline/data``."""
    data = resources.files("templ_pipeline") / "data"
    found = []
    for row in _examples_table():
        with resources.as_file(data / row["template_sdf"]) as template_path:
            found.append(Example(row["name"], read_template(template_path), row["query_smiles"]))
    return found
