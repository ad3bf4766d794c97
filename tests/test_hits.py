"""The ranked hit list (hits.csv, hits.sdf): built from a campaign's files, with real RDKit poses and real files."""

from __future__ import annotations

import csv
import os
from dataclasses import replace
from pathlib import Path

import pytest
from rdkit import Chem
from rdkit.Chem import AllChem

from templ_pipeline.campaign.hits import write_hits
from templ_pipeline.campaign.outputs import SCORES_COLUMNS, CampaignFiles, ScoreRow
from templ_pipeline.errors import InputError

pytestmark = pytest.mark.fast

PARAMETERS = {"seed": 1}


@pytest.fixture(scope="module")
def pose() -> Chem.Mol:
    mol = Chem.AddHs(Chem.MolFromSmiles("OCc1ccccc1"))
    assert AllChem.EmbedMolecule(mol, randomSeed=42) == 0
    return mol


def _row(query_id: str, record: int, combo: float | None, isomer: int = 0, input_id: str | None = None) -> ScoreRow:
    ok = combo is not None
    return ScoreRow(
        query_id=query_id, input_id=input_id or query_id, input_record=record, query_smiles="OCc1ccccc1",
        input_smiles="OCc1ccccc1", isomer=isomer, isomers=max(1, isomer), removed="", preparation="unchanged",
        status="ok" if ok else "failed", reason="" if ok else "invalid_smiles",
        detail="" if ok else "cannot parse SMILES 'C1CC('", template_name="t" if ok else "",
        template_record=1 if ok else None, template_similarity=None, core_atoms=0, core_smarts="",
        pose_method="free" if ok else "", pin_fallback="", pinned_atoms=0, runner_up="", rmsd=None,
        n_conformers_requested=4, n_conformers=4 if ok else 0, n_scored=4 if ok else 0, n_failed=0,
        metric="combo", shape=combo, color=combo, combo=combo, conformer_id=1 if ok else None,
        pose_rank=1 if ok else None, seconds=0.5)


def _campaign(directory: Path, pose: Chem.Mol, queries: list[list[ScoreRow]]) -> Path:
    with CampaignFiles.open(directory, PARAMETERS, resume=False) as files:
        for rows in queries:
            files.write(rows, [Chem.Mol(pose) if row.status == "ok" else None for row in rows])
    return directory


