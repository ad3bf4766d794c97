"""Campaign input readers and output files, on real files (and real RDKit for the poses)."""

from __future__ import annotations

import gzip
import json
import os
import resource
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st
from rdkit import Chem
from rdkit.Chem import AllChem

from templ_pipeline.campaign import outputs
from templ_pipeline.campaign.outputs import SCORES_COLUMNS, CampaignFiles, ScoreRow, read_scores
from templ_pipeline.campaign.queries import QUERY_FORMATS, QueryRecord, count_queries, read_queries
from templ_pipeline.io import InputError

pytestmark = pytest.mark.fast

PARAMETERS = {"template": "template.sdf", "num_conformers": 50, "seed": 1}


# --- sample inputs ---------------------------------------------------------------


def _molblock(name: str, smiles: str = "CCO") -> str:
    mol = Chem.MolFromSmiles(smiles)
    mol.SetProp("_Name", name)
    return Chem.MolToMolBlock(mol)


SMI_TEXT = "smiles id\nCCO ethanol\n\n# a comment\nc1ccccc1\tbenzene ring  \nCC\nCCO ethanol\n"
CSV_TEXT = 'id,SMILES,note\nethanol,CCO,x\n"ring, aromatic",c1ccccc1,y\n,CC,z\nethanol,CCO,\n'
TSV_TEXT = "id\tSMILES\tnote\nethanol\tCCO\tx\nring, aromatic\tc1ccccc1\ty\n\tCC\tz\nethanol\tCCO\t\n"
EXPECTED_IDS = ["ethanol", "ring, aromatic", "query_3", "ethanol~2"]
EXPECTED_SMILES = ["CCO", "c1ccccc1", "CC", "CCO"]


def _sdf_text(names: list[str]) -> str:
    return "".join(_molblock(name) + "$$$$\n" for name in names)


SAMPLES = {
    "q.smi": SMI_TEXT,
    "q.smiles": SMI_TEXT.replace("\n", "\r\n"),
    "q.csv": CSV_TEXT,
    "q.tsv": TSV_TEXT,
    "q.sdf": _sdf_text(["a", "b", "", "a"]),
    "q.SD": _sdf_text(["a", "a", "b"]),
}


def _write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("utf-8"))
    return path


def _gzipped(path: Path) -> Path:
    target = path.with_name(path.name + ".gz")
    target.write_bytes(gzip.compress(path.read_bytes()))
    return target


# --- queries ---------------------------------------------------------------------


def test_smi_records_skip_header_comments_and_blank_lines(tmp_path):
    records = list(read_queries(_write(tmp_path / "q.smi", SMI_TEXT)))
    assert records == [
        QueryRecord(1, "ethanol", "CCO", ()),
        QueryRecord(2, "benzene ring", "c1ccccc1", ()),
        QueryRecord(3, "query_3", "CC", ()),
        QueryRecord(4, "ethanol~2", "CCO", ()),
    ]


def test_smi_crlf_lines_read_like_lf(tmp_path):
    plain = list(read_queries(_write(tmp_path / "a.smi", SMI_TEXT)))
    assert list(read_queries(_write(tmp_path / "b.smiles", SMI_TEXT.replace("\n", "\r\n")))) == plain


@pytest.mark.parametrize(
    "text, first",
    [
        ("SMILES Name\nCCO e\n", ("CCO", "e")),
        ("smiles\nCCO e\n", ("CCO", "e")),
        ("# made by hand\n\nSmiles\tid\nCCO e\n", ("CCO", "e")),
        ("CCO e\nsmiles x\n", ("CCO", "e")),  # only a first line is a header
        ("\ufeffsmiles id\nCCO e\n", ("CCO", "e")),  # byte order mark
    ],
)
def test_smi_header_detection(tmp_path, text, first):
    records = list(read_queries(_write(tmp_path / "q.smi", text)))
    assert (records[0].smiles, records[0].query_id) == first
    assert records[0].number == 1
    if text.startswith("CCO"):
        assert [record.smiles for record in records] == ["CCO", "smiles"]


def test_ids_generated_and_made_unique_the_same_on_every_read(tmp_path):
    path = _write(tmp_path / "q.smi", "C a\nC a\nC\nC a\nC a~2\nC query_7\nC\n")
    ids = [record.query_id for record in read_queries(path)]
    assert ids == ["a", "a~2", "query_3", "a~3", "a~2~2", "query_7", "query_7~2"]
    assert [record.query_id for record in read_queries(path)] == ids
    assert len(set(ids)) == len(ids)


@pytest.mark.parametrize("name", ["q.csv", "q.tsv"])
def test_table_records(tmp_path, name):
    records = list(read_queries(_write(tmp_path / name, SAMPLES[name])))
    assert [record.query_id for record in records] == EXPECTED_IDS
    assert [record.smiles for record in records] == EXPECTED_SMILES
    assert [record.number for record in records] == [1, 2, 3, 4]
    assert all(record.molblocks == () for record in records)


