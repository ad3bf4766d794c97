"""select_best and score_and_align on real RDKit molecules."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, strategies as st
from rdkit import Chem

from templ_pipeline.core.events import SelectBestFinished, SelectBestStarted
from templ_pipeline.core.scoring import (
    MAX_BATCH,
    MIN_BATCH,
    ScoringPart,
    choose_batch_size,
    part_groups,
    score_and_align,
    select_best,
    select_best_each,
    select_best_with_report,
)
from templ_pipeline.io import examples

pytestmark = pytest.mark.fast


def _ranked_signature(ranked):
    return [(cid, scores["shape"], scores["color"], scores["combo"]) for cid, scores, _ in ranked]


def test_conformer_against_itself_scores_near_one(query_confs):
    conf = Chem.Mol(query_confs, confId=query_confs.GetConformers()[0].GetId())
    scores, aligned = score_and_align(conf, conf)
    assert scores["shape"] > 0.99
    assert aligned.GetNumConformers() == 1


def test_combo_is_mean_of_shape_and_color(query_confs, template):
    for _, scores, _ in select_best(query_confs, template, return_all_ranked=True):
        assert scores["combo"] == pytest.approx(0.5 * (scores["shape"] + scores["color"]), abs=1e-12)


@pytest.mark.parametrize("metric", ["shape", "color", "combo"])
def test_ranked_list_is_sorted_best_first(query_confs, template, metric):
    ranked = select_best(query_confs, template, return_all_ranked=True, align_metric=metric)
    keys = [(-scores[metric], cid) for cid, scores, _ in ranked]
    assert keys == sorted(keys)
    assert len(ranked) == query_confs.GetNumConformers()


def test_best_per_metric_matches_ranking(query_confs, template):
    best = select_best(query_confs, template)
    assert set(best) == {"shape", "color", "combo"}
    for metric, (mol, scores) in best.items():
        top_id, top_scores, _ = select_best(query_confs, template, return_all_ranked=True, align_metric=metric)[0]
        assert mol.GetConformer().GetId() == top_id
        assert scores == top_scores


def test_results_identical_for_1_2_and_4_workers(query_confs, template):
    runs = {n: select_best_with_report(query_confs, template, n_workers=n) for n in (1, 2, 4)}
    reference = _ranked_signature(runs[1].ranked)
    for n, selection in runs.items():
        assert _ranked_signature(selection.ranked) == reference, f"n_workers={n} differs"
        for metric in ("shape", "color", "combo"):
            mol, scores = selection.best[metric]
            ref_mol, ref_scores = runs[1].best[metric]
            assert scores == ref_scores
            assert np.array_equal(mol.GetConformer().GetPositions(), ref_mol.GetConformer().GetPositions())
    assert "process" in runs[2].report.executor_kinds, "2 workers on this machine should use a process pool"


@pytest.mark.parametrize("n_workers", [1, 2])
def test_several_templates_scored_in_one_call_score_as_a_call_each_and_are_one_call_to_observers(
        query_confs, broken_confs, template, n_workers):
    other = next(example.template for example in examples() if example.name == "coxib")
    broken = broken_confs[0]
    parts = [ScoringPart(query_confs, template), ScoringPart(broken, other), ScoringPart(query_confs, other, False)]
    heard: list[object] = []
    together = select_best_each(parts, n_workers=n_workers, observers=[heard.append])
    alone = [select_best_with_report(part.confs, part.template, align=part.align) for part in parts]
    for one, each in zip(together, alone, strict=True):
        assert _ranked_signature(one.ranked) == _ranked_signature(each.ranked)
        assert (one.report.n_conformers, one.report.n_scored) == (each.report.n_conformers, each.report.n_scored)
        assert one.report.failures == each.report.failures
    assert together[1].report.failed_by_reason == {"no_coordinates": 2}
    started = [event for event in heard if isinstance(event, SelectBestStarted)]
    done = [event for event in heard if isinstance(event, SelectBestFinished)]
    conformers = sum(part.confs.GetNumConformers() for part in parts)
    assert [(event.n_conformers, event.workers_requested) for event in started] == [(conformers, n_workers)]
    assert [(event.n_conformers, event.scored, dict(event.failed_by_reason)) for event in done] == [
        (conformers, conformers - 2, {"no_coordinates": 2})]
    assert all(not (one.report.reductions or one.report.fallbacks) for one in together[1:])  # the call's: once
    assert sum(one.report.duration_seconds for one in together) == pytest.approx(done[0].seconds, rel=0.05)
    assert sum(one.report.n_batches for one in together) >= len(parts)


def test_part_groups_keep_the_order_and_hold_at_most_the_limit_unless_one_part_is_larger(query_confs, template):
    sizes = [24, 10, 5, 24, 1]  # conformers per part
    parts = [ScoringPart(Chem.Mol(query_confs), template) for _ in sizes]
    for part, size in zip(parts, sizes, strict=True):
        for conf_id in [conf.GetId() for conf in part.confs.GetConformers()][size:]:
            part.confs.RemoveConformer(conf_id)
    groups = part_groups(parts, limit=20)
    assert [[part.confs.GetNumConformers() for part in group] for group in groups] == [[24], [10, 5], [24], [1]]
    assert [part for group in groups for part in group] == parts
    assert part_groups(parts) == [parts]  # a query's chosen templates: one call


def test_conformer_ids_with_gaps_are_all_scored(query_confs, template):
    gappy = Chem.Mol(query_confs)
    for offset, conf in enumerate(gappy.GetConformers()):
        conf.SetId(offset * 7 + 3)
    expected = {conf.GetId() for conf in gappy.GetConformers()}
    ranked = select_best(gappy, template, return_all_ranked=True, n_workers=2)
    assert {cid for cid, _, _ in ranked} == expected
    # same scores as the contiguous ids: conformers are addressed by id, not position
    plain = select_best(query_confs, template, return_all_ranked=True)
    by_position = {cid: scores for cid, scores, _ in plain}
    for cid, scores, _ in ranked:
        assert scores == by_position[(cid - 3) // 7]


@pytest.mark.parametrize("n_workers", [1, 2])
def test_every_conformer_is_scored_or_failed_with_reason(broken_confs, template, n_workers):
    broken, *bad = broken_confs
    bad_ids = set(bad)
    selection = select_best_with_report(broken, template, n_workers=n_workers)
    report = selection.report
    assert report.n_scored + report.n_failed == broken.GetNumConformers()
    assert {failure.conf_id for failure in report.failures} == bad_ids
    assert report.failed_by_reason == {"no_coordinates": 2}
    assert bad_ids.isdisjoint(cid for cid, _, _ in selection.ranked)


def test_unsanitizable_query_is_counted_not_raised(template):
    mol = Chem.MolFromSmiles("C(C)(C)(C)(C)C", sanitize=False)  # pentavalent carbon
    conf = Chem.Conformer(mol.GetNumAtoms())
    for atom in range(mol.GetNumAtoms()):
        conf.SetAtomPosition(atom, (float(atom), 0.5 * atom, 0.0))
    conf.Set3D(True)
    mol.AddConformer(conf, assignId=True)
    selection = select_best_with_report(mol, template)
    assert selection.report.failed_by_reason == {"sanitization_failed": 1}
    assert selection.best["combo"] == (None, {"shape": -1.0, "color": -1.0, "combo": -1.0})


def test_no_realign_returns_input_pose(query_confs, template):
    ranked = select_best(query_confs, template, no_realign=True, return_all_ranked=True)
    for cid, _, mol in ranked:
        assert np.array_equal(mol.GetConformer().GetPositions(), query_confs.GetConformer(cid).GetPositions())
    aligned = select_best(query_confs, template, return_all_ranked=True)
    assert any(
        not np.allclose(mol.GetConformer().GetPositions(), query_confs.GetConformer(cid).GetPositions())
        for cid, _, mol in aligned
    )


def test_input_molecules_are_not_modified(query_confs, template):
    before = [conf.GetPositions().copy() for conf in query_confs.GetConformers()]
    template_before = template.GetConformer().GetPositions().copy()
    select_best(query_confs, template, n_workers=1)
    after = query_confs.GetConformers()
    assert all(np.array_equal(a, conf.GetPositions()) for a, conf in zip(before, after, strict=True))
    assert np.array_equal(template_before, template.GetConformer().GetPositions())


def test_unknown_metric_names_the_valid_ones(query_confs, template):
    with pytest.raises(ValueError, match="shape, color, combo"):
        select_best(query_confs, template, align_metric="tanimoto")


@pytest.mark.parametrize(
    "make_input, message",
    [
        (lambda q, t: (None, t), "confs must be an RDKit molecule"),
        (lambda q, t: (Chem.MolFromSmiles("CCO"), t), "no conformers"),
        (lambda q, t: (q, None), "template must be an RDKit molecule"),
        (lambda q, t: (q, Chem.MolFromSmiles("CCO")), "no 3D coordinates"),
    ],
)
def test_unusable_input_is_a_clear_value_error(query_confs, template, make_input, message):
    confs, tpl = make_input(query_confs, template)
    with pytest.raises(ValueError, match=message):
        select_best(confs, tpl)


def test_template_with_2d_coordinates_is_rejected(query_confs):
    flat = Chem.MolFromSmiles("c1ccccc1O")
    from rdkit.Chem import rdDepictor

    rdDepictor.Compute2DCoords(flat)
    with pytest.raises(ValueError, match="2D"):
        select_best(query_confs, flat)


@given(n_conformers=st.integers(1, 5000), n_workers=st.integers(1, 256))
def test_batch_size_is_bounded_and_gives_work_to_every_worker(n_conformers, n_workers):
    size = choose_batch_size(n_conformers, n_workers)
    assert MIN_BATCH <= size <= MAX_BATCH
    batches = math.ceil(n_conformers / size)
    if size > MIN_BATCH and size < MAX_BATCH:
        assert batches >= n_workers  # every worker gets at least one batch
