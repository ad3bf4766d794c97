"""Query preparation on the cases a medicinal chemist meets: salts, stereo, metals, tiny molecules, isotopes."""

from __future__ import annotations

import pytest
from rdkit import Chem

from templ_pipeline.core.events import PreparationAction, QueryFailureReason
from templ_pipeline.core.preparation import (
    MIN_HEAVY_ATOMS,
    FragmentPolicy,
    PreparationError,
    PreparationOptions,
    StereoPolicy,
    TautomerPolicy,
    element_supported,
    prepare,
)

pytestmark = pytest.mark.fast

IBUPROFEN = "CC(C)Cc1ccc(C(C)C(=O)[O-])cc1"
TWO_CENTRES = "CC(N)c1ccc(C(O)CC)cc1"


def _prepared(smiles: str, **options) -> list[str]:
    return [isomer.smiles for isomer in prepare(Chem.MolFromSmiles(smiles), PreparationOptions(**options)).isomers]


def _canonical(smiles: str) -> str:
    return Chem.MolToSmiles(Chem.MolFromSmiles(smiles))


@pytest.mark.parametrize(("salt", "parent", "removed"), [
    ("CC(=O)Nc1ccc(O)cc1.OC(=O)C(F)(F)F", "CC(=O)Nc1ccc(O)cc1", ("O=C(O)C(F)(F)F",)),  # a TFA salt
    (f"{IBUPROFEN}.[Na+]", IBUPROFEN, ("[Na+]",)),  # the charge of the carboxylate is kept
    ("Cl.CCN(CC)Cc1ccccc1", "CCN(CC)Cc1ccccc1", ("Cl",)),  # an amine hydrochloride
    ("O.O.CN1C=NC2=C1C(=O)N(C)C(=O)N2C", "CN1C=NC2=C1C(=O)N(C)C(=O)N2C", ("O", "O")),  # a hydrate
])
def test_counterions_and_solvents_are_removed_and_recorded(salt, parent, removed):
    preparation = prepare(Chem.MolFromSmiles(salt), PreparationOptions(stereo=StereoPolicy.AS_IS), input_smiles=salt)
    (isomer,) = preparation.isomers
    assert isomer.smiles == _canonical(parent)
    assert preparation.removed == removed and preparation.warnings == ()
    assert preparation.actions - {PreparationAction.STEREO_UNASSIGNED} == {PreparationAction.FRAGMENTS_REMOVED}
    assert preparation.fields()["input_smiles"] == salt and preparation.fields()["removed"] == ".".join(removed)


def test_a_second_large_organic_fragment_is_a_warning():
    preparation = prepare(Chem.MolFromSmiles("CCCCCCCC(=O)O.CCN(CC)Cc1ccccc1"))
    assert len(preparation.isomers) == 1 and len(preparation.removed) == 1
    assert PreparationAction.LARGE_FRAGMENT_REMOVED in preparation.actions
    assert "second large organic fragment" in preparation.warnings[0]


def test_every_fragment_can_be_kept():
    assert _prepared("CC(=O)Nc1ccc(O)cc1.OC(=O)C(F)(F)F", fragments=FragmentPolicy.ALL) == [
        _canonical("CC(=O)Nc1ccc(O)cc1.OC(=O)C(F)(F)F")]


def test_unassigned_stereocentres_become_one_isomer_each_with_assigned_stereo():
    preparation = prepare(Chem.MolFromSmiles(TWO_CENTRES))
    assert [isomer.index for isomer in preparation.isomers] == [1, 2, 3, 4]
    assert {isomer.count for isomer in preparation.isomers} == {4}
    assert preparation.actions == {PreparationAction.STEREO_ENUMERATED} and not preparation.capped
    assert len({isomer.smiles for isomer in preparation.isomers}) == 4
    for isomer in preparation.isomers:
        centres = Chem.FindMolChiralCenters(isomer.mol, includeUnassigned=True, useLegacyImplementation=False)
        assert len(centres) == 2 and all(label in ("R", "S") for _, label in centres)
        assert Chem.MolToSmiles(isomer.mol) == isomer.smiles


def test_isomers_do_not_depend_on_how_the_input_was_written():
    written_backwards = "CCC(O)c1ccc(cc1)C(C)N"
    assert _prepared(written_backwards) == _prepared(TWO_CENTRES)
    assert _prepared(TWO_CENTRES) == _prepared(TWO_CENTRES)


