"""Query preparation through both commands: ``select-best --query`` and every query of ``templ screen``.

One table of the cases a medicinal chemist meets (salts, unassigned stereo, metal complexes, single
atoms, isotopes, explicit hydrogens), each with what both commands must do with it. Real RDKit, the real
CLI in subprocesses, few conformers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from rdkit import Chem
from templ_runs import run_templ

from templ_pipeline.campaign.outputs import read_scores

CONFORMERS = "8"
IBUPROFEN_ANION = "CC(C)Cc1ccc(C(C)C(=O)[O-])cc1"
PARACETAMOL = "CC(=O)Nc1ccc(O)cc1"


@dataclass(frozen=True)
class Case:
    name: str
    smiles: str
    isomers: int = 1  # rows in scores.csv (one per stereoisomer)
    refused: str = ""  # the reason both commands give instead of scoring
    removed: str = ""
    actions: str = "unchanged"
    same_as: str = ""  # the case whose best pose and scores this one must equal


CASES = [
    Case("paracetamol", PARACETAMOL),
    Case("paracetamol_tfa", f"{PARACETAMOL}.OC(=O)C(F)(F)F", removed="O=C(O)C(F)(F)F", actions="fragments_removed",
         same_as="paracetamol"),
    Case("ibuprofen_anion", IBUPROFEN_ANION, isomers=2, actions="stereo_enumerated"),
    Case("ibuprofen_sodium", f"{IBUPROFEN_ANION}.[Na+]", isomers=2, removed="[Na+]",
         actions="fragments_removed,stereo_enumerated", same_as="ibuprofen_anion"),
    Case("two_centres", "CC(N)c1ccc(C(O)CC)cc1", isomers=4, actions="stereo_enumerated"),
    Case("cisplatin", "Cl[Pt](Cl)(N)N", refused="unsupported_element"),
    Case("ferrocene_ions", "C1=CC=C[CH-]1.[Fe+2].C1=CC=C[CH-]1", refused="unsupported_element"),
    Case("water", "O", refused="too_small"),
    Case("sodium", "[Na+]", refused="too_small"),
    Case("ethane", "CC", refused="too_small"),
    Case("anisamide", "COc1ccccc1C(N)=O"),
    Case("anisamide_d3", "[2H]C([2H])([2H])Oc1ccccc1C(N)=O", actions="isotopes_cleared", same_as="anisamide"),
    Case("anisamide_explicit_h", "[H]C([H])([H])Oc1ccccc1C(N)=O", same_as="anisamide"),
]
BY_NAME = {case.name: case for case in CASES}


def _heavy_positions(mol: Chem.Mol) -> list[tuple[float, ...]]:
    heavy = Chem.RemoveHs(mol)
    return [tuple(round(x, 6) for x in row) for row in heavy.GetConformer().GetPositions()]


@pytest.fixture(scope="module")
def campaign(tmp_path_factory, template_sdf) -> Path:
    """Every case screened in one campaign (2 workers)."""
    base = tmp_path_factory.mktemp("preparation")
    queries = base / "cases.smi"
    queries.write_text("".join(f"{case.smiles} {case.name}\n" for case in CASES))
    out = base / "screen"
    done = run_templ("screen", "-t", template_sdf, "-q", queries, "-o", out, "-n", CONFORMERS, "-w", "2",
                     "--no-metrics-server", "--log-format", "json", "--log-level", "debug",
                     "--log-file", base / "screen.log")
    assert done.returncode == 0, done.stderr
    assert "preparation: stereo: 3 queries enumerated into 8 isomers" in done.stdout, done.stdout
    return out


@pytest.fixture(scope="module")
def select_best(tmp_path_factory, template_sdf):
    """``select-best --json`` of each case, run once: (completed process, its JSON or None, its poses)."""
    base = tmp_path_factory.mktemp("select_best")
    runs = {}
    for case in CASES:
        out = base / f"{case.name}.sdf"
        done = run_templ("select-best", "-t", template_sdf, "-q", case.smiles, "--name", case.name, "-n", CONFORMERS,
                         "-o", out, "--json", "--no-metrics-server")
        summary = json.loads(done.stdout) if done.returncode == 0 else None
        poses = list(Chem.SDMolSupplier(str(out), removeHs=False)) if out.exists() else []
        runs[case.name] = (done, summary, poses)
    return runs


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_screen_rows_say_what_preparation_did(campaign, case):
    rows = [row for row in read_scores(campaign / "scores.csv") if row["input_id"] == case.name]
    if case.refused:
        (row,) = rows
        assert (row["status"], row["reason"], row["isomers"], row["preparation"]) == (
            "failed", case.refused, "0", case.refused)
        assert row["n_conformers"] == "0" and row["input_smiles"] == case.smiles
        return
    assert len(rows) == case.isomers
    assert {(row["status"], row["removed"], row["preparation"], row["isomers"]) for row in rows} == {
        ("ok", case.removed, case.actions, str(case.isomers))}
    if case.isomers > 1:
        assert sorted(row["query_id"] for row in rows) == [f"{case.name}#{n}" for n in range(1, case.isomers + 1)]
        assert len({row["query_smiles"] for row in rows}) == case.isomers


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_select_best_prepares_the_same_way(select_best, case):
    done, summary, poses = select_best[case.name]
    if case.refused:
        assert done.returncode == 2, done.stderr
        (line,) = done.stderr.strip().splitlines()
        assert line.startswith(f"error: --query {case.smiles}: {case.refused}: ")
        assert poses == []
        return
    assert done.returncode == 0, done.stderr
    preparation = summary["preparation"]
    assert preparation["actions"] == (case.actions.split(",") if case.actions != "unchanged" else [])
    assert preparation["removed"] == ([case.removed] if case.removed else [])
    assert preparation["isomers"] == case.isomers
    (pose,) = poses
    assert pose.GetProp("input_smiles") == case.smiles and pose.GetProp("removed") == case.removed
    assert pose.GetIntProp("isomers") == case.isomers


def test_the_best_pose_is_the_screen_s_best_isomer(campaign, select_best):
    """select-best writes the pose of the isomer that scored best, named ``NAME#k``, as screen ranks it."""
    rows = {row["query_id"]: row for row in read_scores(campaign / "scores.csv")}
    for name in ("two_centres", "ibuprofen_sodium"):
        _, summary, (pose,) = select_best[name]
        best = max((row for row in rows.values() if row["input_id"] == name), key=lambda row: float(row["combo"]))
        assert pose.GetProp("_Name") == best["query_id"] == f"{name}#{summary['preparation']['isomer']}"
        assert pose.GetDoubleProp("combo") == pytest.approx(float(best["combo"]), rel=1e-12)
        assert pose.GetProp("query_smiles") == best["query_smiles"]


