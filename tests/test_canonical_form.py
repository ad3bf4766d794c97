"""Answers that depend on the molecule only: any spelling, atom order or input format of a query gives the same
conformers, scores and poses.

Real Polaris Mpro ligands (held-out analogues of ``tests/data/mpro_library.sdf``) and small charged, stereo and
heterocyclic molecules; real RDKit, the real ``templ`` in subprocesses, few conformers.
"""

from __future__ import annotations

import csv
import gzip
import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from rdkit import Chem
from rdkit.Chem import AllChem
from templ_runs import run_templ
from test_screen import poses

from templ_pipeline.campaign.outputs import read_scores
from templ_pipeline.campaign.task import CampaignSettings, QueryRunner, QueryTask
from templ_pipeline.core.batch import mol_to_bytes
from templ_pipeline.core.canonical import canonical_molecule
from templ_pipeline.core.embedding import embed_prepared
from templ_pipeline.core.preparation import prepare
from templ_pipeline.io import conformers_of_records, read_template_library

LIBRARY = Path(__file__).parent / "data" / "mpro_library.sdf"
POLARIS = Path(__file__).parents[1] / "benchmarks" / "data" / "polaris" / "train_sarsmols.sdf.gz"
HELD_OUT = (211, 364, 379)  # Polaris records whose analogues are in the library (tests/data/README.md)
SMALL = {
    "zwitterion_stereo": "O=C(N[C@@H](Cc1c[nH]c2ccccc12)C(=O)[O-])c1ccc[n+](C)c1",
    "e_alkene_indazole": "C/C=C/C(=O)Nc1ccc2[nH]ncc2c1",
    "ring_stereo_tetrazole": "C[C@H]1CC[C@@H](c2nn[nH]n2)CC1",
}
CONFORMERS = 10
PERMUTATIONS = 3
#: scores.csv columns that are the answer (the others say what the input was)
ANSWER = ("query_smiles", "isomers", "template_name", "template", "core_atoms", "core_smarts", "pose_method",
          "pin_fallback", "pinned_atoms", "n_conformers", "n_scored", "shape", "color", "combo", "conformer_id")


def permuted_spellings(smiles: str, count: int = PERMUTATIONS) -> list[str]:
    """``smiles`` written from ``count`` random atom orders (non-canonical SMILES of each renumbering)."""
    mol = Chem.MolFromSmiles(smiles)
    found = []
    for seed in range(count):
        order = list(range(mol.GetNumAtoms()))
        random.Random(seed).shuffle(order)
        found.append(Chem.MolToSmiles(Chem.RenumberAtoms(mol, order), canonical=False))
    return found


def sd_record(smiles: str, *, hydrogens: bool) -> str:
    """An SD record of ``smiles`` with 3D coordinates (stereo to be perceived from them), hydrogens or not."""
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    assert AllChem.EmbedMolecule(mol, randomSeed=7) == 0
    return Chem.MolToMolBlock(mol if hydrogens else Chem.RemoveHs(mol))


def conformer_positions(mol: Chem.Mol) -> list[np.ndarray]:
    return [conformer.GetPositions() for conformer in mol.GetConformers()]


@pytest.fixture(scope="module")
def held_out() -> dict[str, Chem.Mol]:
    """The held-out Polaris ligands' crystal records (3D, no hydrogens), by ``mpro_<record>``."""
    with gzip.open(POLARIS) as handle:
        return {f"mpro_{number}": mol for number, mol in enumerate(Chem.ForwardSDMolSupplier(handle), start=1)
                if number in HELD_OUT}


@pytest.fixture(scope="module")
def runner() -> QueryRunner:
    """The runner ``templ screen`` uses in each worker, against the 13-ligand library, pinned cores."""
    library = read_template_library(LIBRARY)
    settings = CampaignSettings(templates=tuple(mol_to_bytes(mol) for mol in library.mols),
                                template_names=tuple(library.names), num_conformers=CONFORMERS, seed=42,
                                metric="combo", template_records=tuple(library.records))
    return QueryRunner(settings)


