"""What ``select-best`` and ``demo`` report: the best template, its poses as SD records, the summary.

A template file may hold several records (the crystal ligands of one target): the
query is scored against each, as ``templ screen`` does, and the poses written are
those against the template whose best pose scores highest by the ranking metric
(the first record on a tie, the campaign's rule). The summary names the record
used; the JSON summary gives every template's best.

Pose records keep the query's identity: the record name and SD properties of the
conformer's own input record (``--conformers``), or the ``--name`` / SMILES of a
``--query``; ``query_smiles`` and ``template_name`` say what was compared, with the
names ``templ screen`` writes (:class:`~templ_pipeline.core.vocabulary.Field`). They keep
the hydrogens the input had (:class:`Hydrogens`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from rdkit import Chem
from rich.console import Console
from rich.table import Table

from templ_pipeline import __version__
from templ_pipeline.core import template_poses
from templ_pipeline.core.best_pose import best_pair
from templ_pipeline.core.events import Fallback, WorkersReduced
from templ_pipeline.core.preparation import Preparation
from templ_pipeline.core.scoring import METRICS, Selection
from templ_pipeline.core.template_choice import TemplateChoice
from templ_pipeline.core.template_poses import TemplateChoiceRecord, TemplatePoses, distinct_conformers, score_text
from templ_pipeline.core.vocabulary import Field, rounded
from templ_pipeline.io import record_properties
from templ_pipeline.pose_output import PoseTarget
from templ_pipeline.pose_records import PoseRecord, PropertyValue, isomer_name

__all__ = ["Candidate", "Hydrogens", "QueryIdentity", "RunOutcome", "TemplateSelection", "best_template",
           "pose_records", "print_summary", "runner_up_text", "summary_json"]


class Hydrogens(StrEnum):
    """Which hydrogens a written pose has (``--hydrogens``).

    ``input``: the ones the input had. A ``--conformers`` record's explicit hydrogens
    stay, moved with the pose (shape and colour scores ignore hydrogens: measured,
    identical scores with and without); a SMILES gives heavy atoms, as the conformer
    generator returns them and as ``templ screen`` writes its poses. ``strip``: heavy
    atoms only. ``add``: every hydrogen explicit, the missing ones placed from the
    heavy atoms' geometry (RDKit ``AddHs(addCoords=True)``), for tools that need them.
    """

    INPUT = "input"
    STRIP = "strip"
    ADD = "add"


@dataclass(frozen=True, slots=True)
class QueryIdentity:
    """Who the query is, for the written poses: ``name`` names poses that came from no record
    (``--name``, or the SMILES); ``smiles`` is its canonical SMILES (heavy atoms)."""

    name: str
    smiles: str
    hydrogens: Hydrogens = Hydrogens.INPUT


@dataclass(frozen=True, slots=True)
class Candidate:
    """One prepared molecule of the query: the query itself (``isomer`` 0), or one of its stereoisomers
    (1-based), with the templates chosen for it and its conformers for each."""

    isomer: int
    smiles: str
    choice: TemplateChoice
    posed: tuple[TemplatePoses, ...]
    embedding_seconds: float = 0.0  # spent embedding its conformers (0 for conformers given)

    @property
    def conformers(self) -> int:
        """Conformers made (a free embedding shared by every template counts once)."""
        return distinct_conformers(self.posed)


@dataclass(frozen=True, slots=True)
class TemplateSelection:
    """The selection of one prepared molecule against one template record (``record`` is 1-based)."""

    record: int
    name: str
    selection: Selection
    isomer: int = 0
    smiles: str = ""  # the prepared molecule scored (its stereoisomer's SMILES)
    choice: TemplateChoiceRecord | None = None  # why this template, how the conformers were made

    def best_score(self, metric: str) -> float | None:
        mol, scores = self.selection.best[metric]
        return None if mol is None else scores[metric]


@dataclass
class RunOutcome:
    """One ``select-best`` run: every template's selection, the chosen one, what was written where."""

    templates: list[TemplateSelection]
    metric: str
    target: PoseTarget
    chosen: TemplateSelection | None = None
    written: int = 0
    conformer_events: list[Fallback | WorkersReduced] = field(default_factory=list)
    preparation: Preparation | None = None
    conformers_requested: int = 0  # per prepared molecule
    prune_rms: float = 0.0  # A: ETKDG's RMSD pruning of the generated conformers (0: off)
    library: int = 0  # templates in the library
    choices: dict[int, TemplateChoice] = field(default_factory=dict)  # isomer -> how its templates were chosen
    conformers_made: dict[int, int] = field(default_factory=dict)  # isomer -> conformers over its templates
    embedding_seconds: float = 0.0  # embedding every prepared molecule's conformers
    wall_seconds: float = 0.0  # the whole run, from the command's start to its summary

    @property
    def scoring_seconds(self) -> float:
        """Scoring every template's conformers."""
        return sum(result.selection.report.duration_seconds for result in self.templates)

    def of_isomer(self, isomer: int) -> list[TemplateSelection]:
        """The selections of one prepared molecule, one per template."""
        return [result for result in self.templates if result.isomer == isomer]

    @property
    def isomers(self) -> list[int]:
        return list(dict.fromkeys(result.isomer for result in self.templates))

    def failure(self) -> str:
        """Why no conformer scored: the one failure every conformer had, or the count by reason."""
        failures = [f for result in self.templates for f in result.selection.report.failures]
        details = {(str(f.reason), f.detail) for f in failures}
        if len(details) == 1:
            ((reason, detail),) = details
            return f"every conformer failed with {reason}: {detail}"
        counts: dict[str, int] = {}
        for failure in failures:
            counts[str(failure.reason)] = counts.get(str(failure.reason), 0) + 1
        listed = ", ".join(f"{reason} {count}" for reason, count in sorted(counts.items())) or "no conformer"
        return f"{listed}; see the failure reasons above"


