"""A campaign's results as rows and poses for its files, and the tally its summary prints."""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field

from rdkit import Chem, rdBase

from templ_pipeline.campaign.outputs import ScoreRow
from templ_pipeline.campaign.poses import with_properties
from templ_pipeline.campaign.runner import QueryResult
from templ_pipeline.campaign.task import IsomerOutcome, TemplateResult, isomer_id
from templ_pipeline.core.events import PreparationAction, QueryStatus
from templ_pipeline.core.template_library import TemplateLibrary
from templ_pipeline.core.vocabulary import Field
from templ_pipeline.reference import ReferencePoses

FEWER_CONFORMERS = "fewer_conformers"
"""The ``reason`` of an ``ok`` row whose query got fewer conformers than asked (ETKDG gave up on some)."""


def rows_and_poses(result: QueryResult, library: TemplateLibrary, metric: str, per_template: bool,
                   rows_per_isomer: int = 1, prune_rms: float = 0.0) -> tuple[list[ScoreRow], list[str | None]]:
    """For each prepared molecule of the query (itself, or each stereoisomer): one row (its best template's)
    or one row per template scored, each with its pose (None when it has none), then a row per further
    distinct pose of that template (``--poses-per-query``, ``pose_rank`` 2, 3, ...). A query that failed before it
    was embedded has one row (``rows_per_isomer`` with ``per_template``) and no pose. With ``prune_rms``
    (``--prune-rms``) fewer conformers than asked is what pruning does, not a ``fewer_conformers`` reason."""
    outcome = result.outcome
    isomers: list[IsomerOutcome | None] = list(outcome.isomers) or [None]
    rows, poses = [], []
    for isomer in isomers:
        if per_template:
            templates = isomer.templates if isomer is not None else []
            chosen: list[TemplateResult | None] = list(templates) or [None] * rows_per_isomer
        else:
            chosen = [isomer.best(metric) if isomer is not None else None]
        for item in chosen:
            pose = item.record if item is not None and item.record else None
            rows.append(row := _row(result, isomer, item, library, pose is not None, metric, prune_rms))
            poses.append(pose)
            for rank, other in enumerate(item.alternatives if pose is not None and item is not None else (), start=2):
                rows.append(dataclasses.replace(row, shape=other.shape, color=other.color, combo=other.combo,
                                                conformer_id=other.conf_id, pose_rank=rank))
                poses.append(other.record)
    return rows, poses


def _row(result: QueryResult, isomer: IsomerOutcome | None, item: TemplateResult | None, library: TemplateLibrary,
         posed: bool, metric: str, prune_rms: float) -> ScoreRow:
    outcome = result.outcome
    conformers = isomer.conformers if isomer is not None else 0
    if posed and item is not None:
        status, reason, detail = QueryStatus.OK, "", ""
        asked = result.conformers_requested
        if conformers < asked:
            if prune_rms:
                detail = f"{conformers} of {asked} conformers kept after pruning at {prune_rms:g} A"
            else:
                reason = FEWER_CONFORMERS
                detail = f"ETKDG embedded {conformers} of {asked} conformers"
    else:
        status = QueryStatus.FAILED
        reason = (isomer.reason if isomer is not None and isomer.reason else outcome.reason) or "no_conformer_scored"
        detail = (isomer.detail if isomer is not None and isomer.reason else outcome.detail) or (
            item.failure if item is not None else "")
    index = isomer.index if isomer is not None else 0
    choice = item.choice if item is not None else None
    input_smiles = outcome.smiles or (result.record.smiles or "")
    return ScoreRow(
        query_id=isomer_id(result.query_id, index), input_id=result.query_id, input_record=result.record.number,
        query_smiles=isomer.smiles if isomer is not None else "", input_smiles=input_smiles, isomer=index,
        isomers=len(outcome.isomers), removed=outcome.removed,
        preparation=",".join(outcome.actions) or (str(PreparationAction.UNCHANGED) if outcome.isomers else ""),
        status=str(status), reason=str(reason), detail=" ".join(detail.split()),
        template_name=library.names[item.template] if item is not None else "",
        template_record=library.records[item.template] if item is not None else None,
        template_similarity=(round(choice.similarity, 4) if choice is not None and choice.similarity is not None
                             else None),
        core_atoms=choice.core_atoms if choice is not None else 0,
        core_smarts=choice.core_smarts if choice is not None else "",
        pose_method=str(choice.method) if choice is not None else "",
        pin_fallback=str(choice.fallback) if choice is not None else "",
        pinned_atoms=choice.pinned_atoms if choice is not None else 0,
        runner_up=choice.runner_up if choice is not None else "", rmsd=None,
        n_conformers_requested=result.conformers_requested, n_conformers=conformers,
        n_scored=item.scored if item is not None else 0, n_failed=item.failed if item is not None else 0,
        metric=metric, shape=item.shape if posed and item else None, color=item.color if posed and item else None,
        combo=item.combo if posed and item else None, conformer_id=item.conf_id if posed and item else None,
        pose_rank=1 if posed and item else None, seconds=round(outcome.seconds, 3),
    )