def test_csv_empty_smiles_is_a_record(tmp_path):
    path = _write(tmp_path / "q.csv", "smiles,id\nCCO,a\n,b\n  ,c\n\nCC,d\n")
    records = list(read_queries(path))
    assert [(record.smiles, record.query_id) for record in records] == [("CCO", "a"), ("", "b"), ("", "c"), ("CC", "d")]
    assert count_queries(path) == 4


def test_csv_other_column_names_matched_case_insensitively(tmp_path):
    path = _write(tmp_path / "q.csv", "Name,Canonical_SMILES\nx,CCO\ny,CC\n")
    records = list(read_queries(path, smiles_column="canonical_smiles", id_column="NAME"))
    assert [(record.query_id, record.smiles) for record in records] == [("x", "CCO"), ("y", "CC")]


def test_csv_without_id_column_generates_ids(tmp_path):
    records = list(read_queries(_write(tmp_path / "q.csv", "SMILES\nCCO\nCC\n")))
    assert [record.query_id for record in records] == ["query_1", "query_2"]


def test_csv_id_with_line_break_becomes_one_line(tmp_path):
    records = list(read_queries(_write(tmp_path / "q.csv", 'smiles,id\nCCO,"two\nlines"\n')))
    assert records[0].query_id == "two lines"


def test_csv_missing_smiles_column_names_file_and_columns(tmp_path):
    path = _write(tmp_path / "q.csv", "id,structure\na,CCO\n")
    with pytest.raises(InputError) as error:
        read_queries(path)  # the header is checked before the first record is asked for
    message = str(error.value)
    assert str(path) in message and "'smiles'" in message and "'id', 'structure'" in message
    with pytest.raises(InputError):
        count_queries(path)


def test_csv_without_header_row_refused(tmp_path):
    with pytest.raises(InputError, match="no header row"):
        read_queries(_write(tmp_path / "q.csv", ""))


def test_sdf_records_ids_and_molblocks(tmp_path):
    text = _sdf_text(["a", "b", "  ", "a"]) + "\n\n"  # whitespace after the last $$$$ is no record
    records = list(read_queries(_write(tmp_path / "q.sdf", text)))
    assert [record.query_id for record in records] == ["a", "b", "query_3", "a~2"]
    assert [record.number for record in records] == [1, 2, 3, 4]
    assert all(record.smiles is None and len(record.molblocks) == 1 for record in records)
    assert records[1].molblocks[0] == _molblock("b")  # up to, not including, the $$$$ line
    assert Chem.MolToSmiles(Chem.MolFromMolBlock(records[1].molblocks[0])) == "CCO"


def test_sdf_torn_last_record_is_yielded(tmp_path):
    torn = _molblock("c")[:40]
    path = _write(tmp_path / "q.sdf", _sdf_text(["a", "b"]) + torn)
    records = list(read_queries(path))
    assert [record.query_id for record in records] == ["a", "b", "c"]
    assert records[2].molblocks == (torn,)
    assert count_queries(path) == 3


def test_sdf_groups_consecutive_records_of_one_name(tmp_path):
    path = _write(tmp_path / "q.sdf", _sdf_text(["a", "a", "a", "b", "", "", "a", "a"]))
    records = list(read_queries(path, group_conformers=True))
    assert [(record.query_id, len(record.molblocks)) for record in records] == [
        ("a", 3),
        ("b", 1),
        ("query_3", 1),  # unnamed records are never grouped
        ("query_4", 1),
        ("a~2", 2),
    ]
    assert [record.number for record in records] == [1, 2, 3, 4, 5]
    assert count_queries(path, group_conformers=True) == 5
    assert count_queries(path) == 8


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_gzip_gives_the_same_records(tmp_path, name):
    plain = _write(tmp_path / name, SAMPLES[name])
    for group in (False, True):
        records = list(read_queries(plain, group_conformers=group))
        assert records
        assert list(read_queries(_gzipped(plain), group_conformers=group)) == records


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_count_equals_records_read_and_is_none_for_gzip(tmp_path, name):
    plain = _write(tmp_path / name, SAMPLES[name])
    for group in (False, True):
        assert count_queries(plain, group_conformers=group) == len(list(read_queries(plain, group_conformers=group)))
    assert count_queries(_gzipped(plain)) is None


def test_count_sdf_across_chunks_and_odd_separators(tmp_path):
    # 1 MiB chunks: records straddle chunk ends; separators with trailing blanks and CRLF count.
    block = _molblock("m")
    parts, size, n = [], 0, 0
    while size < 2_500_000:
        separator = ("$$$$\n", "$$$$  \r\n", "$$$$\t\n")[n % 3]
        parts.append(block + separator)
        size += len(block) + len(separator)
        n += 1
    parts.append("$$$$x\n not a separator\n")  # a torn record at the end
    path = _write(tmp_path / "big.sdf", "".join(parts))
    assert count_queries(path) == n + 1
    assert sum(1 for _ in read_queries(path)) == n + 1


