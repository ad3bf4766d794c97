"""The pose files select-best and demo write: safe targets, modes from the umask, a failed run that leaves
a good file alone, gzip, the query's own names, properties and hydrogens, several template records.
Real ``templ`` subprocesses, real RDKit with a few conformers."""

from __future__ import annotations

import gzip
import json
import os
import stat
import subprocess
from pathlib import Path

import pytest
from rdkit import Chem
from templ_runs import run_templ

from templ_pipeline.core.conformers import generate_conformers
from templ_pipeline.errors import InputError
from templ_pipeline.io import examples
from templ_pipeline.safe_files import write_atomically

QUIET = ("--no-metrics-server",)
QUERY = "O=C(Nc1cccnc1)c1ccc(F)cc1OC"


def select_best(template: Path, output: object, *extra: object, umask: int = -1) -> subprocess.CompletedProcess:
    return run_templ("select-best", "-t", template, "-o", output, "-w", "1", *QUIET, *extra, umask=umask)


def _bad_input(done: subprocess.CompletedProcess, *fragments: str) -> None:
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def _name(path: Path) -> str:
    return next(iter(Chem.SDMolSupplier(str(path)))).GetProp("_Name")


def _poses(path: Path) -> list[Chem.Mol]:
    return list(Chem.SDMolSupplier(str(path), removeHs=False))


@pytest.fixture(scope="module")
def collapsed_conformers(unscorable_conformers) -> Path:
    return unscorable_conformers


@pytest.fixture(scope="module")
def named_conformers(tmp_path_factory) -> Path:
    """Eight conformers with hydrogens, each record named and with its own energy."""
    mol = Chem.AddHs(generate_conformers(QUERY, 8, seed=5), addCoords=True)
    path = tmp_path_factory.mktemp("named") / "named.sdf"
    with Chem.SDWriter(str(path)) as writer:
        for conf in mol.GetConformers():
            mol.SetProp("_Name", f"pose_{conf.GetId()}")
            mol.SetProp("energy", f"{10 + conf.GetId()}.50")
            mol.SetProp("source", "crest" if conf.GetId() % 2 else "etkdg")
            writer.write(mol, confId=conf.GetId())
    return path


# --- targets that are not regular files ------------------------------------------------------------

def test_a_symlink_to_a_regular_file_is_refused_and_kept(template_sdf, tmp_path):
    real = tmp_path / "real.sdf"
    real.write_text("keep me\n")
    link = tmp_path / "link.sdf"
    link.symlink_to(real)
    _bad_input(select_best(template_sdf, link, "-q", QUERY, "-n", "4"), "--output", "symbolic link")
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert real.read_text() == "keep me\n"


def test_a_symlink_to_dev_null_is_not_replaced(template_sdf, tmp_path):
    """As root, ``-o /dev/stdout`` once replaced the device symlink: a symlink to /dev/null stands in for it."""
    link = tmp_path / "stdout.sdf"
    link.symlink_to("/dev/null")
    _bad_input(select_best(template_sdf, link, "-q", QUERY, "-n", "4"), "symbolic link")
    assert link.is_symlink() and os.readlink(link) == "/dev/null"
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_a_fifo_is_refused_and_kept(template_sdf, tmp_path):
    fifo = tmp_path / "poses.sdf"
    os.mkfifo(fifo)
    before = os.lstat(fifo)
    _bad_input(select_best(template_sdf, fifo, "-q", QUERY, "-n", "4"), "FIFO")
    after = os.lstat(fifo)
    assert stat.S_ISFIFO(after.st_mode) and (after.st_ino, after.st_dev) == (before.st_ino, before.st_dev)


def test_a_directory_is_refused(template_sdf, tmp_path):
    directory = tmp_path / "out.sdf"
    directory.mkdir()
    _bad_input(select_best(template_sdf, directory, "-q", QUERY, "-n", "4"), "directory")
    assert directory.is_dir() and not any(directory.iterdir())


@pytest.mark.parametrize("name", ["poses.mol2", "poses.txt", "poses"])
def test_a_format_the_tool_cannot_write_is_refused_before_any_work(template_sdf, tmp_path, name):
    _bad_input(select_best(template_sdf, tmp_path / name, "-q", QUERY, "-n", "4"), "--output", name)
    assert not (tmp_path / name).exists()


# --- modes, failed runs ----------------------------------------------------------------------------