def best_template(results: Sequence[TemplateSelection], metric: str) -> TemplateSelection | None:
    """The (isomer, template) pair whose best pose scores highest by ``metric`` (the first isomer, then the
    first record, on a tie); None when none scored."""
    return best_pair((result.best_score(metric), result.isomer, result.record, result) for result in results)


def pose_records(chosen: TemplateSelection, query: QueryIdentity, metric: str, all_ranked: bool,
                 preparation: Preparation | None = None, requested: int = 0) -> list[PoseRecord]:
    """The SD records to write: the best pose by ``metric``, or every pose best first (of the chosen
    isomer and template); with ``preparation``, what it did to the query as properties."""
    selection = chosen.selection
    if all_ranked:
        ranked = [(conf_id, scores, mol) for conf_id, scores, mol in selection.ranked]
    else:
        mol, scores = selection.best[metric]
        ranked = [] if mol is None else [(mol.GetConformer().GetId(), scores, mol)]
    prepared: dict[str, PropertyValue] = {} if preparation is None else {
        "input_smiles": preparation.input_smiles, "isomer": chosen.isomer, "isomers": len(preparation.isomers),
        "removed": ".".join(preparation.removed),
        "preparation": ",".join(sorted(preparation.actions)) or "unchanged",
        "n_conformers_requested": requested, "n_conformers": selection.report.n_conformers}
    if chosen.choice is not None:
        prepared = {**prepared, **chosen.choice.properties(chosen.record)}
    return [_record(chosen, query, selection.query, metric, rank, conf_id, scores, mol, prepared)
            for rank, (conf_id, scores, mol) in enumerate(ranked, start=1)]


