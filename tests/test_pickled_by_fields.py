"""Outcomes cross the worker pipe pickled as their constructor and field values (core.pickled_by_fields)."""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field

import pytest

from templ_pipeline.campaign.task import AlternativePose, IsomerOutcome, QueryOutcome, TemplateResult
from templ_pipeline.core.labels import PinFallback, PoseMethod, QueryFailureReason, QueryStatus
from templ_pipeline.core.pickled_by_fields import pickled_by_fields
from templ_pipeline.core.stage_timings import ScoringTimed
from templ_pipeline.core.template_poses import TemplateChoiceRecord
from templ_pipeline.core.trace_context import WorkerSpan

pytestmark = pytest.mark.fast


def _outcome() -> QueryOutcome:
    choice = TemplateChoiceRecord(0.61, 12, "[#6]-[#8]", PoseMethod.PINNED_PARTIAL, PinFallback.SMALL_CORE, 9, 50,
                                  "a stereocentre left free", "t2 0.5100")
    best = TemplateResult(3, 48, 2, 17, 0.71, 0.42, "pose\nM  END\n$$$$\n", "no conformer", False, choice,
                          (AlternativePose(5, 0.6, 0.4, "other\n$$$$\n"),))
    isomer = IsomerOutcome(2, "C[C@H](N)O", QueryStatus.OK, None, "", 50, [best], 0.013, 1)
    span = WorkerSpan(1 << 100, 7, 3, 1, 10, 20, 4242)
    return QueryOutcome(4, QueryStatus.OK, None, "", "CC(N)O", [isomer], "Cl", ("salt_stripped",), 2, 2,
                        ("a warning",), 1.5, 4242, [ScoringTimed(span, 2, 1, 48, 2)], [])


def test_an_outcome_survives_the_pipe_whole_and_each_object_travels_as_its_constructor_and_values():
    outcome = _outcome()
    again = pickle.loads(pickle.dumps(outcome, protocol=pickle.HIGHEST_PROTOCOL))
    assert again == outcome and again is not outcome
    assert again.isomers[0].templates[0].choice.method is PoseMethod.PINNED_PARTIAL  # the enum member itself
    result = outcome.isomers[0].templates[0]
    assert result.__reduce__() == (TemplateResult, (3, 48, 2, 17, 0.71, 0.42, "pose\nM  END\n$$$$\n",
                                                     "no conformer", False, result.choice, result.alternatives))
    failed = QueryOutcome(1, QueryStatus.FAILED, QueryFailureReason.TIMEOUT, "over 600 s")
    assert pickle.loads(pickle.dumps(failed)) == failed


def test_a_dataclass_with_a_field_outside_init_is_refused():
    @dataclass
    class Counted:
        name: str
        seen: int = field(default=0, init=False)

    with pytest.raises(TypeError, match="Counted: pickled_by_fields needs fields that are all __init__ arguments"):
        pickled_by_fields(Counted)


@pickled_by_fields
@dataclass(frozen=True)
class One:
    value: tuple[int, ...]


def test_a_one_field_dataclass_round_trips():
    assert One((1, 2)).__reduce__() == (One, ((1, 2),))
    assert pickle.loads(pickle.dumps(One((1, 2)))) == One((1, 2))