@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_the_pose_file_mode_follows_the_umask(template_sdf, tmp_path, umask, mode):
    out = tmp_path / "best.sdf"
    done = select_best(template_sdf, out, "-q", QUERY, "-n", "4", umask=umask)
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(os.stat(out).st_mode) == mode


def test_a_pose_file_that_is_replaced_keeps_its_mode(template_sdf, tmp_path):
    out = tmp_path / "best.sdf"
    out.write_text("an earlier run\n")
    out.chmod(0o640)
    done = select_best(template_sdf, out, "-q", QUERY, "-n", "4", umask=0o022)
    assert done.returncode == 0, done.stderr
    assert len(_poses(out)) == 1 and stat.S_IMODE(os.stat(out).st_mode) == 0o640


def test_a_file_written_in_chunks_holds_them_in_order_and_a_failing_source_leaves_the_old_file(tmp_path):
    target = tmp_path / "big.sdf"
    chunks = [bytes([65 + number % 26]) * (1 << 16) for number in range(40)]
    write_atomically(target, (chunk for chunk in chunks))
    assert target.read_bytes() == b"".join(chunks)

    def broken():
        yield b"half of it\n"
        raise InputError(f"{target}: the source broke off")

    with pytest.raises(InputError, match="the source broke off"):
        write_atomically(target, broken())
    assert target.read_bytes() == b"".join(chunks)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["big.sdf"]  # no temporary left behind


def test_a_failed_run_leaves_an_earlier_good_file_byte_for_byte(template_sdf, collapsed_conformers, tmp_path):
    out = tmp_path / "OUT.sdf"
    assert select_best(template_sdf, out, "-q", QUERY, "-n", "4").returncode == 0
    good = out.read_bytes()
    assert len(_poses(out)) == 1
    done = select_best(template_sdf, out, "-c", collapsed_conformers)
    assert done.returncode == 1, done.stderr
    assert "no conformer could be scored" in done.stderr and "no_coordinates 4" in done.stdout
    assert out.read_bytes() == good
    assert sorted(path.name for path in tmp_path.iterdir()) == ["OUT.sdf"]  # no temporary left behind


# --- compressed files ------------------------------------------------------------------------------

def test_gzip_template_and_conformers_are_read_and_gzip_output_is_written(template_sdf, named_conformers,
                                                                          tmp_path):
    template_gz = tmp_path / "template.sdf.gz"
    template_gz.write_bytes(gzip.compress(Path(template_sdf).read_bytes()))
    conformers_gz = tmp_path / "named.sdf.gz"
    conformers_gz.write_bytes(gzip.compress(named_conformers.read_bytes()))
    plain, packed = tmp_path / "plain.sdf", tmp_path / "packed.sdf.gz"
    assert select_best(template_sdf, plain, "-c", named_conformers, "--all-ranked").returncode == 0
    done = select_best(template_gz, packed, "-c", conformers_gz, "--all-ranked")
    assert done.returncode == 0, done.stderr
    with gzip.open(packed, "rb") as handle:
        assert handle.read() == plain.read_bytes()


def test_a_corrupt_gzip_file_is_one_line_naming_it(template_sdf, tmp_path):
    broken = tmp_path / "broken.sdf.gz"
    broken.write_bytes(gzip.compress(Path(template_sdf).read_bytes())[:-40])
    _bad_input(select_best(broken, tmp_path / "x.sdf", "-q", QUERY, "-n", "4"), str(broken))


# --- the query's identity on the poses -------------------------------------------------------------

def test_each_pose_keeps_its_own_record_name_and_properties(template_sdf, named_conformers, tmp_path):
    out = tmp_path / "ranked.sdf"
    done = select_best(template_sdf, out, "-c", named_conformers, "--all-ranked")
    assert done.returncode == 0, done.stderr
    poses = _poses(out)
    assert len(poses) == 8
    for pose in poses:
        conf_id = pose.GetIntProp("conformer_id")
        assert pose.GetProp("_Name") == f"pose_{conf_id}"
        assert pose.GetProp("energy") == f"{10 + conf_id}.50"  # the record's text, not a re-formatted number
        assert pose.GetProp("source") == ("crest" if conf_id % 2 else "etkdg")
        assert pose.GetProp("query_smiles") == Chem.MolToSmiles(Chem.MolFromSmiles(QUERY))
        assert pose.GetProp("template_name") == _name(template_sdf) and pose.GetIntProp("template_record") == 1
    assert {pose.GetIntProp("conformer_id") for pose in poses} == set(range(8))
    assert poses[1].GetProp("_Name") != poses[0].GetProp("_Name")


