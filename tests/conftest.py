"""Shared fixtures: small real molecules, generated once per test session."""

from __future__ import annotations

import pytest
from rdkit import Chem

from templ_pipeline.core.conformers import generate_conformers
from templ_pipeline.io import examples

QUERY_SMILES = "O=C(Nc1cccnc1)c1ccc(F)cc1OC"


@pytest.fixture(scope="session")
def template() -> Chem.Mol:
    """A template ligand with one 3D pose (bundled example)."""
    return next(example.template for example in examples() if example.name == "mpro")


@pytest.fixture(scope="session")
def query_confs() -> Chem.Mol:
    """24 ETKDG conformers of a drug-like query ligand."""
    return generate_conformers(QUERY_SMILES, 24, seed=11)