def _record(chosen: TemplateSelection, query: QueryIdentity, source: Chem.Mol, metric: str, rank: int,
            conf_id: int, scores: dict[str, float], pose: Chem.Mol,
            prepared: dict[str, PropertyValue] | None = None) -> PoseRecord:
    record_name, properties = record_properties(source, conf_id)
    pose = Chem.Mol(pose)
    for name in pose.GetPropNames():  # the molecule-level properties are record 1's: each pose gets its own
        pose.ClearProp(name)
    if query.hydrogens == Hydrogens.STRIP:
        pose = Chem.RemoveHs(pose)
    elif query.hydrogens == Hydrogens.ADD:
        pose = Chem.AddHs(pose, addCoords=True)
    ours: dict[str, PropertyValue] = {
        **scores, Field.CONFORMER_ID: conf_id, Field.RANK: rank, Field.POSE_RANK: rank, Field.METRIC: metric,
        Field.QUERY_SMILES: chosen.smiles or query.smiles, **(prepared or {}),
        Field.TEMPLATE_NAME: chosen.name, Field.TEMPLATE_RECORD: chosen.record,
    }
    return PoseRecord(pose, record_name or isomer_name(query.name, chosen.isomer), {**properties, **ours})


def _best_json(result: TemplateSelection, query: QueryIdentity) -> dict[str, Any]:
    best: dict[str, Any] = {}
    for metric in METRICS:
        mol, scores = result.selection.best[metric]
        if mol is None:
            best[metric] = None
            continue
        conf_id = mol.GetConformer().GetId()
        record_name, _ = record_properties(result.selection.query, conf_id)
        name = record_name or isomer_name(query.name, result.isomer)
        best[metric] = {"conformer_id": conf_id, "name": name,
                        **{key: rounded(key, value) for key, value in scores.items()}}
    return best


def _counts_json(selection: Selection) -> dict[str, Any]:
    report = selection.report
    return {"total": report.n_conformers, "scored": report.n_scored, "failed": report.n_failed,
            "failed_by_reason": dict(sorted(report.failed_by_reason.items()))}


def _event_json(event: Fallback | WorkersReduced) -> dict[str, Any]:
    if isinstance(event, WorkersReduced):
        return {"task_type": str(event.task_type), "requested": event.requested, "granted": event.granted,
                "reason": str(event.reason), "detail": event.detail}
    return {"from": str(event.from_kind), "to": str(event.to_kind), "reason": str(event.reason),
            "cause": str(event.cause), "detail": event.detail}


def _events(outcome: RunOutcome) -> list[Fallback | WorkersReduced]:
    events: list[Fallback | WorkersReduced] = list(outcome.conformer_events)
    for result in outcome.templates:
        events.extend(result.selection.report.reductions)
        events.extend(result.selection.report.fallbacks)
    return events


def summary_json(outcome: RunOutcome, query: QueryIdentity) -> dict[str, Any]:
    """The run's summary as one JSON-ready object (``select-best --json``)."""
    chosen = outcome.chosen or (outcome.templates[0] if outcome.templates else None)
    tally = None if chosen is None else _Tally.of(outcome, chosen)
    kinds: list[str] = []
    for result in outcome.templates:
        for kind in result.selection.report.executor_kinds:
            if not kinds or kinds[-1] != str(kind):
                kinds.append(str(kind))
    events = _events(outcome)
    return {
        "templ_version": __version__,
        "metric": outcome.metric,
        "query": {"name": query.name, "smiles": query.smiles},
        "template": None if outcome.chosen is None else {
            "record": outcome.chosen.record, "name": outcome.chosen.name,
            "of": len(outcome.of_isomer(outcome.chosen.isomer)), "library": outcome.library,
            **_choice_json(outcome.chosen.choice),
            "runner_up": [{"record": result.record, "name": result.name,
                           "score": _rounded_score(outcome.metric, result.best_score(outcome.metric))}
                          for result in _runners_up(outcome)]},
        "template_selection": {str(isomer): _selection_json(choice) for isomer, choice in outcome.choices.items()},
        "best": (_best_json(outcome.chosen, query) if outcome.chosen is not None
                 else dict.fromkeys(METRICS)),
        "conformers": None if tally is None else tally.as_json(),
        "workers": None if tally is None else {"requested": tally.workers_requested,
                                               "granted": tally.workers_granted},
        "executor_kinds": kinds,
        "conformers_per_second": None if tally is None else round(tally.per_second, 1),
        "seconds": {"total": round(outcome.wall_seconds, 3), "embedding": round(outcome.embedding_seconds, 3),
                    "scoring": round(outcome.scoring_seconds, 3)},
        "reductions": [_event_json(event) for event in events if isinstance(event, WorkersReduced)],
        "fallbacks": [_event_json(event) for event in events if isinstance(event, Fallback)],
        "output": None if not outcome.written else str(outcome.target),
        "written": outcome.written,
        "templates": [{"record": result.record, "name": result.name, "isomer": result.isomer,
                       "smiles": result.smiles, **_choice_json(result.choice), "best": _best_json(result, query),
                       "conformers": _counts_json(result.selection)} for result in outcome.templates],
        "conformers_requested": outcome.conformers_requested,
        "prune_rms": outcome.prune_rms,
        "preparation": None if outcome.preparation is None else {
            **outcome.preparation.fields(), "removed": list(outcome.preparation.removed),
            "actions": sorted(outcome.preparation.actions), "warnings": list(outcome.preparation.warnings),
            "isomer": None if outcome.chosen is None else outcome.chosen.isomer,
            "capped": outcome.preparation.capped},
        "failure": None if outcome.chosen is not None else outcome.failure(),
    }