def test_hydrogens_of_conformer_records_are_kept_and_can_be_stripped(template_sdf, named_conformers, tmp_path):
    (record,) = [next(iter(Chem.SDMolSupplier(str(named_conformers), removeHs=False)))]
    heavy = Chem.RemoveHs(record).GetNumAtoms()
    assert record.GetNumAtoms() > heavy
    kept, stripped = tmp_path / "kept.sdf", tmp_path / "stripped.sdf"
    assert select_best(template_sdf, kept, "-c", named_conformers).returncode == 0
    assert select_best(template_sdf, stripped, "-c", named_conformers, "--hydrogens", "strip").returncode == 0
    (with_h,), (without_h,) = _poses(kept), _poses(stripped)
    assert with_h.GetNumAtoms() == record.GetNumAtoms() and without_h.GetNumAtoms() == heavy
    # the hydrogens moved with the pose: the heavy atoms are where the stripped pose has them
    assert (Chem.RemoveHs(with_h).GetConformer().GetPositions() == without_h.GetConformer().GetPositions()).all()
    for metric in ("shape", "color", "combo"):  # hydrogens do not change the scores
        assert with_h.GetDoubleProp(metric) == without_h.GetDoubleProp(metric)


def test_a_smiles_query_is_named_by_name_or_smiles_and_hydrogens_can_be_added(template_sdf, tmp_path):
    default, named, added = tmp_path / "default.sdf", tmp_path / "named.sdf", tmp_path / "added.sdf"
    assert select_best(template_sdf, default, "-q", QUERY, "-n", "4").returncode == 0
    assert select_best(template_sdf, named, "-q", QUERY, "-n", "4", "--name", "lig-7").returncode == 0
    assert select_best(template_sdf, added, "-q", QUERY, "-n", "4", "--hydrogens", "add").returncode == 0
    (plain,), (by_name,), (with_h,) = _poses(default), _poses(named), _poses(added)
    assert plain.GetProp("_Name") == QUERY and by_name.GetProp("_Name") == "lig-7"
    heavy = Chem.MolFromSmiles(QUERY).GetNumAtoms()
    assert plain.GetNumAtoms() == heavy  # a SMILES has no explicit hydrogens, its pose neither
    assert with_h.GetNumAtoms() == Chem.AddHs(Chem.MolFromSmiles(QUERY)).GetNumAtoms()
    assert (Chem.RemoveHs(with_h).GetConformer().GetPositions() == plain.GetConformer().GetPositions()).all()


def test_name_needs_a_query(template_sdf, named_conformers, tmp_path):
    _bad_input(select_best(template_sdf, tmp_path / "x.sdf", "-c", named_conformers, "--name", "x"), "--name")


# --- several template records ----------------------------------------------------------------------

def test_every_template_record_is_scored_and_the_best_is_used(template_sdf, named_conformers, tmp_path):
    """Record 2 is one of the query's own conformers: it must win over record 1, never silently the first."""
    own = next(iter(Chem.SDMolSupplier(str(named_conformers))))
    own.SetProp("_Name", "self")
    templates = tmp_path / "templates.sdf"
    with Chem.SDWriter(str(templates)) as writer:
        writer.write(next(iter(Chem.SDMolSupplier(str(template_sdf)))))
        writer.write(own)
        writer.write(next(example.template for example in examples() if example.name == "egfr"))
    out = tmp_path / "best.sdf"
    done = select_best(templates, out, "-c", named_conformers, "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert {key: summary["template"][key] for key in ("record", "name", "of", "library")} == {
        "record": 2, "name": "self", "of": 3, "library": 3}
    assert summary["template"]["pose_method"] == "input" and summary["template"]["core_atoms"] > 0
    by_record = {item["record"]: item for item in summary["templates"]}
    assert sorted(by_record) == [1, 2, 3]
    assert [by_record[n]["name"] for n in (1, 2, 3)] == [_name(template_sdf), "self", "egfr_template"]
    best = max(by_record.values(), key=lambda item: item["best"]["combo"]["combo"])
    assert best["record"] == 2
    (pose,) = _poses(out)
    assert pose.GetProp("template_name") == "self" and pose.GetIntProp("template_record") == 2
    assert pose.GetDoubleProp("combo") == pytest.approx(by_record[2]["best"]["combo"]["combo"], abs=1e-12)
    done = select_best(templates, tmp_path / "human.sdf", "-c", named_conformers)
    assert "template: self (record 2) scored best of the 3 scored, by combo" in done.stdout
