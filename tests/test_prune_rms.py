"""``--prune-rms``: ETKDG drops near-duplicate conformers, the same ones at any thread or worker count, pinned or
free, and the value is recorded with the run.

Real RDKit, real Polaris Mpro ligands against ``tests/data/mpro_library.sdf``, the real ``templ`` in subprocesses.
"""

from __future__ import annotations

import functools
import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from rdkit import Chem
from templ_runs import run_templ

from templ_pipeline.campaign.outputs import read_scores
from templ_pipeline.core.conformers import generate_conformers, granted_embedding
from templ_pipeline.core.embedding import embed_on_this_thread
from templ_pipeline.core.events import PoseMethod
from templ_pipeline.core.preparation import prepare
from templ_pipeline.core.template_choice import choose_templates
from templ_pipeline.core.template_poses import template_conformers
from templ_pipeline.io import read_template_library

LIBRARY = Path(__file__).parent / "data" / "mpro_library.sdf"
POLARIS = Path(__file__).parents[1] / "benchmarks" / "data" / "polaris" / "train_sarsmols.sdf.gz"
HELD_OUT = (211, 364, 379)
PRUNE = "0.5"


def positions(mol: Chem.Mol) -> list[np.ndarray]:
    return [conformer.GetPositions() for conformer in mol.GetConformers()]


@pytest.fixture(scope="module")
def queries() -> dict[str, str]:
    """The held-out Polaris ligands' SMILES, by ``mpro_<record>``."""
    with gzip.open(POLARIS) as handle:
        return {f"mpro_{number}": Chem.MolToSmiles(mol)
                for number, mol in enumerate(Chem.ForwardSDMolSupplier(handle), start=1) if number in HELD_OUT}


def test_ethanol_asked_for_five_conformers_with_pruning_gets_one():
    assert generate_conformers("CCO", 5, seed=42).GetNumConformers() == 5
    assert generate_conformers("CCO", 5, seed=42, prune_rms=0.5).GetNumConformers() == 1


def test_pruning_keeps_the_same_conformers_at_one_and_two_threads():
    one = generate_conformers("O=C(Nc1cccnc1)c1ccc(F)cc1OCCN1CCOCC1", 30, seed=7, n_workers=1, prune_rms=0.5)
    two = generate_conformers("O=C(Nc1cccnc1)c1ccc(F)cc1OCCN1CCOCC1", 30, seed=7, n_workers=2, exact_workers=True,
                              prune_rms=0.5)
    assert 1 < one.GetNumConformers() < 30
    assert [c.GetId() for c in one.GetConformers()] == [c.GetId() for c in two.GetConformers()]
    assert all(np.array_equal(a, b) for a, b in zip(positions(one), positions(two), strict=True))


def test_pinned_pruning_keeps_the_same_conformers_on_this_thread_and_on_two(queries):
    library = read_template_library(LIBRARY)
    mol = prepare(Chem.MolFromSmiles(queries["mpro_364"])).isomers[0].mol
    choice = choose_templates(mol, library)
    here = template_conformers(mol, library, choice, 40, 42, functools.partial(embed_on_this_thread, prune_rms=0.5))
    with granted_embedding(2, exact_workers=True, prune_rms=0.5) as (run, threads):
        assert threads.count == 2
        there = template_conformers(mol, library, choice, 40, 42, run)
    unpruned = template_conformers(mol, library, choice, 40, 42)
    assert any(poses.conformers.method is PoseMethod.PINNED for poses in here)
    assert sum(p.conformers.confs.GetNumConformers() for p in here) < \
        sum(p.conformers.confs.GetNumConformers() for p in unpruned)
    for a, b in zip(here, there, strict=True):
        assert a.conformers.method == b.conformers.method
        assert all(np.array_equal(x, y) for x, y in
                   zip(positions(a.conformers.confs), positions(b.conformers.confs), strict=True))


def test_select_best_prunes_ethanol_to_one_conformer_and_says_so(tmp_path):
    done = run_templ("select-best", "-t", LIBRARY, "-q", "CCO", "-n", "5", "--prune-rms", PRUNE, "--top-templates",
                     "all", "-o", tmp_path / "pose.sdf", "--no-metrics-server", "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["prune_rms"] == 0.5 and summary["conformers_requested"] == 5
    assert all(template["conformers"]["total"] == 1 for template in summary["templates"])


def test_a_negative_prune_rms_is_refused_in_one_line(tmp_path):
    done = run_templ("select-best", "-t", LIBRARY, "-q", "CCO", "--prune-rms", "-1", "-o", tmp_path / "pose.sdf",
                     "--no-metrics-server")
    assert done.returncode == 2 and "--prune-rms" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_pruned_campaign_records_the_value_and_gives_the_same_rows_at_one_and_two_workers(queries, tmp_path):
    smi = tmp_path / "queries.smi"
    smi.write_text("".join(f"{smiles} {name}\n" for name, smiles in queries.items()))
    rows = {}
    for workers in ("1", "2"):
        out = tmp_path / f"w{workers}"
        done = run_templ("screen", "-t", LIBRARY, "-q", smi, "-o", out, "-n", "20", "-w", workers,
                         "--prune-rms", PRUNE, "--no-metrics-server")
        assert done.returncode == 0, done.stderr
        assert json.loads((out / "campaign.json").read_text())["parameters"]["prune_rms"] == 0.5
        rows[workers] = {row["query_id"]: {k: v for k, v in row.items() if k != "seconds"}
                         for row in read_scores(out / "scores.csv")}
    assert len(rows["1"]) == len(queries) and rows["1"] == rows["2"]
    assert any(int(row["n_conformers"]) < 20 for row in rows["1"].values())
    pruned = [row for row in rows["1"].values() if int(row["n_conformers"]) < 20]
    assert all(row["status"] == "ok" and row["reason"] == "" and "kept after pruning at 0.5 A" in row["detail"]
               for row in pruned), pruned  # pruning's doing, not a fewer_conformers shortfall
    resumed = run_templ("screen", "-t", LIBRARY, "-q", smi, "-o", tmp_path / "w1", "-n", "20", "--resume",
                        "--no-metrics-server")
    assert resumed.returncode == 2 and "prune_rms" in resumed.stderr