def answer(runner: QueryRunner, smiles: str | None = None, molblocks: tuple[str, ...] = ()) -> list[tuple]:
    """Every template result of the query: scores, best conformer, how it was posed, and the pose's coordinates."""
    outcome = runner.run(QueryTask(0, "query", smiles, molblocks))
    assert outcome.reason is None, outcome.detail
    found = []
    for isomer in outcome.isomers:
        for result in isomer.templates:
            pose = Chem.MolFromMolBlock(result.record, removeHs=False) if result.record else None
            found.append((isomer.smiles, result.template, result.shape, result.color, result.conf_id,
                          result.choice.core_atoms, str(result.choice.method), result.choice.pinned_atoms,
                          None if pose is None else pose.GetConformer().GetPositions().tobytes()))
    return found


def test_a_query_without_smiles_fails_saying_its_field_is_empty_not_that_it_cannot_be_parsed(runner):
    for blank in ("", "   ", None):
        outcome = runner.run(QueryTask(0, "query", blank))
        assert (outcome.status, outcome.reason) == ("failed", "invalid_smiles")
        assert outcome.detail == "no SMILES: the query's SMILES field is empty"
    assert runner.run(QueryTask(0, "query", "C1CC(")).detail == "cannot parse SMILES 'C1CC('"


def test_the_canonical_molecule_of_any_atom_order_or_sd_record_is_the_same_molecule_bit_for_bit():
    for smiles in SMALL.values():
        reference = canonical_molecule(Chem.MolFromSmiles(smiles)).ToBinary()
        for spelling in permuted_spellings(smiles):
            assert canonical_molecule(Chem.MolFromSmiles(spelling)).ToBinary() == reference, spelling
        for hydrogens in (False, True):
            record = Chem.MolFromMolBlock(sd_record(smiles, hydrogens=hydrogens), removeHs=not hydrogens)
            assert canonical_molecule(record).ToBinary() == reference, (smiles, hydrogens)


def test_permuted_atom_orders_give_bit_identical_conformers(held_out):
    molecules = [Chem.MolToSmiles(mol) for mol in held_out.values()] + list(SMALL.values())
    for smiles in molecules:
        reference = embed_prepared(prepare(Chem.MolFromSmiles(smiles)).isomers[0].mol, CONFORMERS, 42)
        assert reference.GetNumConformers() == CONFORMERS
        for spelling in permuted_spellings(smiles):
            confs = embed_prepared(prepare(Chem.MolFromSmiles(spelling)).isomers[0].mol, CONFORMERS, 42)
            assert all(np.array_equal(a, b) for a, b in
                       zip(conformer_positions(confs), conformer_positions(reference), strict=True)), spelling


def test_a_query_scores_the_same_spelled_any_way_or_given_as_an_sd_record(runner, held_out):
    for mol in held_out.values():
        smiles = Chem.MolToSmiles(mol)
        reference = answer(runner, smiles)
        assert reference and all(row[2] is not None for row in reference)
        for spelling in permuted_spellings(smiles, 2):
            assert answer(runner, spelling) == reference, spelling
        assert answer(runner, None, (Chem.MolToMolBlock(mol),)) == reference


def test_a_charged_stereo_query_scores_the_same_from_a_permuted_sd_record_with_hydrogens(runner):
    smiles = SMALL["zwitterion_stereo"]
    reference = answer(runner, smiles)
    record = Chem.MolFromMolBlock(sd_record(smiles, hydrogens=True), removeHs=False)
    order = list(range(record.GetNumAtoms()))
    random.Random(3).shuffle(order)
    assert answer(runner, None, (Chem.MolToMolBlock(Chem.RenumberAtoms(record, order)),)) == reference


def test_given_conformers_are_renumbered_in_canonical_order_with_their_coordinates_and_properties():
    """Symmetry-equivalent atoms (a methyl's hydrogens, a carboxylate's oxygens) may trade places between input
    orders: each atom keeps its own coordinates, so every conformer is the same set of positioned atoms."""
    mol = Chem.AddHs(Chem.MolFromSmiles(SMALL["zwitterion_stereo"]))
    AllChem.EmbedMultipleConfs(mol, 3, randomSeed=5)
    order = list(range(mol.GetNumAtoms()))
    random.Random(1).shuffle(order)
    read = [conformers_of_records(sd_records(source), "test") for source in (mol, Chem.RenumberAtoms(mol, order))]
    first, second = read
    assert Chem.MolToSmiles(first) == Chem.MolToSmiles(mol)
    assert [a.GetAtomicNum() for a in first.GetAtoms()] == [a.GetAtomicNum() for a in second.GetAtoms()]
    assert [positioned_atoms(first, conf_id) for conf_id in range(3)] == \
        [positioned_atoms(second, conf_id) for conf_id in range(3)]
    assert first.GetConformer(2).GetProp("_Name") == "pose2" and first.GetConformer(2).GetProp("activity") == "7.25"