def with_rmsd(rows: list[ScoreRow], poses: list[str | None], references: ReferencePoses) -> list[str | None]:
    """Each posed row's heavy-atom RMSD in place to its reference (``--reference``), set on the row and added
    to its pose record; the poses, with the property."""
    updated: list[str | None] = []
    for position, (row, record) in enumerate(zip(rows, poses, strict=True)):
        if record is None:
            updated.append(None)
            continue
        with rdBase.BlockLogs():
            pose = Chem.MolFromMolBlock(record, removeHs=False)
        rmsd = references.rmsd(row.input_id, pose) if pose is not None else None
        if rmsd is None:
            updated.append(record)
            continue
        rows[position] = dataclasses.replace(row, rmsd=rmsd)
        updated.append(with_properties(record, [(Field.RMSD, rmsd)]))
    return updated


@dataclass
class CampaignTally:
    """What the campaign did in this run, for its progress display and summary."""

    skipped: int = 0
    prune_rms: float = 0.0  # --prune-rms: fewer conformers than asked is then no shortfall
    done: int = 0
    ok: int = 0
    fewer_conformers: int = 0
    failed_by_reason: Counter[str] = field(default_factory=Counter)
    first_failure: dict[str, str] = field(default_factory=dict)  # reason -> the detail of its first query
    kinds: list[str] = field(default_factory=list)
    prepared: Counter[str] = field(default_factory=Counter)  # queries by what preparation did to them
    isomers: int = 0  # stereoisomers scored, over the queries whose stereo was enumerated

    @property
    def failed(self) -> int:
        return sum(self.failed_by_reason.values())

    def add(self, result: QueryResult) -> None:
        self.done += 1
        outcome = result.outcome
        if result.ok:
            self.ok += 1
            self.fewer_conformers += not self.prune_rms and any(
                isomer.conformers < result.conformers_requested for isomer in outcome.isomers)
        else:
            reason = str(outcome.reason)
            self.failed_by_reason[reason] += 1
            self.first_failure.setdefault(reason, outcome.detail)
        self.prepared.update(outcome.actions)
        if PreparationAction.STEREO_ENUMERATED in outcome.actions:
            self.isomers += len(outcome.isomers)
        kind = str(result.kind)
        if not self.kinds or self.kinds[-1] != kind:
            self.kinds.append(kind)

    def preparation(self) -> str:
        """``"stereo: 3 queries enumerated into 10 isomers (1 cut at the cap); fragments removed from 2"``, or ""."""
        parts = []
        enumerated = self.prepared[PreparationAction.STEREO_ENUMERATED]
        if enumerated:
            capped = self.prepared[PreparationAction.STEREO_CAPPED]
            parts.append(f"stereo: {enumerated} {'query' if enumerated == 1 else 'queries'} enumerated into "
                         f"{self.isomers} isomers" + (f" ({capped} cut at the cap)" if capped else ""))
        for action, text in ((PreparationAction.FRAGMENTS_REMOVED, "fragments removed from"),
                             (PreparationAction.LARGE_FRAGMENT_REMOVED, "a large organic fragment dropped from"),
                             (PreparationAction.ISOTOPES_CLEARED, "isotopes cleared in"),
                             (PreparationAction.TAUTOMER_CANONICALIZED, "tautomer canonicalized in"),
                             (PreparationAction.STEREO_FIRST, "first stereoisomer only for"),
                             (PreparationAction.STEREO_UNASSIGNED, "stereo left unassigned in")):
            if self.prepared[action]:
                parts.append(f"{text} {self.prepared[action]}")
        return "; ".join(parts)

    def failure_summary(self) -> str:
        """Why nothing scored: the one reason and its first detail, or the reasons with their counts."""
        if len(self.failed_by_reason) == 1:
            ((reason, count),) = self.failed_by_reason.items()
            return f"{reason} ({count} of {self.done}): {self.first_failure.get(reason, '')}"
        return f"{self.failures()}; see scores.csv and the log"

    def failures(self) -> str:
        """``"invalid_smiles 2, timeout 1"``, or ``"none"``."""
        return ", ".join(f"{reason} {count}" for reason, count in sorted(self.failed_by_reason.items())) or "none"
