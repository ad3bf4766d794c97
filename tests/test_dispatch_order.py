"""The order a campaign hands its queries out in: the largest of a bounded window first."""

from __future__ import annotations

import itertools
from functools import partial

import pytest
from rdkit import Chem

from templ_pipeline.campaign.dispatch_order import LargestFirst, isomers_embedded, query_size
from templ_pipeline.campaign.queries import QueryRecord
from templ_pipeline.core.preparation import PreparationOptions, StereoPolicy

pytestmark = pytest.mark.fast


def _smiles(number: int, smiles: str) -> QueryRecord:
    return QueryRecord(number, f"q{number}", smiles, ())


@pytest.mark.parametrize("smiles", [
    "CC(=O)Oc1ccccc1C(=O)O",  # aspirin: organic subset, aromatic
    "C[C@@H](N)C(=O)[O-].[Na+]",  # bracket atoms with hydrogens and charges
    "ClCBr",  # two-letter symbols
    "[2H]C([2H])([2H])[2H]",  # deuterium written as bracket atoms
    "c1cc[nH]c1",
    "[H][H]",
])
def test_a_smiles_size_is_its_heavy_atom_count_as_rdkit_counts_it(smiles):
    mol = Chem.MolFromSmiles(smiles)
    heavy = sum(1 for atom in mol.GetAtoms() if atom.GetAtomicNum() > 1)
    isotopic_hydrogens = sum(1 for atom in mol.GetAtoms() if atom.GetAtomicNum() == 1 and atom.GetIsotope())
    assert query_size(_smiles(1, smiles)) == heavy + isotopic_hydrogens  # [2H] counts: it names an atom


def test_an_sdf_query_size_is_its_first_molfile_atom_count():
    block = Chem.MolToMolBlock(Chem.AddHs(Chem.MolFromSmiles("CCO")))
    assert query_size(QueryRecord(1, "ethanol", None, (block,))) == 9
    assert query_size(QueryRecord(2, "broken", None, ("no counts line",))) == 0


def test_the_largest_of_the_window_goes_first_and_ties_keep_the_input_order():
    records = [_smiles(n, smiles) for n, smiles in
               enumerate(["CO", "CCCCCCCC", "CCO", "CCCCCCCC", "C"], start=1)]
    order = LargestFirst(iter(records), window=10)
    handed = [next(order, None) for _ in range(6)]
    assert [r.number for r in handed[:5]] == [2, 4, 3, 1, 5]
    assert handed[5] is None


def test_the_window_bounds_how_far_the_input_is_read_ahead():
    read = itertools.count()

    def records():
        for number in range(1, 1001):
            next(read)
            yield _smiles(number, "C" * (1 + number % 7))

    order = LargestFirst(records(), window=8)
    first = next(order)
    assert next(read) == 8  # eight records read for the first choice, no more
    assert first is not None and first.number <= 8
    handed = [first, *order]
    assert sorted(r.number for r in handed) == list(range(1, 1001))  # every record once


@pytest.mark.parametrize(("smiles", "options", "isomers"), [
    ("CC(O)CC", PreparationOptions(), 2),  # one unassigned centre
    ("C[C@H](O)CC", PreparationOptions(), 1),  # assigned: embedded as given
    ("CC(O)C(N)CC", PreparationOptions(), 4),
    ("CC(O)C(N)CC", PreparationOptions(max_isomers=2), 2),  # capped as preparation caps it
    ("CC(O)CC", PreparationOptions(stereo=StereoPolicy.AS_IS), 1),
    ("CC(O)CC", PreparationOptions(stereo=StereoPolicy.FIRST), 1),
    ("C1CC", PreparationOptions(), 1),  # does not parse: the worker's to report
])
def test_the_isomers_a_query_is_embedded_as(smiles, options, isomers):
    assert isomers_embedded(_smiles(1, smiles), options) == isomers


def test_an_sdf_query_s_isomers_are_counted_from_its_first_molfile():
    unassigned = Chem.MolToMolBlock(Chem.MolFromSmiles("CC(O)CC"))
    assert isomers_embedded(QueryRecord(1, "butanol", None, (unassigned,)), PreparationOptions()) == 2
    assert isomers_embedded(QueryRecord(2, "broken", None, ("no counts line",)), PreparationOptions()) == 1


def test_the_last_few_go_largest_work_first():
    # by heavy atoms alone the hexane goes first; the butanol is embedded twice (two stereoisomers)
    records = [_smiles(1, "CCCCCC"), _smiles(2, "CC(O)CC"), _smiles(3, "C")]
    by_size = LargestFirst(iter(records), window=10)
    by_work = LargestFirst(iter(records), window=10, isomers=partial(isomers_embedded, options=PreparationOptions()))
    assert [r.number for r in by_size] == [1, 2, 3]
    assert [r.number for r in by_work] == [2, 1, 3]


def test_only_the_last_few_are_counted_once_the_input_has_ended():
    counted: list[int] = []

    def isomers(record: QueryRecord) -> int:
        counted.append(record.number)
        return 1

    records = (_smiles(number, "C" * (1 + number % 7)) for number in range(1, 1001))
    handed = list(LargestFirst(records, window=8, isomers=isomers, tail=3))
    assert len(handed) == 1000
    assert len(counted) == 3 and {r.number for r in handed[-3:]} == set(counted)  # the last three, once each


def test_the_tail_begins_when_the_input_has_ended_and_at_most_tail_records_are_left():
    records = iter([_smiles(number, "C" * number) for number in range(1, 11)])
    order = LargestFirst(records, window=4, tail=3)
    assert not order.in_tail()  # read ahead as far as the window, no further: the input has not ended
    left = 10
    while left > 3:
        next(order)
        left -= 1
        assert order.in_tail() == (left <= 3), left
    assert len(list(order)) == 3 and order.in_tail()