@pytest.mark.parametrize("case", [case for case in CASES if case.same_as], ids=lambda case: case.name)
def test_salts_isotopes_and_explicit_h_give_the_parent_s_pose_and_scores(campaign, select_best, case):
    rows = {row["query_id"]: row for row in read_scores(campaign / "scores.csv")}
    parent = BY_NAME[case.same_as]
    poses = {mol.GetProp("_Name"): mol for mol in Chem.SDMolSupplier(str(campaign / "poses.sdf"), removeHs=False)}
    suffixes = [f"#{n}" for n in range(1, case.isomers + 1)] if case.isomers > 1 else [""]
    for suffix in suffixes:
        mine, theirs = rows[case.name + suffix], rows[parent.name + suffix]
        for column in ("query_smiles", "conformer_id", "shape", "color", "combo"):
            assert mine[column] == theirs[column], (case.name, column)
        assert _heavy_positions(poses[case.name + suffix]) == _heavy_positions(poses[parent.name + suffix])
    (mine_pose,), (parent_pose,) = select_best[case.name][2], select_best[parent.name][2]
    for prop in ("shape", "color", "combo", "conformer_id"):
        assert mine_pose.GetProp(prop) == parent_pose.GetProp(prop), (case.name, prop)
    assert _heavy_positions(mine_pose) == _heavy_positions(parent_pose)