def test_streaming_reads_the_first_record_without_the_rest(tmp_path):
    path = tmp_path / "many.smi"
    with open(path, "w") as handle:
        handle.writelines(f"C{'C' * (i % 7)} q{i}\n" for i in range(200_000))
    records = read_queries(path)
    assert next(records) == QueryRecord(1, "q0", "C", ())
    assert next(records) == QueryRecord(2, "q1", "CC", ())
    records.close()


def test_missing_file_directory_and_unknown_suffix(tmp_path):
    with pytest.raises(InputError, match="no such file") as error:
        read_queries(tmp_path / "absent.smi")
    assert str(tmp_path / "absent.smi") in str(error.value)
    with pytest.raises(InputError, match="is a directory"):
        read_queries(tmp_path)
    path = _write(tmp_path / "q.txt", "CCO a\n")
    with pytest.raises(InputError) as error:
        count_queries(path)
    assert str(path) in str(error.value) and all(suffix in str(error.value) for suffix in QUERY_FORMATS)
    assert ".gz" in str(error.value)


def test_unreadable_file(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root reads files whatever their mode")
    path = _write(tmp_path / "q.smi", "CCO a\n")
    path.chmod(0)
    with pytest.raises(InputError, match="cannot read") as error:
        read_queries(path)
    assert str(path) in str(error.value)


def test_file_that_is_not_gzip(tmp_path):
    path = _write(tmp_path / "q.smi.gz", "CCO a\n")
    with pytest.raises(InputError, match="not a readable gzip file") as error:
        list(read_queries(path))
    assert str(path) in str(error.value)


def test_truncated_gzip_raises_after_the_records_before(tmp_path):
    text = "".join(f"CCO q{i}\n" for i in range(20_000))
    data = gzip.compress(text.encode())
    path = tmp_path / "q.smi.gz"
    path.write_bytes(data[: len(data) // 2])
    records = read_queries(path)
    first = next(records)
    assert first.query_id == "q0"
    with pytest.raises(InputError, match="not a readable gzip file") as error:
        list(records)
    assert str(path) in str(error.value)


def test_corrupt_gzip_data(tmp_path):
    data = bytearray(gzip.compress(("CCO q\n" * 5000).encode()))
    data[30:60] = b"\xff" * 30
    path = tmp_path / "q.csv.gz"
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match="not a readable gzip file") as error:
        list(read_queries(path, smiles_column="CCO"))
    assert str(path) in str(error.value)


@pytest.mark.parametrize("name", ["q.smi", "q.csv", "q.sdf", "q.smi.gz"])
def test_non_utf8_text_names_file_and_line(tmp_path, name):
    text = {"q.smi": SMI_TEXT, "q.csv": CSV_TEXT, "q.sdf": SAMPLES["q.sdf"], "q.smi.gz": SMI_TEXT}[name]
    lines = text.encode().split(b"\n")
    lines[2] = lines[2] + b"caf\xe9"
    data = b"\n".join(lines)
    path = tmp_path / name
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    with pytest.raises(InputError, match="line 3 is not UTF-8") as error:
        list(read_queries(path))
    assert str(path) in str(error.value)


# --- campaign files --------------------------------------------------------------


@pytest.fixture(scope="module")
def pose() -> Chem.Mol:
    mol = Chem.AddHs(Chem.MolFromSmiles("OCc1ccccc1"))
    assert AllChem.EmbedMolecule(mol, randomSeed=42) == 0
    return mol


def _row(query_id: str, template: str = "t1", combo: float | None = 1.25, **changes) -> ScoreRow:
    values = dict(
        query_id=query_id,
        input_id=changes.pop("input_id", query_id),
        input_record=1,
        query_smiles="OCc1ccccc1",
        input_smiles="OCc1ccccc1.Cl",
        isomer=0,
        isomers=1,
        removed="Cl",
        preparation="fragments_removed",
        status="ok" if combo is not None else "failed",
        reason="" if combo is not None else "no conformer",
        detail="" if combo is not None else "none of 10 conformers could be scored",
        template_name=template,
        template_record=1,
        template_similarity=0.5 if combo is not None else None,
        core_atoms=6,
        core_smarts="c1:c:c:c:c:c:1",
        pose_method="pinned",
        pin_fallback="none",
        pinned_atoms=6,
        runner_up="",
        rmsd=None,
        n_conformers_requested=10,
        n_conformers=10,
        n_scored=10 if combo is not None else 0,
        n_failed=0,
        metric="combo",
        shape=None if combo is None else combo * 0.6,
        color=None if combo is None else combo * 0.4,
        combo=combo,
        conformer_id=None if combo is None else 3,
        pose_rank=None if combo is None else 1,
        seconds=0.5,
    )
    values.update(changes)
    return ScoreRow(**values)


def _query(files: CampaignFiles, query_id: str, pose: Chem.Mol, templates=("t1",)) -> None:
    files.write([_row(query_id, template) for template in templates], [Chem.Mol(pose) for _ in templates])


def _pose_names(path: Path) -> list[str]:
    return [mol.GetProp("_Name") for mol in Chem.SDMolSupplier(str(path), removeHs=False)]


def _campaign(directory: Path, pose: Chem.Mol, ids=("q1", "q2"), **options) -> Path:
    with CampaignFiles.open(directory, PARAMETERS, resume=False, **options) as files:
        for query_id in ids:
            _query(files, query_id, pose, **({"templates": ("t1", "t2")} if options.get("rows_per_query") == 2 else {}))
    return directory


def test_fresh_campaign_writes_parameters_header_rows_and_poses(tmp_path, pose):
    directory = tmp_path / "run"
    files = CampaignFiles.open(directory, PARAMETERS, resume=False)
    assert files.done == frozenset() and files.resumed_rows == 0
    files.write([_row("q1"), _row("q1", "t2", combo=None)], [Chem.Mol(pose), None])
    files.close()
    files.close()  # idempotent
    stored = json.loads((directory / "campaign.json").read_text())
    assert stored["parameters"] == PARAMETERS and set(stored["versions"]) == {"templ", "rdkit", "python"}
    assert (directory / "scores.csv").read_text().splitlines()[0] == ",".join(SCORES_COLUMNS)
    rows = read_scores(directory / "scores.csv")
    assert [(row["query_id"], row["template_name"], row["status"]) for row in rows] == [
        ("q1", "t1", "ok"),
        ("q1", "t2", "failed"),
    ]
    assert rows[1]["combo"] == rows[1]["conformer_id"] == ""
    (written,) = Chem.SDMolSupplier(str(directory / "poses.sdf"), removeHs=False)
    assert written.GetProp("_Name") == "q1"
    assert written.GetProp("query_smiles") == "OCc1ccccc1" and written.GetProp("template_name") == "t1"
    assert written.GetDoubleProp("combo") == 1.25 and written.GetIntProp("conformer_id") == 3
    assert written.GetNumAtoms() == pose.GetNumAtoms() and written.GetConformer().Is3D()
    assert sorted(os.listdir(directory)) == ["campaign.json", "poses.sdf", "scores.csv"]


def test_write_checks_one_query_and_a_pose_per_row(tmp_path, pose):
    with CampaignFiles.open(tmp_path / "run", PARAMETERS, resume=False) as files:
        with pytest.raises(ValueError):
            files.write([_row("a")], [])
        with pytest.raises(ValueError):
            files.write([_row("a"), _row("b")], [None, None])
    assert read_scores(tmp_path / "run" / "scores.csv") == []


def test_each_write_is_on_disk_before_close(tmp_path, pose):
    directory = tmp_path / "run"
    with CampaignFiles.open(directory, PARAMETERS, resume=False) as files:
        _query(files, "q1", pose)
        assert [row["query_id"] for row in read_scores(directory / "scores.csv")] == ["q1"]
        assert _pose_names(directory / "poses.sdf") == ["q1"]
        _query(files, "q2", pose)
        assert [row["query_id"] for row in read_scores(directory / "scores.csv")] == ["q1", "q2"]
        assert _pose_names(directory / "poses.sdf") == ["q1", "q2"]


def test_scores_have_four_decimals_and_rmsd_and_seconds_three(tmp_path, pose):
    values = [0.1 + 0.2, 1 / 3, 5e-324, 0.99995, -0.0, 0.9999999999999999]
    with CampaignFiles.open(tmp_path / "run", PARAMETERS, resume=False) as files:
        for number, value in enumerate(values):
            files.write([_row(f"q{number}", combo=value, shape=value / 7, rmsd=value * 2, seconds=value * 3)],
                        [Chem.Mol(pose)])
    rows = read_scores(tmp_path / "run" / "scores.csv")
    assert [row["combo"] for row in rows] == ["0.3000", "0.3333", "0.0000", "1.0000", "-0.0000", "1.0000"]
    assert [row["shape"] for row in rows] == [f"{value / 7:.4f}" for value in values]
    assert [row["rmsd"] for row in rows] == [f"{value * 2:.3f}" for value in values]
    assert [row["seconds"] for row in rows] == [f"{value * 3:.3f}" for value in values]
    written = list(Chem.SDMolSupplier(str(tmp_path / "run" / "poses.sdf"), removeHs=False))
    assert [mol.GetProp("combo") for mol in written] == [row["combo"] for row in rows]
    assert [mol.GetProp("pose_rank") for mol in written] == ["1"] * len(values)


def test_text_fields_are_quoted(tmp_path):
    reason = 'RDKit said: "bad valence",\nat atom 3'
    with CampaignFiles.open(tmp_path / "run", PARAMETERS, resume=False) as files:
        files.write([_row("a,b", combo=None, reason=reason)], [None])
    (row,) = read_scores(tmp_path / "run" / "scores.csv")
    assert row["query_id"] == "a,b" and row["reason"] == reason
    with CampaignFiles.open(tmp_path / "run", PARAMETERS, resume=True) as files:
        assert files.done == {"a,b"} and files.resumed_rows == 1


def test_resume_continues_with_header_once(tmp_path, pose):
    directory = _campaign(tmp_path / "run", pose)
    with CampaignFiles.open(directory, PARAMETERS, resume=True) as files:
        assert files.done == {"q1", "q2"} and files.resumed_rows == 2
        _query(files, "q3", pose)
    text = (directory / "scores.csv").read_text()
    assert text.count("query_id,") == 1
    assert [row["query_id"] for row in read_scores(directory / "scores.csv")] == ["q1", "q2", "q3"]
    assert _pose_names(directory / "poses.sdf") == ["q1", "q2", "q3"]


def test_resume_in_missing_or_empty_directory_starts_fresh(tmp_path):
    with CampaignFiles.open(tmp_path / "new", PARAMETERS, resume=True) as files:
        assert files.done == frozenset()
    (tmp_path / "empty").mkdir()
    with CampaignFiles.open(tmp_path / "empty", PARAMETERS, resume=True) as files:
        assert files.done == frozenset()
    assert json.loads((tmp_path / "empty" / "campaign.json").read_text())["parameters"] == PARAMETERS


def test_non_empty_directory_without_resume_refused_and_untouched(tmp_path, pose):
    directory = _campaign(tmp_path / "run", pose)
    (directory / "notes.txt").write_text("mine")
    before = {path.name: (path.read_bytes(), path.stat().st_mtime_ns) for path in directory.iterdir()}
    with pytest.raises(InputError, match="exists and is not empty; pass --resume") as error:
        CampaignFiles.open(directory, PARAMETERS, resume=False)
    assert str(error.value).startswith(f"{directory}: ")
    assert {path.name: (path.read_bytes(), path.stat().st_mtime_ns) for path in directory.iterdir()} == before


def test_resume_of_a_directory_without_campaign_refused(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="campaign.json: no such file"):
        CampaignFiles.open(tmp_path / "run", PARAMETERS, resume=True)


def test_resume_with_other_parameters_refused(tmp_path, pose):
    directory = _campaign(tmp_path / "run", pose)
    with pytest.raises(InputError) as error:
        CampaignFiles.open(directory, {**PARAMETERS, "num_conformers": 200}, resume=True)
    assert str(error.value) == (
        f"{directory / 'campaign.json'}: the campaign was started with num_conformers=50, "
        "this run asks for 200; use the same options to resume"
    )
    with pytest.raises(InputError) as error:
        CampaignFiles.open(directory, {"template": "other.sdf", "num_conformers": 50}, resume=True)
    assert 'template="template.sdf", seed=1; this run asks for template="other.sdf", seed=(unset)' in str(error.value)


def test_directory_problems(tmp_path):
    with pytest.raises(InputError, match="parent directory .* does not exist"):
        CampaignFiles.open(tmp_path / "no" / "run", PARAMETERS, resume=False)
    assert not (tmp_path / "no").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="exists and is not a directory"):
        CampaignFiles.open(tmp_path / "file", PARAMETERS, resume=True)


def test_torn_csv_line_dropped(tmp_path, pose):
    directory = _campaign(tmp_path / "run", pose, ids=("q1", "q2", "q3"))
    scores = directory / "scores.csv"
    complete = scores.read_bytes()
    cut = complete.rindex(b"q3,") + 40  # in the middle of q3's row: a write cut short
    with open(scores, "r+b") as handle:
        handle.truncate(cut)
    with CampaignFiles.open(directory, PARAMETERS, resume=True) as files:
        assert files.done == {"q1", "q2"} and files.resumed_rows == 2
        assert scores.read_bytes() == complete[: complete.index(b"\nq3,") + 1]
        assert _pose_names(directory / "poses.sdf") == ["q1", "q2"]  # q3's pose lost its row
        _query(files, "q3", pose)
    assert [row["query_id"] for row in read_scores(scores)] == ["q1", "q2", "q3"]
    assert _pose_names(directory / "poses.sdf") == ["q1", "q2", "q3"]


def test_torn_quoted_row_dropped(tmp_path, pose):
    directory = _campaign(tmp_path / "run", pose)
    with open(directory / "scores.csv", "a") as handle:
        handle.write('q3,C,failed,"line one\n')  # complete lines, but the quoted field never closes
    with CampaignFiles.open(directory, PARAMETERS, resume=True) as files:
        assert files.done == {"q1", "q2"}
    assert [row["query_id"] for row in read_scores(directory / "scores.csv")] == ["q1", "q2"]


def test_torn_header_rewritten(tmp_path):
    directory = tmp_path / "run"
    CampaignFiles.open(directory, PARAMETERS, resume=False).close()
    (directory / "scores.csv").write_text("query_id,smi")
    with CampaignFiles.open(directory, PARAMETERS, resume=True) as files:
        assert files.done == frozenset()
    assert (directory / "scores.csv").read_text() == ",".join(SCORES_COLUMNS) + "\n"


def test_torn_sdf_record_dropped(tmp_path, pose):
    directory = _campaign(tmp_path / "run", pose)
    poses = directory / "poses.sdf"
    complete = poses.read_bytes()
    with open(poses, "ab") as handle:
        handle.write(Chem.MolToMolBlock(pose).encode()[:200])
    with CampaignFiles.open(directory, PARAMETERS, resume=True) as files:
        assert files.done == {"q1", "q2"}
    assert poses.read_bytes() == complete


def test_orphan_pose_dropped(tmp_path, pose):
    directory = _campaign(tmp_path / "run", pose)
    poses = directory / "poses.sdf"
    complete = poses.read_bytes()
    orphan = Chem.Mol(pose)
    orphan.SetProp("_Name", "q3")  # its pose was written, then the process died before its row
    with open(poses, "a") as handle:
        handle.write(Chem.MolToMolBlock(orphan) + "$$$$\n")
    with CampaignFiles.open(directory, PARAMETERS, resume=True) as files:
        assert files.done == {"q1", "q2"}
    assert poses.read_bytes() == complete


def test_orphan_before_kept_records_rewritten(tmp_path, pose):
    umask = os.umask(0o022)
    try:
        directory = _campaign(tmp_path / "run", pose, ids=("q1", "q2", "q3"))
    finally:
        os.umask(umask)
    poses = directory / "poses.sdf"
    poses.chmod(0o600)
    scores = directory / "scores.csv"
    lines = scores.read_text().splitlines(keepends=True)
    scores.write_text("".join(line for line in lines if not line.startswith("q2,")))
    with CampaignFiles.open(directory, PARAMETERS, resume=True) as files:
        assert files.done == {"q1", "q3"}
        _query(files, "q4", pose)
    assert _pose_names(poses) == ["q1", "q3", "q4"]
    assert stat.S_IMODE(poses.stat().st_mode) == 0o600
    assert sorted(os.listdir(directory)) == ["campaign.json", "poses.sdf", "scores.csv"]


def test_incomplete_last_query_of_several_templates_dropped(tmp_path, pose):
    directory = _campaign(tmp_path / "run", pose, rows_per_query=2)
    scores = directory / "scores.csv"
    complete = scores.read_bytes()
    with CampaignFiles.open(directory, PARAMETERS, resume=True, rows_per_query=2) as files:
        assert files.done == {"q1", "q2"} and files.resumed_rows == 4
        files.write([_row("q3", "t1"), _row("q3", "t2")], [Chem.Mol(pose), Chem.Mol(pose)])
    text = scores.read_bytes()
    with open(scores, "r+b") as handle:  # q3's one write was cut after its first row
        handle.truncate(text.index(b"\n", len(complete)) + 1)
    with CampaignFiles.open(directory, PARAMETERS, resume=True, rows_per_query=2) as files:
        assert files.done == {"q1", "q2"} and files.resumed_rows == 4
    assert scores.read_bytes() == complete
    assert _pose_names(directory / "poses.sdf") == ["q1", "q1", "q2", "q2"]


def _poses_of(files: CampaignFiles, query_id: str, pose: Chem.Mol, ranks=(1, 2, 3)) -> None:
    """A query of one molecule that kept a pose per rank (--poses-per-query)."""
    files.write([_row(query_id, combo=1.0 - rank / 10, pose_rank=rank) for rank in ranks],
                [Chem.Mol(pose) for _ in ranks])


@pytest.mark.parametrize("tail_bytes", [None, 64])  # 64: the end of poses.sdf is read back in several steps
def test_a_last_query_whose_rows_were_cut_between_two_poses_is_dropped_on_resume(tmp_path, pose, monkeypatch,
                                                                                   tail_bytes):
    # with several poses a molecule, a query's row count cannot tell a cut: its poses, written first, can
    if tail_bytes is not None:
        monkeypatch.setattr(outputs, "_TAIL_BYTES", tail_bytes)
    directory = tmp_path / "run"
    with CampaignFiles.open(directory, PARAMETERS, resume=False) as files:
        _poses_of(files, "q1", pose)
        _poses_of(files, "q2", pose)
    scores, poses = directory / "scores.csv", directory / "poses.sdf"
    complete = scores.read_bytes()
    first_of_q2 = complete.index(b"\nq2,") + 1
    with open(scores, "r+b") as handle:  # q2's one write cut after its second row
        handle.truncate(complete.index(b"\n", complete.index(b"\nq2,", first_of_q2) + 1) + 1)
    assert [row["query_id"] for row in read_scores(scores)] == ["q1"] * 3 + ["q2"] * 2
    with CampaignFiles.open(directory, PARAMETERS, resume=True) as files:
        assert files.done == {"q1"} and files.resumed_rows == 3
        assert scores.read_bytes() == complete[:first_of_q2]
        assert _pose_names(poses) == ["q1"] * 3  # q2's poses lost their rows
        _poses_of(files, "q2", pose)
    assert scores.read_bytes() == complete
    assert [row["pose_rank"] for row in read_scores(scores)] == ["1", "2", "3"] * 2


def test_a_whole_last_query_of_several_poses_is_kept_on_resume(tmp_path, pose):
    directory = tmp_path / "run"
    with CampaignFiles.open(directory, PARAMETERS, resume=False) as files:
        _poses_of(files, "q1", pose)
        _poses_of(files, "q2", pose, ranks=(1, 2))  # fewer distinct poses than asked: whole all the same
        files.write([_row("q3", combo=None)], [None])  # a failed query: a row without a pose
    scores, poses = directory / "scores.csv", directory / "poses.sdf"
    written = scores.read_bytes(), poses.read_bytes()
    with CampaignFiles.open(directory, PARAMETERS, resume=True) as files:
        assert files.done == {"q1", "q2", "q3"} and files.resumed_rows == 6
    assert (scores.read_bytes(), poses.read_bytes()) == written
    with open(scores, "r+b") as handle:  # without q3's row, q2 is the last query: its rows and poses are whole
        handle.truncate(written[0].index(b"\nq3,") + 1)
    with CampaignFiles.open(directory, PARAMETERS, resume=True) as files:
        assert files.done == {"q1", "q2"} and files.resumed_rows == 5
    assert _pose_names(poses) == ["q1"] * 3 + ["q2"] * 2


def test_foreign_scores_header_refused(tmp_path):
    directory = tmp_path / "run"
    CampaignFiles.open(directory, PARAMETERS, resume=False).close()
    (directory / "scores.csv").write_text("name,score\na,1\n")
    with pytest.raises(InputError, match="scores.csv: the header is not"):
        CampaignFiles.open(directory, PARAMETERS, resume=True)


@pytest.mark.parametrize("kind", ["symlink", "fifo", "directory"])
@pytest.mark.parametrize("name", ["scores.csv", "poses.sdf", "campaign.json"])
def test_campaign_file_that_is_not_a_regular_file_refused(tmp_path, pose, kind, name):
    directory = _campaign(tmp_path / "run", pose)
    target = directory / name
    saved = tmp_path / f"saved-{name}"
    target.rename(saved)
    before = saved.read_bytes()
    if kind == "symlink":
        target.symlink_to(saved)  # to a regular file, still refused
    elif kind == "fifo":
        os.mkfifo(target)
    else:
        target.mkdir()
    with pytest.raises(InputError, match=f"{name}: is a") as error:
        CampaignFiles.open(directory, PARAMETERS, resume=True)
    assert "not a regular file" in str(error.value)
    assert saved.read_bytes() == before  # nothing written through the link
    assert {"symlink": stat.S_ISLNK, "fifo": stat.S_ISFIFO, "directory": stat.S_ISDIR}[kind](os.lstat(target).st_mode)


def test_files_follow_the_umask(tmp_path, pose):
    for umask, file_mode, directory_mode in ((0o022, 0o644, 0o755), (0o027, 0o640, 0o750)):
        previous = os.umask(umask)
        try:
            directory = _campaign(tmp_path / f"run{umask:o}", pose)
        finally:
            os.umask(previous)
        assert stat.S_IMODE(directory.stat().st_mode) == directory_mode
        for name in ("campaign.json", "scores.csv", "poses.sdf"):
            assert stat.S_IMODE((directory / name).stat().st_mode) == file_mode, name


def test_second_run_on_the_same_campaign_refused(tmp_path):
    with CampaignFiles.open(tmp_path / "run", PARAMETERS, resume=False):
        with pytest.raises(InputError, match="in use by another run"):
            CampaignFiles.open(tmp_path / "run", PARAMETERS, resume=True)


_WRITER = textwrap.dedent(
    """
    import sys
    from rdkit import Chem
    from rdkit.Chem import AllChem
    from templ_pipeline.campaign.outputs import CampaignFiles, ScoreRow

    mol = Chem.AddHs(Chem.MolFromSmiles("OCc1ccccc1"))
    AllChem.EmbedMolecule(mol, randomSeed=42)
    files = CampaignFiles.open(sys.argv[1], {"seed": 1}, resume=True, rows_per_query=2)
    print(len(files.done), flush=True)
    number = len(files.done)
    while True:
        number += 1
        rows = [ScoreRow(f"q{number}", f"q{number}", number, "OCc1ccccc1", "OCc1ccccc1", 0, 1, "", "", "ok", "", "",
                         template, 1, 0.5, 6, "c1:c:c:c:c:c:1", "pinned", "none", 6, "", None,
                         10, 10, 10, 0, "combo", 0.5, 0.25, 0.75, 1, 1, 0.1)
                for template in ("t1", "t2")]
        files.write(rows, [Chem.Mol(mol), Chem.Mol(mol)])
    """
)


@pytest.mark.slow
def test_kill_9_loses_at_most_the_query_being_written(tmp_path):
    directory = tmp_path / "run"
    for _ in range(2):
        process = subprocess.Popen([sys.executable, "-c", _WRITER, str(directory)], stdout=subprocess.PIPE, text=True)
        process.stdout.readline()  # opened: writing from now on
        time.sleep(0.2)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        process.stdout.close()
        with CampaignFiles.open(directory, {"seed": 1}, resume=True, rows_per_query=2) as files:
            rows = read_scores(directory / "scores.csv")
            assert len(rows) == files.resumed_rows == 2 * len(files.done) > 0
            names = _pose_names(directory / "poses.sdf")
            assert names == [row["query_id"] for row in rows]
            assert all(float(row["combo"]) == 0.75 for row in rows)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(["$$$$", "$$$$  ", "$$$$\r", " $$$$", "$$$$x", "name", "", " ", "\t", "M  END"]),
                max_size=12))
