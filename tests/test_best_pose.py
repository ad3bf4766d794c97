"""One rule picks the pose a query keeps, in select-best and screen alike: the highest score, then the first
isomer, then the first template; within a template, the lowest conformer id."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from templ_pipeline.campaign.task import IsomerOutcome, QueryOutcome, QueryStatus, TemplateResult
from templ_pipeline.core.best_pose import best_conformer, best_pair

pytestmark = pytest.mark.fast


@dataclass
class Scored:
    conf_id: int
    combo: float


def test_the_highest_scoring_conformer_wins_and_a_tie_goes_to_the_lowest_conformer_id():
    assert best_conformer([Scored(5, 0.7), Scored(2, 0.9), Scored(1, 0.9)], "combo") == Scored(1, 0.9)
    assert best_conformer([], "combo") is None


def test_a_tie_between_pairs_goes_to_the_first_isomer_then_the_first_template_and_unscored_pairs_are_out():
    contenders = [(0.5, 2, 0, "isomer 2"), (0.5, 1, 3, "isomer 1, template 3"), (0.5, 1, 1, "isomer 1, template 1"),
                  (None, 0, 0, "unscored"), (0.4, 0, 0, "lower")]
    assert best_pair(contenders) == "isomer 1, template 1"
    assert best_pair([(None, 0, 0, "unscored")]) is None


def test_a_screened_query_keeps_the_pair_the_same_rule_picks():
    def result(template: int, shape: float | None) -> TemplateResult:
        return TemplateResult(template, 1, 0, None if shape is None else 0, shape, shape)

    first = IsomerOutcome(1, "C[C@H](N)O", templates=[result(0, 0.5), result(1, 0.6)])
    second = IsomerOutcome(2, "C[C@@H](N)O", templates=[result(0, 0.6), result(1, None)])
    outcome = QueryOutcome(0, QueryStatus.OK, isomers=[second, first])
    isomer, best = outcome.best_isomer("combo")
    assert (isomer.index, best.template) == (1, 1)
    assert QueryOutcome(0, QueryStatus.FAILED).best_isomer("combo") == (None, None)