def test_given_conformers_in_another_atom_order_score_the_same(runner):
    mol = Chem.AddHs(Chem.MolFromSmiles(SMALL["zwitterion_stereo"]))
    AllChem.EmbedMultipleConfs(mol, 4, randomSeed=5)
    given = QueryRunner(replace(runner.settings, use_input_conformers=True))
    order = list(range(mol.GetNumAtoms()))
    random.Random(2).shuffle(order)
    reference = answer(given, None, tuple(Chem.MolToMolBlock(record) for record in sd_records(mol)))
    shuffled = sd_records(Chem.RenumberAtoms(mol, order))
    assert [row[:8] for row in answer(given, None, tuple(Chem.MolToMolBlock(record) for record in shuffled))] == \
        [row[:8] for row in reference]


def sd_records(mol: Chem.Mol) -> list[Chem.Mol]:
    """Each conformer of ``mol`` as the molecule an SD reader gives (hydrogens kept), named and tagged."""
    records = []
    for conformer in mol.GetConformers():
        record = Chem.MolFromMolBlock(Chem.MolToMolBlock(mol, confId=conformer.GetId()), removeHs=False)
        record.SetProp("_Name", f"pose{conformer.GetId()}")
        record.SetProp("activity", "7.25")
        records.append(record)
    return records


def positioned_atoms(mol: Chem.Mol, conf_id: int) -> list[tuple[int, tuple[float, ...]]]:
    positions = mol.GetConformer(conf_id).GetPositions().round(4)
    return sorted((atom.GetAtomicNum(), tuple(positions[atom.GetIdx()])) for atom in mol.GetAtoms())


def _answers(directory: Path) -> dict[str, dict[str, str]]:
    rows = read_scores(directory / "scores.csv")
    return {row["query_id"]: {column: value for column, value in row.items() if column in ANSWER} for row in rows}


def test_smi_csv_and_sdf_query_files_give_the_same_scores_poses_and_ranks_with_their_own_data(held_out, tmp_path):
    """The same ligands as a .smi of randomly rooted SMILES, a .csv of canonical SMILES with an extra column,
    and an .sdf of their crystal records (3D, stereo perceived from the coordinates)."""
    names = list(held_out)
    smi = tmp_path / "queries.smi"
    smi.write_text("".join(f"{Chem.MolToSmiles(held_out[name], doRandom=True, canonical=False)} {name}\n"
                           for name in names))
    csv_path = tmp_path / "queries.csv"
    with csv_path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "smiles", "vendor"])
        writer.writerows([name, Chem.MolToSmiles(held_out[name]), "x"] for name in names)
    sdf = tmp_path / "queries.sdf"
    with Chem.SDWriter(str(sdf)) as writer:
        for name in names:
            record = Chem.Mol(held_out[name])
            record.SetProp("_Name", name)
            record.SetProp("pIC50", "6.5")
            writer.write(record)
    found = {}
    hits: dict[str, list[dict[str, str]]] = {}
    for path in (smi, csv_path, sdf):
        out = tmp_path / f"screen_{path.suffix[1:]}"
        done = run_templ("screen", "-t", LIBRARY, "-q", path, "-o", out, "-n", CONFORMERS, "-w", "1",
                         "--no-metrics-server")
        assert done.returncode == 0, done.stderr
        found[path.suffix] = (_answers(out), {name: pose.GetConformer().GetPositions().round(4).tobytes()
                                              for name, pose in poses(out).items()})
        with (out / "hits.csv").open(newline="") as handle:
            hits[path.suffix] = list(csv.DictReader(handle))
    reference = found[".smi"]
    ranks = {suffix: [(row["rank"], row["query_id"], row["combo"]) for row in rows] for suffix, rows in hits.items()}
    assert ranks[".csv"] == ranks[".smi"] and ranks[".sdf"] == ranks[".smi"], ranks
    assert {row["input.vendor"] for row in hits[".csv"]} == {"x"}
    assert {row["input.pIC50"] for row in hits[".sdf"]} == {"6.5"}
    assert len(reference[0]) == len(names) and all(row["combo"] for row in reference[0].values())
    assert found[".csv"] == reference
    assert found[".sdf"] == reference