def test_sdf_count_agrees_with_reader_on_any_layout(tmp_path_factory, lines):
    path = tmp_path_factory.mktemp("sdf") / "q.sdf"
    for text in ("\n".join(lines), "\n".join(lines) + "\n"):
        _write(path, text)
        assert count_queries(path) == len(list(read_queries(path)))
        assert count_queries(path, group_conformers=True) == len(list(read_queries(path, group_conformers=True)))


def test_failed_write_is_undone_in_both_files(tmp_path, pose):
    # RLIMIT_FSIZE (with SIGXFSZ ignored) makes write(2) stop at a size: a full disk on demand.
    directory = _campaign(tmp_path / "run", pose)
    poses, scores = directory / "poses.sdf", directory / "scores.csv"
    before = poses.read_bytes(), scores.read_bytes()
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    with CampaignFiles.open(directory, PARAMETERS, resume=True) as files:
        try:
            resource.setrlimit(resource.RLIMIT_FSIZE, (len(before[0]) + 100, limits[1]))
            with pytest.raises(OSError):
                _query(files, "q3", pose)  # the pose is cut after 100 bytes
            assert (poses.read_bytes(), scores.read_bytes()) == before
            resource.setrlimit(resource.RLIMIT_FSIZE, (len(before[0]) + 30, limits[1]))
            with pytest.raises(OSError):
                files.write([_row("q3", combo=None, reason="x" * len(before[0]))], [None])  # the row is cut
            assert (poses.read_bytes(), scores.read_bytes()) == before
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, limits)
            signal.signal(signal.SIGXFSZ, handler)
        _query(files, "q3", pose)
    assert [row["query_id"] for row in read_scores(scores)] == ["q1", "q2", "q3"]
    assert _pose_names(poses) == ["q1", "q2", "q3"]