def _hits(directory: Path) -> list[dict[str, str]]:
    with open(directory / "hits.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_hits_are_ranked_best_first_ties_by_input_order_and_failed_queries_last(tmp_path, pose):
    # written in an order unlike the input's (queries finish in any order); b and d tie at 4 decimals
    directory = _campaign(tmp_path / "run", pose, [
        [_row("d", 4, 0.70004)], [_row("bad", 2, None)], [_row("b", 3, 0.7)], [_row("a", 5, 0.9)],
        [_row("e#1", 1, 0.2, isomer=1, input_id="e"), _row("e#2", 1, 0.8, isomer=2, input_id="e")],
    ])
    listed = write_hits(directory, "combo", top=None)
    hits = _hits(directory)
    assert [(hit["rank"], hit["query_id"], hit["combo"]) for hit in hits] == [
        ("1", "a", "0.9000"), ("2", "e#2", "0.8000"), ("3", "b", "0.7000"), ("4", "d", "0.7000"), ("", "bad", "")]
    assert hits[-1]["detail"] == "cannot parse SMILES 'C1CC('"
    assert list(hits[0]) == ["rank", *SCORES_COLUMNS]
    assert (listed.ranked, listed.unranked, listed.poses) == (4, 1, 4)
    poses = list(Chem.SDMolSupplier(str(directory / "hits.sdf"), removeHs=False))
    assert [(mol.GetProp("_Name"), mol.GetProp("rank")) for mol in poses] == [
        ("a", "1"), ("e#2", "2"), ("b", "3"), ("d", "4")]


def test_top_limits_hits_sdf_not_hits_csv(tmp_path, pose):
    directory = _campaign(tmp_path / "run", pose, [[_row(f"q{n}", n, n / 10)] for n in range(1, 6)])
    listed = write_hits(directory, "combo", top=2)
    assert len(_hits(directory)) == 5 and listed.poses == 2
    assert [mol.GetProp("_Name") for mol in Chem.SDMolSupplier(str(directory / "hits.sdf"))] == ["q5", "q4"]


def test_ids_with_commas_and_quotes_survive_every_file(tmp_path, pose):
    single = 'a, "b" c'  # a line break in an id was made a space by the query reader
    directory = _campaign(tmp_path / "run", pose, [[_row(single, 1, 0.5)], [_row("plain", 2, 0.4)]])
    write_hits(directory, "combo")
    assert [hit["query_id"] for hit in _hits(directory)] == [single, "plain"]
    assert [mol.GetProp("_Name") for mol in Chem.SDMolSupplier(str(directory / "hits.sdf"))] == [single, "plain"]


def test_hits_are_the_same_after_a_resume_that_rebuilds_them_from_the_files(tmp_path, pose):
    directory = _campaign(tmp_path / "run", pose, [[_row("q1", 1, 0.3)], [_row("q2", 2, 0.6)]])
    write_hits(directory, "combo")
    before = (directory / "hits.csv").read_bytes(), (directory / "hits.sdf").read_bytes()
    (directory / "hits.csv").unlink()
    (directory / "hits.sdf").write_text("stale\n")
    with CampaignFiles.open(directory, PARAMETERS, resume=True):
        pass
    write_hits(directory, "combo")
    assert ((directory / "hits.csv").read_bytes(), (directory / "hits.sdf").read_bytes()) == before


def test_a_hits_file_that_is_a_symlink_is_refused_before_the_campaign_opens(tmp_path, pose):
    directory = _campaign(tmp_path / "run", pose, [[_row("q1", 1, 0.3)]])
    target = tmp_path / "elsewhere.csv"
    target.write_text("keep\n")
    os.symlink(target, directory / "hits.csv")
    with pytest.raises(InputError, match="hits.csv: is a symbolic link"):
        CampaignFiles.open(directory, PARAMETERS, resume=True)
    assert target.read_text() == "keep\n"


def test_each_hit_gets_its_own_pose_from_a_poses_file_with_crlf_padded_terminators_and_no_final_newline(
        tmp_path, pose):
    # two poses of q1 (its second is its best row) and one of q2; poses.sdf then rewritten as another tool
    # might leave it: CRLF line ends, "$$$$" lines with trailing blanks, and no line end after the last one
    first, second = _row("q1", 1, 0.3), replace(_row("q1", 1, 0.8), pose_rank=2)
    directory = _campaign(tmp_path / "run", pose, [[first, second], [_row("q2", 2, 0.5)]])
    poses = directory / "poses.sdf"
    text = poses.read_bytes().replace(b"\n", b"\r\n").replace(b"$$$$\r\n", b"$$$$  \r\n")
    poses.write_bytes(text.removesuffix(b"  \r\n"))
    assert write_hits(directory, "combo").poses == 2
    found = list(Chem.SDMolSupplier(str(directory / "hits.sdf"), removeHs=False))
    assert [(mol.GetProp("_Name"), mol.GetProp("pose_rank"), mol.GetProp("rank")) for mol in found] == [
        ("q1", "2", "1"), ("q2", "1", "2")]


def test_hit_rows_are_the_scores_rows_byte_for_byte_with_non_ascii_ids_multi_line_fields_and_no_final_newline(
        tmp_path, pose):
    """hits.csv copies each best row from scores.csv by its byte offsets: a multi-byte character before it, a
    quoted field spanning lines in it, and a last row without its line end must not shift a single byte."""
    failed = replace(_row("bad", 3, None), detail="RDKit said:\nline two, \"quoted\"")
    directory = _campaign(tmp_path / "run", pose, [
        [_row("β-lactam", 1, 0.4)], [failed], [_row("ü", 2, 0.9)], [_row("last", 4, 0.6)]])
    scores = directory / "scores.csv"
    scores.write_bytes(scores.read_bytes().removesuffix(b"\n"))
    written = write_hits(directory, "combo")
    lines = scores.read_bytes().split(b"\n")
    header, rows = lines[0], lines[1:]
    by_id = {row.split(b",")[0]: row for row in rows if row.startswith((b"\xce", b"\xc3", b"last"))}
    bad = b"\n".join(rows[1:3])  # the failed row spans two lines
    assert bad.startswith(b"bad,")
    expected = b"\n".join([b"rank," + header, b"1," + by_id["ü".encode()], b"2," + by_id[b"last"],
                           b"3," + by_id["β-lactam".encode()], b"," + bad]) + b"\n"
    assert (directory / "hits.csv").read_bytes() == expected
    assert (written.ranked, written.unranked, written.poses) == (3, 1, 3)
    assert [mol.GetProp("_Name") for mol in Chem.SDMolSupplier(str(directory / "hits.sdf"))] == [
        "ü", "last", "β-lactam"]