def test_each_isomer_s_pose_has_its_own_assigned_stereo(campaign):
    rows = [row for row in read_scores(campaign / "scores.csv") if row["input_id"] == "two_centres"]
    poses = {mol.GetProp("_Name"): mol for mol in Chem.SDMolSupplier(str(campaign / "poses.sdf"), removeHs=False)}
    for row in rows:
        pose = Chem.Mol(poses[row["query_id"]])
        Chem.AssignStereochemistryFrom3D(pose)
        assert Chem.MolToSmiles(Chem.RemoveHs(pose)) == row["query_smiles"], row["query_id"]
        assert pose.GetProp("query_smiles") == row["query_smiles"] and pose.GetIntProp("isomer") == int(row["isomer"])
        assert (pose.GetIntProp("n_conformers_requested"), pose.GetIntProp("n_conformers")) == (
            int(row["n_conformers_requested"]), int(row["n_conformers"]))


def test_one_query_prepared_log_event_per_query(campaign):
    events = [json.loads(line) for line in (campaign.parent / "screen.log").read_text().splitlines()]
    prepared = {event["query_id"]: event for event in events if event["event"] == "query.prepared"}
    assert set(prepared) == {case.name for case in CASES}
    stereo = prepared["two_centres"]
    assert stereo["actions"] == ["stereo_enumerated"] and stereo["isomers"] == 4
    assert len(stereo["smiles"].split()) == 4 and stereo["conformers_requested"] == 4 * int(CONFORMERS)
    assert prepared["paracetamol_tfa"]["removed"] == "O=C(O)C(F)(F)F"
    assert prepared["cisplatin"]["actions"] == ["unsupported_element"] and prepared["cisplatin"]["isomers"] == 0
    finished = {event["query_id"]: event for event in events if event["event"] == "campaign.query_finished"}
    # asked and made over all four isomers, so that one isomer short of conformers is a shortfall
    assert (finished["two_centres"]["conformers_requested"], finished["two_centres"]["conformers"]) == (
        4 * int(CONFORMERS), 4 * int(CONFORMERS))


def test_a_second_large_organic_fragment_warns(template_sdf, tmp_path):
    done = run_templ("select-best", "-t", template_sdf, "-q", "CCCCCCCC(=O)O.CCN(CC)Cc1ccccc1", "-n", "4",
                     "-o", tmp_path / "mix.sdf", "--no-metrics-server")
    assert done.returncode == 0, done.stderr
    # the amine (11 heavy atoms) is kept; the acid (10) goes, with a warning
    assert "warning: dropped a second large organic fragment CCCCCCCC(=O)O (10 heavy atoms)" in done.stderr


def test_a_conformer_shortfall_is_said(template, query_confs, tmp_path):
    """ETKDG embedding fewer conformers than asked (an octapeptide: 124 of 200) is flagged, not just counted.

    A real shortfall takes a large flexible ligand and half a minute of ETKDG; the summary is
    given a real selection of 24 conformers of which 30 were asked."""
    from rich.console import Console

    from templ_pipeline.core.scoring import select_best_with_report
    from templ_pipeline.pose_output import PoseTarget
    from templ_pipeline.selection_summary import (
        QueryIdentity,
        RunOutcome,
        TemplateSelection,
        print_summary,
        summary_json,
    )

    selection = select_best_with_report(query_confs, template, n_workers=1)
    result = TemplateSelection(1, "mpro", selection)
    outcome = RunOutcome([result], "combo", PoseTarget.parse(str(tmp_path / "out.sdf"), "--output"), result,
                         conformers_requested=30)
    console = Console(record=True, width=200)
    print_summary(console, outcome)
    assert "fewer conformers than asked: ETKDG embedded 24 of 30" in console.export_text()
    summary = summary_json(outcome, QueryIdentity("q", "C"))
    assert (summary["conformers"]["total"], summary["conformers_requested"]) == (24, 30)