def _rounded_score(metric: str, score: float | None) -> float | None:
    return None if score is None else rounded(metric, score)


def _choice_json(choice: TemplateChoiceRecord | None) -> dict[str, Any]:
    if choice is None:
        return {}
    return {"similarity": None if choice.similarity is None else round(choice.similarity, 4),
            "core_atoms": choice.core_atoms, "core_smarts": choice.core_smarts, "pose_method": str(choice.method),
            "pin_fallback": str(choice.fallback), "pinned_atoms": choice.pinned_atoms, "pin_detail": choice.detail}


def _selection_json(choice: TemplateChoice) -> dict[str, Any]:
    return {"library": choice.library_size, "chosen": len(choice.chosen), "excluded_identical": choice.excluded,
            "mcs_searched": choice.searched, "mcs_timeouts": choice.mcs_timeouts, "seconds": round(choice.seconds, 4)}


def _runners_up(outcome: RunOutcome) -> list[TemplateSelection]:
    """The chosen isomer's other templates, best first by the metric (then record)."""
    if outcome.chosen is None:
        return []
    others = [r for r in outcome.of_isomer(outcome.chosen.isomer) if r.record != outcome.chosen.record]
    return sorted(others, key=lambda r: (-(r.best_score(outcome.metric) or -1.0), r.record))


def runner_up_text(outcome: RunOutcome) -> str:
    """The runner-up templates as a pose property: ``name score; ...``, best first, the first
    :data:`~templ_pipeline.core.template_poses.RUNNERS_UP` of them (as a campaign's rows)."""
    others = _runners_up(outcome)
    return template_poses.runner_up_text(((r.name, r.best_score(outcome.metric)) for r in others), len(others))