def _isomers(files: CampaignFiles, input_id: str, pose: Chem.Mol, count: int = 3) -> None:
    """One query enumerated into ``count`` stereoisomers: rows ``ID#1..n`` sharing ``input_id``, one write."""
    rows = [_row(f"{input_id}#{n}", input_id=input_id, isomer=n, isomers=count) for n in range(1, count + 1)]
    files.write(rows, [Chem.Mol(pose) for _ in rows])


def test_a_query_s_stereoisomers_are_kept_or_dropped_together_on_resume(tmp_path, pose):
    directory = tmp_path / "run"
    with CampaignFiles.open(directory, PARAMETERS, resume=False) as files:
        _isomers(files, "q1", pose)
        _isomers(files, "q2", pose)
    scores = directory / "scores.csv"
    complete = scores.read_bytes()
    # the write of q2's rows cut at a line boundary: two of its three rows complete
    cut = complete.index(b"\nq2#3,") + 1
    with open(scores, "r+b") as handle:
        handle.truncate(cut)
    with CampaignFiles.open(directory, PARAMETERS, resume=True) as files:
        assert files.done == {"q1"} and files.resumed_rows == 3
        assert [row["query_id"] for row in read_scores(scores)] == ["q1#1", "q1#2", "q1#3"]
        assert _pose_names(directory / "poses.sdf") == ["q1#1", "q1#2", "q1#3"]  # q2's poses lost their rows
        _isomers(files, "q2", pose)
    assert [row["input_id"] for row in read_scores(scores)] == ["q1"] * 3 + ["q2"] * 3
    assert _pose_names(directory / "poses.sdf") == [f"q{q}#{n}" for q in (1, 2) for n in (1, 2, 3)]


def test_rows_of_one_write_must_share_their_input_id(tmp_path, pose):
    with CampaignFiles.open(tmp_path / "run", PARAMETERS, resume=False) as files:
        with pytest.raises(ValueError, match="same input_id"):
            files.write([_row("a#1", input_id="a"), _row("b#1", input_id="b")], [None, None])