def test_double_bond_stereo_is_enumerated_too():
    assert _prepared("CC=CC(=O)Nc1ccccc1") == sorted([_canonical("C/C=C/C(=O)Nc1ccccc1"),
                                                       _canonical("C/C=C\\C(=O)Nc1ccccc1")])


def test_the_cap_cuts_the_enumeration_and_says_so():
    polyol = "CC(O)C(O)C(O)C(O)C(O)C(O)C"
    preparation = prepare(Chem.MolFromSmiles(polyol), PreparationOptions(max_isomers=3))
    assert len(preparation.isomers) == 3 and preparation.capped
    assert preparation.unassigned_stereo > 3
    assert [i.smiles for i in preparation.isomers] == [i.smiles for i in prepare(
        Chem.MolFromSmiles(polyol), PreparationOptions(max_isomers=3)).isomers]  # the same three every run


def test_stereo_policies_first_and_as_is():
    first = prepare(Chem.MolFromSmiles(TWO_CENTRES), PreparationOptions(stereo=StereoPolicy.FIRST))
    assert [(i.index, i.count) for i in first.isomers] == [(1, 1)]
    assert first.isomers[0].smiles == _prepared(TWO_CENTRES)[0]
    kept = prepare(Chem.MolFromSmiles(TWO_CENTRES), PreparationOptions(stereo=StereoPolicy.AS_IS))
    assert [i.smiles for i in kept.isomers] == [_canonical(TWO_CENTRES)]
    assert kept.actions == {PreparationAction.STEREO_UNASSIGNED} and kept.unassigned_stereo == 4


def test_assigned_stereo_and_charges_are_kept():
    for smiles in ("C[C@H](N)c1ccc([C@@H](O)CC)cc1", "C[N+](C)(C)CCOC(C)=O", "C/C=C/C(=O)Nc1ccccc1"):
        preparation = prepare(Chem.MolFromSmiles(smiles))
        assert [(i.smiles, i.index) for i in preparation.isomers] == [(_canonical(smiles), 0)]
        assert preparation.actions == frozenset()


@pytest.mark.parametrize(("smiles", "symbol"), [("Cl[Pt](Cl)(N)N", "Pt"), ("C1=CC=C[CH-]1.[Fe+2].C1=CC=C[CH-]1", "Fe"),
                                                 ("CC(=O)O[Zn]OC(C)=O", "Zn")])
def test_elements_without_a_shape_radius_are_refused(smiles, symbol):
    with pytest.raises(PreparationError, match=f"no radius for {symbol}") as refused:
        prepare(Chem.MolFromSmiles(smiles), PreparationOptions(fragments=FragmentPolicy.ALL))
    assert refused.value.reason is QueryFailureReason.UNSUPPORTED_ELEMENT


@pytest.mark.parametrize("smiles", ["O", "[Na+]", "CC", "[Na+].[Cl-]"])
def test_molecules_too_small_to_align_are_refused(smiles):
    with pytest.raises(PreparationError, match="too small") as refused:
        prepare(Chem.MolFromSmiles(smiles))
    assert refused.value.reason is QueryFailureReason.TOO_SMALL
    assert Chem.MolFromSmiles("CCO").GetNumHeavyAtoms() >= MIN_HEAVY_ATOMS
    assert prepare(Chem.MolFromSmiles("CCO")).isomers


def test_isotopes_and_explicit_hydrogens_prepare_like_the_parent():
    parent = _prepared("COc1ccccc1C")
    for spelled in ("[2H]C([2H])([2H])Oc1ccccc1C", "COc1ccccc1[13CH3]", "[H]C([H])([H])Oc1ccccc1C"):
        assert _prepared(spelled) == parent, spelled
    assert prepare(Chem.MolFromSmiles("[2H]C([2H])([2H])Oc1ccccc1C")).actions == {PreparationAction.ISOTOPES_CLEARED}


def test_tautomers_are_kept_unless_asked():
    assert _prepared("Oc1ccccn1") == [_canonical("Oc1ccccn1")]
    canonical = prepare(Chem.MolFromSmiles("Oc1ccccn1"), PreparationOptions(tautomer=TautomerPolicy.CANONICAL))
    assert [i.smiles for i in canonical.isomers] == [_canonical("O=c1cccc[nH]1")]
    assert canonical.actions == {PreparationAction.TAUTOMER_CANONICALIZED}


def test_the_element_table_is_measured_on_this_rdkit():
    assert all(element_supported(z) for z in (1, 6, 7, 8, 9, 15, 16, 17, 35, 53))
    assert not any(element_supported(z) for z in (26, 29, 30, 78, 79))