def print_summary(out: Console, outcome: RunOutcome) -> None:
    """The human summary: the best pose per metric, the counts, the template used, every reduction and fallback."""
    chosen = outcome.chosen or outcome.templates[0]
    table = Table(title="Best pose per metric", title_justify="left")
    for column in ("metric", "conformer", "shape", "color", "combo"):
        table.add_column(column, justify="right" if column != "metric" else "left")
    for metric in METRICS:
        mol, scores = chosen.selection.best[metric]
        conformer = str(mol.GetConformer().GetId()) if mol is not None else "-"
        table.add_row(metric, conformer, *(f"{scores[m]:.4f}" for m in METRICS))
    out.print(table)
    wrote = (f"wrote {outcome.written} pose(s) to {'standard output' if outcome.target.to_stdout else outcome.target}"
             if outcome.written else f"wrote nothing ({outcome.target} left as it was)")
    tally = _Tally.of(outcome, chosen)
    out.print(f"{tally.text()}; {wrote}", highlight=False, soft_wrap=True)
    if outcome.wall_seconds:
        out.print(f"time: {outcome.wall_seconds:.1f} s in all (embedding {outcome.embedding_seconds:.1f} s, "
                  f"scoring {outcome.scoring_seconds:.1f} s)", highlight=False, soft_wrap=True)
    made, templates = tally.made, outcome.of_isomer(chosen.isomer)
    if 0 < made < outcome.conformers_requested and outcome.prune_rms:
        out.print(f"conformers: {made} of {outcome.conformers_requested} kept after pruning at "
                  f"{outcome.prune_rms:g} A RMSD", highlight=False, soft_wrap=True)
    elif 0 < made < outcome.conformers_requested:
        out.print(f"fewer conformers than asked: ETKDG embedded {made} of {outcome.conformers_requested}",
                  style="yellow", highlight=False, soft_wrap=True)
    _print_preparation(out, outcome)
    if len(templates) > 1 and outcome.chosen is not None:
        runners_up = _runners_up(outcome)  # best first, as in --json and the pose
        others = template_poses.runner_up_text(
            ((f"record {r.record} {r.name}", r.best_score(outcome.metric)) for r in runners_up), len(runners_up), ", ")
        if len(runners_up) > template_poses.RUNNERS_UP:
            others += " (--json lists them all)"
        out.print(f"template: {outcome.chosen.name} (record {outcome.chosen.record}) scored best of the "
                  f"{len(templates)} scored, by {outcome.metric} "
                  f"({score_text(outcome.chosen.best_score(outcome.metric))}); others: {others}",
                  highlight=False, soft_wrap=True)
    elif outcome.chosen is not None:
        out.print(f"template: {outcome.chosen.name}", highlight=False, soft_wrap=True)
    if outcome.chosen is not None and outcome.chosen.choice is not None:
        out.print(_choice_text(outcome), highlight=False, soft_wrap=True)
    for line, event in _event_lines(_events(outcome)):
        # a warning when a limit or a failure made it; plain when the sizing chose fewer workers because the
        # work runs faster so (every run of a small query says it)
        chosen_for_speed = isinstance(event, WorkersReduced) and not event.reason.is_limit
        out.print(line, style="" if chosen_for_speed else "yellow", highlight=False, soft_wrap=True)


@dataclass(frozen=True, slots=True)
class _Tally:
    """The chosen molecule's conformers over every template it was scored against (one template: that call's)."""

    made: int  # conformers made (a free embedding scored against every template counts once)
    scored: int  # conformer scorings that succeeded, over the templates
    failed: int
    failed_by_reason: dict[str, int]
    templates: int
    workers_requested: int
    workers_granted: int  # the most any template's scoring had
    kinds: list[str]
    per_second: float

    @classmethod
    def of(cls, outcome: RunOutcome, chosen: TemplateSelection) -> _Tally:
        """``chosen``'s molecule (its isomer) over every template it was scored against."""
        reports = [result.selection.report for result in outcome.of_isomer(chosen.isomer)]
        made = outcome.conformers_made.get(chosen.isomer, chosen.selection.report.n_conformers)
        reasons: dict[str, int] = {}
        kinds: list[str] = []
        for report in reports:
            for reason, count in report.failed_by_reason.items():
                reasons[reason] = reasons.get(reason, 0) + count
            kinds.extend(str(kind) for kind in report.executor_kinds if str(kind) not in kinds)
        seconds = sum(r.duration_seconds for r in reports)
        return cls(made, sum(r.n_scored for r in reports),
                   sum(r.n_failed for r in reports), dict(sorted(reasons.items())), len(reports),
                   reports[0].workers_requested, max(r.workers_granted for r in reports), kinds,
                   sum(r.n_conformers for r in reports) / seconds if seconds > 0 else 0.0)

    def text(self) -> str:
        against = f" against {self.templates} templates" if self.templates > 1 else ""
        listed = ", ".join(f"{reason} {count}" for reason, count in self.failed_by_reason.items()) or "none"
        return (f"conformers {self.made}: scored {self.scored}{against}, failed {self.failed} ({listed}); "
                f"workers {self.workers_granted} of {self.workers_requested} requested, "
                f"executor {' -> '.join(self.kinds)}; scored {self.per_second:,.0f} conformers/s")

    def as_json(self) -> dict[str, Any]:
        return {"total": self.made, "scored": self.scored, "failed": self.failed,
                "failed_by_reason": self.failed_by_reason, "templates": self.templates}


