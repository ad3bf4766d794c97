"""Templates are ligands: a receptor saved as SDF is left out (or refused when it is all there is), a protein
structure file is pointed at the SDF the template must be, and ``--allow-large-templates`` keeps large records.

A real protein-sized molecule: a 40-residue peptide (RDKit's ``MolFromSequence``) with 3D coordinates, written
to SDF. Real Polaris Mpro ligands as the ligand templates; the real ``templ`` in subprocesses.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from rdkit import Chem
from rdkit.Chem import AllChem
from templ_runs import run_templ

from templ_pipeline.core.template_library import LeftOut, receptor_like
from templ_pipeline.errors import InputError
from templ_pipeline.io import read_template_library

LIBRARY = Path(__file__).parent / "data" / "mpro_library.sdf"
SEQUENCE = "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRV"  # 40 residues, 329 heavy atoms
CYCLOSPORIN = ("CC[C@H]1C(=O)N(CC(=O)N([C@H](C(=O)N[C@H](C(=O)N([C@H](C(=O)N[C@H](C(=O)N[C@@H](C(=O)N([C@H]"
               "(C(=O)N([C@H](C(=O)N([C@H](C(=O)N([C@H](C(=O)N1)[C@@H]([C@H](C)C/C=C/C)O)C)C(C)C)C)CC(C)C)C)CC(C)C)"
               "C)C)C)CC(C)C)C)C(C)C)CC(C)C)C)C")


def with_3d_coordinates(mol: Chem.Mol) -> Chem.Mol:
    """``mol`` with a 3D conformer: its 2D depiction lifted off the plane (ETKDG takes minutes for a protein)."""
    mol = Chem.Mol(mol)
    AllChem.Compute2DCoords(mol)
    conformer = mol.GetConformer()
    flat = conformer.GetPositions()
    flat[:, 2] = 1.5 * np.sin(np.arange(len(flat)) * 0.7)
    conformer.SetPositions(flat)
    conformer.Set3D(True)
    return mol


def ligand_records(count: int) -> list[Chem.Mol]:
    return list(itertools.islice(Chem.SDMolSupplier(str(LIBRARY)), count))


def write_records(path: Path, mols: list[Chem.Mol]) -> Path:
    with Chem.SDWriter(str(path)) as writer:
        for mol in mols:
            writer.write(mol)
    return path


@pytest.fixture(scope="module")
def protein() -> Chem.Mol:
    mol = with_3d_coordinates(Chem.MolFromSequence(SEQUENCE))
    mol.SetProp("_Name", "receptor")
    return mol


@pytest.fixture(scope="module")
def mixed(tmp_path_factory, protein) -> Path:
    """Two Mpro ligands, then the protein (record 3)."""
    return write_records(tmp_path_factory.mktemp("mixed") / "templates.sdf", [*ligand_records(2), protein])


def test_the_rule_refuses_a_protein_and_a_peptide_chain_and_keeps_drug_like_and_large_ligands(protein):
    assert "329 heavy atoms" in receptor_like(protein)
    sixteen = Chem.MolFromSequence("GAGAGAGAGAGAGAGA")
    assert sixteen.GetNumHeavyAtoms() < 150 and "16 residues" in receptor_like(sixteen)
    assert receptor_like(Chem.MolFromSmiles(CYCLOSPORIN)) == ""  # 85 heavy atoms, 11 residues
    assert all(receptor_like(mol) == "" for mol in ligand_records(13))


def test_a_receptor_record_in_a_library_is_left_out_as_a_problem_naming_it(mixed):
    library = read_template_library(mixed)
    assert len(library) == 2
    (problem,) = library.problems
    assert (problem.record, problem.reason) == (3, LeftOut.RECEPTOR)
    assert "329 heavy atoms" in problem.detail
    assert len(read_template_library(mixed, allow_large=True)) == 3


def test_select_best_warns_in_one_line_and_poses_on_the_ligands(mixed, tmp_path):
    done = run_templ("select-best", "-t", mixed, "-q", "CC(=O)Nc1ccc(O)cc1", "-n", "4", "-o", tmp_path / "pose.sdf",
                     "--no-metrics-server")
    assert done.returncode == 0, done.stderr
    (line,) = [line for line in done.stderr.splitlines() if "left out" in line]
    assert "record 3 receptor" in line


def test_a_protein_as_the_only_template_is_exit_2_with_one_line_saying_why(protein, tmp_path):
    only = write_records(tmp_path / "receptor.sdf", [protein])
    for command in (["select-best", "-q", "CC(=O)Nc1ccc(O)cc1", "-o", tmp_path / "pose.sdf"],
                    ["screen", "-q", write_smi(tmp_path), "-o", tmp_path / "campaign"]):
        done = run_templ(*command, "-t", only, "-n", "4", "--no-metrics-server")
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "record 1 looks like a receptor" in lines[0] and "329 heavy atoms" in lines[0]
        assert "--allow-large-templates" in lines[0] and "Traceback" not in done.stderr
    assert not (tmp_path / "pose.sdf").exists() and not (tmp_path / "campaign").exists()


def test_allow_large_templates_scores_the_receptor_record(protein, tmp_path):
    only = write_records(tmp_path / "receptor.sdf", [protein])
    done = run_templ("select-best", "-t", only, "-q", "CC(=O)Nc1ccc(O)cc1", "-n", "4", "-o", tmp_path / "pose.sdf",
                     "--allow-large-templates", "--no-metrics-server")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "pose.sdf").exists()


@pytest.mark.parametrize("name", ["complex.pdb", "complex.ent.gz", "complex.cif", "complex.mmcif", "complex.sdf"])
def test_a_protein_structure_file_is_pointed_at_the_ligand_as_sdf(tmp_path, name):
    """By name, or by content (a PDB file named .sdf)."""
    path = tmp_path / name
    text = Chem.MolToPDBBlock(ligand_records(1)[0])
    path.write_text(text if not name.endswith((".cif", ".mmcif")) else "data_7XYZ\n#\n")
    with pytest.raises(InputError, match="a protein structure file .PDB/mmCIF.; the template must be the ligand's "
                                         "3D pose as SDF"):
        read_template_library(path)
    done = run_templ("select-best", "-t", path, "-q", "CC(=O)Nc1ccc(O)cc1", "-o", tmp_path / "pose.sdf",
                     "--no-metrics-server")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert "as SDF" in done.stderr and "Traceback" not in done.stderr


def write_smi(directory: Path) -> Path:
    path = directory / "queries.smi"
    path.write_text("CC(=O)Nc1ccc(O)cc1 paracetamol\n")
    return path
