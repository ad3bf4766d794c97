"""The templ command, run as a user runs it: a subprocess with real files."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from rdkit import Chem
from templ_runs import run_templ

from templ_pipeline.core.conformers import generate_conformers


@pytest.fixture(scope="module")
def files(tmp_path_factory, template, query_confs):
    root = tmp_path_factory.mktemp("cli")
    template_path = root / "template.sdf"
    with Chem.SDWriter(str(template_path)) as writer:
        writer.write(template)
    conformers_path = root / "conformers.sdf"
    with Chem.SDWriter(str(conformers_path)) as writer:
        for conf in query_confs.GetConformers():
            writer.write(query_confs, confId=conf.GetId())
    return {"root": root, "template": template_path, "conformers": conformers_path}


def _read(path: Path) -> list[Chem.Mol]:
    return list(Chem.SDMolSupplier(str(path)))


def test_select_best_from_conformer_file_writes_best_pose(files):
    out = files["root"] / "best.sdf"
    result = run_templ("select-best", "-t", files["template"], "-c", files["conformers"], "-o", out, "-w", "2")
    assert result.returncode == 0, result.stderr
    (pose,) = _read(out)
    assert {"shape", "color", "combo", "conformer_id"} <= set(pose.GetPropNames())
    assert pose.GetDoubleProp("combo") == pytest.approx(  # each written with 4 decimals
        0.5 * (pose.GetDoubleProp("shape") + pose.GetDoubleProp("color")), abs=1e-4
    )
    assert "scored 24, failed 0" in result.stdout


def test_all_ranked_writes_every_pose_best_first(files):
    out = files["root"] / "ranked.sdf"
    result = run_templ("select-best", "-t", files["template"], "-c", files["conformers"], "-o", out, "--all-ranked",
                       "--metric", "shape")
    assert result.returncode == 0, result.stderr
    poses = _read(out)
    assert len(poses) == 24
    shapes = [pose.GetDoubleProp("shape") for pose in poses]
    assert shapes == sorted(shapes, reverse=True)
    assert sorted(pose.GetIntProp("conformer_id") for pose in poses) == list(range(24))


def test_select_best_from_smiles(files):
    out = files["root"] / "smiles.sdf"
    result = run_templ("select-best", "-t", files["template"], "-q", "CC(=O)Nc1cccnc1", "-n", "8", "-o", out)
    assert result.returncode == 0, result.stderr
    assert len(_read(out)) == 1


def test_demo_runs_on_bundled_example(tmp_path):
    result = run_templ("demo", "-n", "12", "-o", tmp_path / "demo.sdf")
    assert result.returncode == 0, result.stderr
    assert len(_read(tmp_path / "demo.sdf")) == 1


def _bad_input(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_missing_template_file(files):
    _bad_input(run_templ("select-best", "-t", "/no/such.sdf", "-q", "CCO", "-o", files["root"] / "x.sdf"),
               "/no/such.sdf", "no such file")


def test_a_template_that_is_not_a_file_is_named_as_such(files):
    folder = files["root"] / "library"
    folder.mkdir()
    for template, fragment in ((folder, "is a directory"), ("/dev/null", "is a device, expected an SDF file"),
                               ("-", "standard input")):
        _bad_input(run_templ("select-best", "-t", template, "-q", "CCO", "-o", files["root"] / "x.sdf",
                             cwd=files["root"]), str(template), fragment)


def test_unparseable_smiles(files):
    _bad_input(run_templ("select-best", "-t", files["template"], "-q", "C1CC(", "-o", files["root"] / "x.sdf"),
               "--query", "C1CC(")


def test_query_and_conformers_are_exclusive(files):
    _bad_input(run_templ("select-best", "-t", files["template"], "-o", files["root"] / "x.sdf"), "--query")


def test_unknown_metric(files):
    _bad_input(run_templ("select-best", "-t", files["template"], "-q", "CCO", "--metric", "rmsd",
                         "-o", files["root"] / "x.sdf"), "--metric")


def test_conformer_record_of_another_molecule_is_named_by_number(files, query_confs):
    mixed = files["root"] / "mixed.sdf"
    with Chem.SDWriter(str(mixed)) as writer:
        writer.write(query_confs, confId=0)
        writer.write(query_confs, confId=1)
        writer.write(generate_conformers("CCOc1ccccc1", 1))
    _bad_input(run_templ("select-best", "-t", files["template"], "-c", mixed, "-o", files["root"] / "x.sdf"),
               "record 3", "another molecule")


def test_unreadable_conformer_record_is_named_by_number(files):
    text = files["conformers"].read_text().split("$$$$\n")
    text[1] = text[1].replace(" C ", " Xx ", 1)  # an element that does not exist
    broken = files["root"] / "broken.sdf"
    broken.write_text("$$$$\n".join(text))
    _bad_input(run_templ("select-best", "-t", files["template"], "-c", broken, "-o", files["root"] / "x.sdf"),
               "record 2", "not a readable molecule")


def test_template_without_3d_pose(files):
    flat = files["root"] / "flat.sdf"
    mol = Chem.MolFromSmiles("c1ccccc1O")
    from rdkit.Chem import rdDepictor

    rdDepictor.Compute2DCoords(mol)
    with Chem.SDWriter(str(flat)) as writer:
        writer.write(mol)
    _bad_input(run_templ("select-best", "-t", flat, "-q", "CCO", "-o", files["root"] / "x.sdf"), "3D")


def test_output_directory_missing(files):
    _bad_input(run_templ("select-best", "-t", files["template"], "-q", "CCO", "-o", "/no/such/dir/out.sdf"),
               "/no/such/dir")