def _event_lines(events: Sequence[Fallback | WorkersReduced]) -> list[tuple[str, Fallback | WorkersReduced]]:
    """One line per kind of reduction or fallback, with how often it came (once per template and isomer scored:
    the same decision for each, its detail differing only by the calls before it), the first one's detail."""
    # the first line and event, how many, whether all lines were alike
    lines: dict[tuple[str, ...], tuple[str, Fallback | WorkersReduced, int, bool]] = {}
    for event in events:
        if isinstance(event, WorkersReduced):
            key: tuple[str, ...] = ("workers", str(event.task_type), str(event.requested), str(event.granted),
                                    str(event.reason))
            line = f"{event.task_type} workers {event.requested} -> {event.granted}: {event.reason} ({event.detail})"
        else:
            key = ("fallback", str(event.from_kind), str(event.to_kind), str(event.reason), str(event.cause))
            line = f"fallback {event.from_kind} -> {event.to_kind}: {event.reason} (cause {event.cause})"
        first, event, count, alike = lines.get(key, (line, event, 0, True))
        lines[key] = (first, event, count + 1, alike and line == first)
    return [(first if count == 1 else f"{first} (x{count}{'' if alike else '; the first shown'})", event)
            for first, event, count, alike in lines.values()]


def _print_preparation(out: Console, outcome: RunOutcome) -> None:
    """What preparation did to the query, and each stereoisomer's best score when several were scored."""
    preparation = outcome.preparation
    if preparation is None:
        return
    if preparation.removed:
        out.print(f"preparation: removed {'.'.join(preparation.removed)}; scored the largest organic fragment",
                  highlight=False, soft_wrap=True)
    isomers = outcome.isomers
    if len(isomers) > 1:
        best = {isomer: max((r.best_score(outcome.metric) or -1.0 for r in outcome.of_isomer(isomer)), default=-1.0)
                for isomer in isomers}
        cap = f", cut at --max-isomers {len(isomers)} of {preparation.unassigned_stereo} possible" \
            if preparation.capped else ""
        listed = ", ".join(f"{isomer} {score_text(score if score >= 0 else None)}" for isomer, score in best.items())
        chosen = outcome.chosen
        out.print(f"stereo: {len(isomers)} stereoisomers scored{cap} (by {outcome.metric}: {listed})"
                  + (f"; the pose is isomer {chosen.isomer}: {chosen.smiles}" if chosen is not None else ""),
                  highlight=False, soft_wrap=True)


def _choice_text(outcome: RunOutcome) -> str:
    """``chosen from 770 templates: similarity 0.81, common core 24 atoms; pose pinned on 24 atoms``."""
    chosen = outcome.chosen
    assert chosen is not None and chosen.choice is not None
    choice = chosen.choice
    made = {"pinned": f"pose pinned on {choice.pinned_atoms} core atoms",
            "pinned_partial": f"pose pinned on {choice.pinned_atoms} of {choice.core_atoms} core atoms "
                              f"({choice.fallback}: {choice.detail})",
            "free": f"free conformers ({choice.fallback}{': ' + choice.detail if choice.detail else ''})",
            "input": "the input conformers"}[str(choice.method)]
    selection = outcome.choices.get(chosen.isomer)
    timeouts = f", {selection.mcs_timeouts} MCS searches out of time" if selection and selection.mcs_timeouts else ""
    if choice.similarity is None:
        return f"template choice: none (every template scored); {made}"
    return (f"template choice: {len(outcome.of_isomer(chosen.isomer))} of {outcome.library} by common core"
            f"{f' in {selection.seconds:.2f} s' if selection else ''}{timeouts}; this one: similarity "
            f"{choice.similarity:.2f}, core {choice.core_atoms} atoms; {made}")
