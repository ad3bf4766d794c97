"""Input data carried through a campaign, the id and SMILES columns, campaign.json, and one vocabulary of names.

Real files and real ``templ`` subprocesses: a CSV with a ``name,SMILES`` header and extra columns, an SD file
with tags, and the same query through ``select-best``.
"""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import pytest
from rdkit import Chem
from templ_runs import run_templ

from templ_pipeline.campaign.queries import data_columns, read_queries, sd_tags
from templ_pipeline.core.vocabulary import Field
from templ_pipeline.errors import InputError

QUERIES = [("aspirin", "CC(=O)Oc1ccccc1C(=O)O", "1.5", 'Enamine, "REAL"'),
           ("mpro_query", "O=C(Nc1cccnc1)c1ccc(F)cc1OC", "0.2", "Mcule"),
           ("broken", "C1CC(", "9", "none")]


def write_csv(path: Path, header: list[str], rows: list[tuple[str, ...]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def screen(template: Path, queries: Path, out: Path, *extra: object) -> subprocess.CompletedProcess:
    return run_templ("screen", "-t", template, "-q", queries, "-o", out, "-n", "6", "-w", "1",
                     "--no-metrics-server", *extra)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


# --- the reader ------------------------------------------------------------------------------------


def test_a_name_header_names_the_queries(tmp_path):
    path = write_csv(tmp_path / "q.csv", ["name", "SMILES"], [("x", "CCO"), ("y", "CC")])
    assert [record.query_id for record in read_queries(path)] == ["x", "y"]


@pytest.mark.parametrize("header", ["ID", "Name", "title", "Compound_ID"])
def test_common_id_headers_are_recognised_in_any_case(tmp_path, header):
    path = write_csv(tmp_path / "q.csv", ["smiles", header, "activity"], [("CCO", "x", "1")])
    (record,) = read_queries(path)
    assert (record.query_id, record.data) == ("x", (("activity", "1"),))


def test_a_named_id_column_that_is_absent_is_refused_naming_the_columns(tmp_path):
    path = write_csv(tmp_path / "q.csv", ["name", "SMILES"], [("x", "CCO")])
    with pytest.raises(InputError) as error:
        read_queries(path, id_column="ID2")
    assert str(error.value) == f"{path}: no column 'ID2' (--id-column); the header has: 'name', 'SMILES'"


def test_extra_columns_are_the_query_s_data_in_file_order(tmp_path):
    path = write_csv(tmp_path / "q.csv", ["vendor", "smiles", "id", "activity", "activity"],
                     [("E, x", "CCO", "a", "1", "2"), ("M", "CC", "b", "", "3")])
    assert data_columns(path) == ("vendor", "activity", "activity~2")
    assert [record.data for record in read_queries(path)] == [
        (("vendor", "E, x"), ("activity", "1"), ("activity~2", "2")),
        (("vendor", "M"), ("activity", ""), ("activity~2", "3"))]


def test_sd_tags_are_the_query_s_data_and_every_tag_of_the_file_a_column(tmp_path):
    path = tmp_path / "q.sdf"
    with Chem.SDWriter(str(path)) as writer:
        for name, tags in (("a", {"IC50": "12\nnM", "vendor": "E"}), ("b", {"vendor": "M", "batch": "7"})):
            mol = Chem.MolFromSmiles("CCO")
            mol.SetProp("_Name", name)
            for tag, value in tags.items():
                mol.SetProp(tag, value)
            writer.write(mol)
    assert data_columns(path) == ("IC50", "vendor", "batch")
    first, second = read_queries(path)
    assert first.data == (("IC50", "12\nnM"), ("vendor", "E")) and second.data == (("vendor", "M"), ("batch", "7"))
    assert sd_tags("no end of molecule") == ()


# --- a campaign ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def csv_campaign(tmp_path_factory, template_sdf) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("input_data")
    queries = write_csv(root / "library.csv", ["name", "SMILES", "pIC50", "vendor"], QUERIES)
    out = root / "out"
    done = screen(template_sdf, queries, out)
    assert done.returncode == 0, done.stderr
    return queries, out


def test_csv_columns_reach_scores_hits_and_poses_under_input_names(csv_campaign):
    _, out = csv_campaign
    rows = {row["query_id"]: row for row in read_csv(out / "scores.csv")}
    assert sorted(rows) == ["aspirin", "broken", "mpro_query"]
    assert (rows["aspirin"]["input.pIC50"], rows["aspirin"]["input.vendor"]) == ("1.5", 'Enamine, "REAL"')
    assert rows["broken"]["input.pIC50"] == "9" and rows["broken"]["detail"] == "cannot parse SMILES 'C1CC('"
    hits = read_csv(out / "hits.csv")
    assert [hit["query_id"] for hit in hits][-1] == "broken" and hits[-1]["rank"] == ""
    assert {hit["query_id"]: hit["input.vendor"] for hit in hits}["mpro_query"] == "Mcule"
    poses = {mol.GetProp("_Name"): mol for mol in Chem.SDMolSupplier(str(out / "poses.sdf"))}
    assert poses["aspirin"].GetProp("input.vendor") == 'Enamine, "REAL"'
    assert poses["mpro_query"].GetProp("input.pIC50") == "0.2"
    ranked = [mol.GetProp("_Name") for mol in Chem.SDMolSupplier(str(out / "hits.sdf"))]
    assert ranked == [hit["query_id"] for hit in hits if hit["rank"]]


def test_campaign_json_records_versions_inputs_checksums_and_columns(csv_campaign, template_sdf):
    import hashlib

    from rdkit import rdBase

    from templ_pipeline import __version__

    queries, out = csv_campaign
    stored = json.loads((out / "campaign.json").read_text())
    assert stored["versions"]["templ"] == __version__ and stored["versions"]["rdkit"] == rdBase.rdkitVersion
    assert stored["inputs"]["queries"] == {"path": str(queries.absolute()),
                                           "sha256": hashlib.sha256(queries.read_bytes()).hexdigest()}
    assert stored["inputs"]["templates"]["path"] == str(Path(template_sdf).absolute())
    assert stored["input_columns"] == ["pIC50", "vendor"]


def test_a_resume_with_a_changed_query_file_is_refused_in_one_line(csv_campaign, template_sdf, tmp_path):
    queries, out = csv_campaign
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    changed = write_csv(tmp_path / "library.csv", ["name", "SMILES", "pIC50", "vendor"], QUERIES[:2])
    done = screen(template_sdf, changed, out, "--resume")
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "changed since the campaign" in done.stderr and str(changed) in done.stderr
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before
    done = screen(template_sdf, queries, out, "--resume")  # the same file: nothing to do, the hits rebuilt
    assert done.returncode == 0, done.stderr
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before


def test_a_named_id_column_absent_from_the_header_is_exit_2_listing_the_columns(template_sdf, tmp_path):
    queries = write_csv(tmp_path / "q.csv", ["name", "SMILES"], [("x", "CCO")])
    done = screen(template_sdf, queries, tmp_path / "out", "--id-column", "ID")
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "'ID'" in done.stderr and "'name', 'SMILES'" in done.stderr
    assert not (tmp_path / "out").exists()


def test_sd_tags_of_query_records_reach_the_rows_and_poses(template_sdf, tmp_path):
    queries = tmp_path / "q.sdf"
    with Chem.SDWriter(str(queries)) as writer:
        mol = Chem.MolFromSmiles(QUERIES[1][1])
        mol.SetProp("_Name", "mpro_query")
        mol.SetProp("Ki", "40 nM")
        writer.write(mol)
    done = screen(template_sdf, queries, tmp_path / "out")
    assert done.returncode == 0, done.stderr
    (row,) = read_csv(tmp_path / "out" / "scores.csv")
    (pose,) = Chem.SDMolSupplier(str(tmp_path / "out" / "poses.sdf"))
    assert row["input.Ki"] == pose.GetProp("input.Ki") == "40 nM"


def test_select_best_and_screen_name_the_same_facts_the_same_way(csv_campaign, template_sdf, tmp_path):
    _, out = csv_campaign
    single = tmp_path / "one.sdf"
    done = run_templ("select-best", "-t", template_sdf, "-q", QUERIES[1][1], "-n", "6", "-o", single,
                     "--no-metrics-server")
    assert done.returncode == 0, done.stderr
    (chosen,) = Chem.SDMolSupplier(str(single))
    screened = {mol.GetProp("_Name"): mol for mol in Chem.SDMolSupplier(str(out / "poses.sdf"))}["mpro_query"]
    names = set(Field)
    theirs = {name for name in screened.GetPropNames() if not name.startswith("input.")}
    assert set(chosen.GetPropNames()) <= names and theirs <= names
    shared = {Field.QUERY_SMILES, Field.INPUT_SMILES, Field.TEMPLATE_NAME, Field.TEMPLATE_RECORD, Field.METRIC,
              Field.SHAPE, Field.COLOR, Field.COMBO, Field.CONFORMER_ID, Field.POSE_RANK, Field.POSE_METHOD}
    assert shared <= set(chosen.GetPropNames()) and shared <= theirs
    for name in shared:
        assert chosen.GetProp(name) == screened.GetProp(name), name
