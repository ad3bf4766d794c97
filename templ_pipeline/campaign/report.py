"""A campaign's results as rows and poses for its files, and the tally its summary prints."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from templ_pipeline.campaign.outputs import ScoreRow
from templ_pipeline.campaign.runner import QueryResult
from templ_pipeline.campaign.task import TemplateResult
from templ_pipeline.core.events import QueryStatus

FEWER_CONFORMERS = "fewer_conformers"
"""The ``reason`` of an ``ok`` row whose query got fewer conformers than asked (ETKDG gave up on some)."""


def rows_and_poses(result: QueryResult, names: Sequence[str], metric: str,
                   per_template: bool) -> tuple[list[ScoreRow], list[str | None]]:
    """One row (the best template's) or one row per template, each with its pose (None when it has none)."""
    outcome = result.outcome
    if per_template:
        chosen: list[TemplateResult | None] = list(outcome.templates) or [None] * len(names)
        template_of = list(range(len(names)))
    else:
        best = outcome.best(metric) if outcome.status == QueryStatus.OK else None
        chosen = [best]
        template_of = [best.template if best is not None else -1]
    rows, poses = [], []
    for number, item in zip(template_of, chosen):
        pose = item.record if item is not None and item.record and outcome.status == QueryStatus.OK else None
        rows.append(_row(result, item, names[number] if number >= 0 else "", pose is not None))
        poses.append(pose)
    return rows, poses


def _row(result: QueryResult, item: TemplateResult | None, template: str, posed: bool) -> ScoreRow:
    outcome = result.outcome
    if posed and item is not None:
        status, reason = QueryStatus.OK, (FEWER_CONFORMERS if outcome.conformers < result.conformers_requested
                                          else "")
    else:
        status = QueryStatus.FAILED
        reason = outcome.reason or "no_conformer_scored"
    return ScoreRow(
        query_id=result.query_id, smiles=outcome.smiles or (result.record.smiles or ""), status=str(status),
        reason=str(reason), template=template, n_conformers=outcome.conformers,
        n_scored=item.scored if item is not None else 0, n_failed=item.failed if item is not None else 0,
        shape=item.shape if posed and item else None, color=item.color if posed and item else None,
        combo=item.combo if posed and item else None, conformer_id=item.conf_id if posed and item else None,
        seconds=round(outcome.seconds, 3),
    )


@dataclass
class CampaignTally:
    """What the campaign did in this run, for its progress display and summary."""

    skipped: int = 0
    done: int = 0
    ok: int = 0
    fewer_conformers: int = 0
    failed_by_reason: Counter[str] = field(default_factory=Counter)
    kinds: list[str] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return sum(self.failed_by_reason.values())

    def add(self, result: QueryResult) -> None:
        self.done += 1
        if result.ok:
            self.ok += 1
            self.fewer_conformers += result.outcome.conformers < result.conformers_requested
        else:
            self.failed_by_reason[str(result.outcome.reason)] += 1
        kind = str(result.kind)
        if not self.kinds or self.kinds[-1] != kind:
            self.kinds.append(kind)

    def failures(self) -> str:
        """``"invalid_smiles 2, timeout 1"``, or ``"none"``."""
        return ", ".join(f"{reason} {count}" for reason, count in sorted(self.failed_by_reason.items())) or "none"
