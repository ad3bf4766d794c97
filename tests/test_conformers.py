"""Conformer generation with ETKDGv3."""

from __future__ import annotations

import numpy as np
import pytest

from templ_pipeline.core.conformers import generate_conformers

pytestmark = pytest.mark.fast


def test_seeded_generation_is_reproducible_and_hydrogens_removed():
    first = generate_conformers("CC(=O)Nc1ccc(O)cc1", 5, seed=3)
    second = generate_conformers("CC(=O)Nc1ccc(O)cc1", 5, seed=3)
    assert first.GetNumConformers() == 5
    assert all(atom.GetAtomicNum() != 1 for atom in first.GetAtoms())
    for a, b in zip(first.GetConformers(), second.GetConformers(), strict=True):
        assert np.array_equal(a.GetPositions(), b.GetPositions())


def test_worker_count_does_not_change_the_conformers():
    one = generate_conformers("CC(=O)Nc1ccc(O)cc1", 6, seed=5, n_workers=1)
    two = generate_conformers("CC(=O)Nc1ccc(O)cc1", 6, seed=5, n_workers=2)
    for a, b in zip(one.GetConformers(), two.GetConformers(), strict=True):
        assert np.allclose(a.GetPositions(), b.GetPositions())


@pytest.mark.parametrize("smiles", ["", "C1CC(", "not a molecule"])
def test_unreadable_smiles_is_a_value_error_naming_it(smiles):
    with pytest.raises(ValueError, match="cannot parse SMILES"):
        generate_conformers(smiles, 3)


def test_zero_conformers_is_rejected():
    with pytest.raises(ValueError, match="at least 1"):
        generate_conformers("CCO", 0)
