"""One query of a campaign, run where its worker is: read it, embed it on one thread, score it.

The steps are the ones ``templ select-best --query`` takes, through the same
functions: :func:`~templ_pipeline.core.preparation.prepare` turns the input into the
molecules to embed (the largest organic fragment, one molecule per stereoisomer),
:func:`~templ_pipeline.core.template_choice.choose_templates` picks each one's
templates from the library, :func:`~templ_pipeline.core.template_poses.template_conformers`
embeds it for each (the shared core pinned; ETKDG gives the same coordinates at any
thread count), and :func:`~templ_pipeline.core.batch.score_batch` scores them on
the same sanitized topology. So a query gives the same best pose and scores in
both commands, whichever worker, rung or worker count ran it.

Campaign workers import this module: RDKit, numpy and the scoring core, and
OpenTelemetry's API once a query carries a trace (for the worker spans); nothing of
the CLI or telemetry's SDK.
A query never raises out of :meth:`QueryRunner.run`: every failure is an outcome
with a bounded reason, and the detail for the log.
"""

from __future__ import annotations

import functools
import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from rdkit import Chem, rdBase

from templ_pipeline.campaign.poses import aligned_pose, pose_record
from templ_pipeline.core.batch import (
    BatchTask,
    ConformerFailure,
    ConformerScore,
    batch_query,
    sanitized_copy_without_conformers,
    score_batch,
)
from templ_pipeline.core.best_pose import best_conformer, best_pair
from templ_pipeline.core.embedding import DEFAULT_PRUNE_RMS, Embed, embed_on_this_thread
from templ_pipeline.core.labels import FailureReason, PoseMethod, PreparationAction, QueryFailureReason, QueryStatus
from templ_pipeline.core.pickled_by_fields import pickled_by_fields
from templ_pipeline.core.preparation import (
    Preparation,
    PreparationError,
    PreparationOptions,
    prepare,
    refuse_unscorable,
)
from templ_pipeline.core.stage_timings import ConformersTimed, ScoringTimed, StageTiming, TemplatesChoiceTimed
from templ_pipeline.core.template_choice import ChoiceOptions, choose_templates
from templ_pipeline.core.template_library import TemplateLibrary
from templ_pipeline.core.template_poses import (
    TemplateChoiceRecord,
    TemplatePoses,
    distinct_conformers,
    given_conformers,
    runner_up_text,
    template_conformers,
)
from templ_pipeline.core.trace_context import start_worker_span
from templ_pipeline.pose_records import isomer_name


@dataclass(frozen=True, slots=True)
class CampaignSettings:
    """What every query of a campaign shares; a worker receives it once, when it starts."""

    templates: tuple[bytes, ...]  # template molecules (mol_to_bytes: double-precision coordinates)
    template_names: tuple[str, ...]
    num_conformers: int
    seed: int
    metric: str
    use_input_conformers: bool = False
    preparation: PreparationOptions = PreparationOptions()
    query_threads: int = 0  # ETKDG threads per query on a Dask worker; 0: its machine's CPUs per task thread
    choice: ChoiceOptions = ChoiceOptions()  # how each query's templates are chosen from the library
    align: bool = True  # False: a pinned pose is scored where it was made, not aligned onto its template
    template_records: tuple[int, ...] = ()  # each template's 1-based record in the template file
    poses_per_query: int = 1  # distinct poses kept per prepared molecule and template (distinct_poses)
    prune_rms: float = DEFAULT_PRUNE_RMS  # A: ETKDG drops a conformer this close to an earlier one (0: off)

    def conformers_requested(self, molblocks: tuple[str, ...]) -> int:
        """Conformers a query asks for: its input records' with ``use_input_conformers``, else ``num_conformers``."""
        return len(molblocks) if self.use_input_conformers and molblocks else self.num_conformers


@pickled_by_fields
@dataclass(frozen=True, slots=True)
class QueryTask:
    """One query as the reader gave it (SMILES, or SDF record text), and its trace context."""

    index: int
    query_id: str
    smiles: str | None
    molblocks: tuple[str, ...] = ()
    carrier: dict[str, str] = field(default_factory=dict)


DISTINCT_RMSD = 0.5
"""Angstrom: a pose is distinct from the poses kept before it when its heavy-atom RMSD in place (same atom order,
no superposition: the poses share the template's frame) to each of them is above this."""


@pickled_by_fields
@dataclass(frozen=True, slots=True)
class AlternativePose:
    """A further distinct pose of a query against one template: its conformer, scores and SDF record."""

    conf_id: int
    shape: float
    color: float
    record: str

    @property
    def combo(self) -> float:
        return 0.5 * (self.shape + self.color)


def distinct_poses(ranked: list[ConformerScore], heavy: np.ndarray, count: int) -> list[ConformerScore]:
    """The first ``count`` of ``ranked`` (best first) each more than :data:`DISTINCT_RMSD` from those kept
    before it, over the ``heavy`` atom indexes."""
    kept: list[ConformerScore] = []
    for item in ranked:
        if len(kept) == count:
            break
        here = item.positions[heavy]
        if all(np.sqrt(((here - other.positions[heavy]) ** 2).sum(axis=1).mean()) > DISTINCT_RMSD
               for other in kept):
            kept.append(item)
    return kept


@pickled_by_fields
@dataclass(frozen=True, slots=True)
class TemplateResult:
    """The query against one template: how many conformers scored, and the best one (None if none)."""

    template: int
    scored: int
    failed: int
    conf_id: int | None = None
    shape: float | None = None
    color: float | None = None
    record: str = ""  # the best conformer aligned onto the template, as its SDF record (poses.pose_record)
    failure: str = ""  # the first conformer failure's detail, for the log
    failures_alike: bool = False  # every conformer failed, all with that one detail
    choice: TemplateChoiceRecord | None = None  # why this template, and how its conformers were made
    alternatives: tuple[AlternativePose, ...] = ()  # the next distinct poses (--poses-per-query), best first

    @property
    def combo(self) -> float | None:
        return None if self.shape is None or self.color is None else 0.5 * (self.shape + self.color)

    def value(self, metric: str) -> float:
        score = getattr(self, metric)
        return -1.0 if score is None else score


@pickled_by_fields
@dataclass(slots=True)
class IsomerOutcome:
    """One prepared molecule of a query (its only one, or one of its stereoisomers), embedded and scored."""

    index: int  # 1-based among the query's enumerated stereoisomers; 0 when none were enumerated
    smiles: str  # the prepared molecule, as embedded
    status: QueryStatus = QueryStatus.OK
    reason: QueryFailureReason | None = None
    detail: str = ""
    conformers: int = 0
    templates: list[TemplateResult] = field(default_factory=list)
    choice_seconds: float = 0.0  # choosing its templates (prefilter and MCS)
    mcs_timeouts: int = 0

    def best(self, metric: str) -> TemplateResult | None:
        """The template that scored this isomer best (the first one on a tie), None when none scored."""
        return best_pair((None if result.conf_id is None else result.value(metric), self.index, result.template,
                          result) for result in self.templates)


@pickled_by_fields
@dataclass(slots=True)
class QueryOutcome:
    """What one query produced: how it was prepared and each of its isomers; ``isomers`` is empty when it
    failed before embedding. ``status`` is ok when some isomer scored."""

    index: int
    status: QueryStatus
    reason: QueryFailureReason | None = None
    detail: str = ""
    smiles: str = ""  # as given (the input record's, for SDF input)
    isomers: list[IsomerOutcome] = field(default_factory=list)
    removed: str = ""  # the fragments preparation dropped, as dot-separated SMILES
    actions: tuple[str, ...] = ()  # what preparation did (PreparationAction values)
    stereoisomers_possible: int = 1
    isomer_count: int = 1  # molecules preparation made of the query (its stereoisomers, or itself)
    warnings: tuple[str, ...] = ()
    seconds: float = 0.0
    pid: int = 0
    stages: list[StageTiming] = field(default_factory=list)  # timed under the query's carrier, for its trace
    events: list[object] = field(default_factory=list)  # reductions and fallbacks where it ran, for the driver

    @property
    def conformers(self) -> int:
        """Conformers generated over all isomers."""
        return sum(isomer.conformers for isomer in self.isomers)

    @property
    def templates(self) -> list[TemplateResult]:
        """Every isomer's result against every template."""
        return [result for isomer in self.isomers for result in isomer.templates]

    def best(self, metric: str) -> TemplateResult | None:
        """The best result of the best isomer (the first one on a tie), None when none scored."""
        return self.best_isomer(metric)[1]

    def best_isomer(self, metric: str) -> tuple[IsomerOutcome | None, TemplateResult | None]:
        """The isomer that scored best and its best template result."""
        pair = best_pair((best.value(metric), isomer.index, best.template, (isomer, best))
                         for isomer in self.isomers if (best := isomer.best(metric)) is not None)
        return (None, None) if pair is None else pair


def failed(index: int, reason: QueryFailureReason, detail: str, **fields: object) -> QueryOutcome:
    """A failed outcome (also made by the parent: a timeout, a lost worker)."""
    return QueryOutcome(index, QueryStatus.FAILED, reason, detail, **fields)  # type: ignore[arg-type]


class QueryError(Exception):
    """A query that cannot go on: its reason and detail."""

    def __init__(self, reason: QueryFailureReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class QueryRunner:
    """Runs queries against a campaign's templates (prepared once per process).

    ``embed`` runs ETKDG (on this thread unless the caller gives more, as a Dask worker
    does) and ``threads`` says on how many, for the conformer span.
    """

    def __init__(self, settings: CampaignSettings) -> None:
        self.settings = settings
        self.embed: Embed = functools.partial(embed_on_this_thread, prune_rms=settings.prune_rms)
        self.threads: Callable[[], int] = lambda: 1
        self.library = TemplateLibrary([Chem.Mol(binary) for binary in settings.templates], settings.template_names,
                                       settings.template_records or None)
        self._keys = [hashlib.sha1(binary).hexdigest() for binary in settings.templates]

    def run(self, task: QueryTask) -> QueryOutcome:
        """The outcome of ``task``; never raises (an unexpected error is reason ``error``)."""
        started = time.perf_counter()
        outcome = QueryOutcome(task.index, QueryStatus.OK, pid=os.getpid(), smiles=task.smiles or "")
        try:
            self._run(task, outcome)
        except QueryError as error:
            outcome.status, outcome.reason, outcome.detail = QueryStatus.FAILED, error.reason, error.detail
        except Exception as error:  # one broken query must not end the worker
            outcome.status, outcome.reason = QueryStatus.FAILED, QueryFailureReason.ERROR
            outcome.detail = f"{type(error).__name__}: {error}"
        outcome.seconds = time.perf_counter() - started
        return outcome

    def _run(self, task: QueryTask, outcome: QueryOutcome) -> None:
        settings = self.settings
        mol = self._molecule(task, outcome)
        if settings.use_input_conformers and task.molblocks:
            self._refuse_unscorable(mol, outcome)
            outcome.isomers = [self._isomer(task, outcome, IsomerOutcome(0, outcome.smiles), mol, given=True)]
        else:
            preparation = self._prepare(mol, outcome)
            outcome.isomers = [self._isomer(task, outcome, IsomerOutcome(isomer.index, isomer.smiles), isomer.mol)
                               for isomer in preparation.isomers]
        if outcome.best(settings.metric) is None:
            first = outcome.isomers[0]
            raise QueryError(first.reason or QueryFailureReason.NO_CONFORMER_SCORED, first.detail)

    def _prepare(self, mol: Chem.Mol, outcome: QueryOutcome) -> Preparation:
        """The molecules to embed; a refused query is a ``QueryError`` with the refusal's reason."""
        try:
            preparation = prepare(mol, self.settings.preparation, input_smiles=outcome.smiles)
        except PreparationError as error:
            raise _refused(error, outcome) from None
        outcome.removed = ".".join(preparation.removed)
        outcome.actions = tuple(sorted(preparation.actions))
        outcome.stereoisomers_possible = preparation.unassigned_stereo
        outcome.isomer_count = len(preparation.isomers)
        outcome.warnings = preparation.warnings
        return preparation

    @staticmethod
    def _refuse_unscorable(mol: Chem.Mol, outcome: QueryOutcome) -> None:
        try:
            refuse_unscorable(mol)
        except PreparationError as error:
            raise _refused(error, outcome) from None

    def _isomer(self, task: QueryTask, outcome: QueryOutcome, isomer: IsomerOutcome, mol: Chem.Mol,
                given: bool = False) -> IsomerOutcome:
        """Choose its templates, embed (unless the conformers are ``given``) and score one prepared molecule."""
        settings = self.settings
        clock = start_worker_span(task.carrier, outcome.pid)
        choice = choose_templates(mol, self.library, settings.choice)
        isomer.choice_seconds, isomer.mcs_timeouts = choice.seconds, choice.mcs_timeouts
        if clock is not None:
            outcome.stages.append(TemplatesChoiceTimed(clock.finish(), isomer.index, len(self.library),
                                                       len(choice.chosen), choice.searched, choice.mcs_timeouts))
        clock = start_worker_span(task.carrier, outcome.pid)
        if given:
            posed = given_conformers(mol, choice)
        else:
            posed = template_conformers(mol, self.library, choice, settings.num_conformers, settings.seed,
                                        self.embed, settings.choice)
        isomer.conformers = distinct_conformers(posed)
        if clock is not None:
            outcome.stages.append(ConformersTimed(clock.finish(), isomer.index,
                                                  settings.conformers_requested(task.molblocks), isomer.conformers,
                                                  1 if given else self.threads()))
        if isomer.conformers == 0:
            isomer.status, isomer.reason = QueryStatus.FAILED, QueryFailureReason.EMBEDDING_FAILED
            isomer.detail = f"ETKDG embedded no conformer for {isomer.smiles or task.query_id!r}"
            return isomer
        clock = start_worker_span(task.carrier, outcome.pid)
        name = isomer_id(task.query_id, isomer.index)
        isomer.templates = self._score(posed, name, isomer.smiles, outcome, isomer,
                                       settings.conformers_requested(task.molblocks))
        if clock is not None:
            outcome.stages.append(ScoringTimed(clock.finish(), isomer.index, len(posed),
                                               sum(r.scored for r in isomer.templates),
                                               sum(r.failed for r in isomer.templates)))
        if isomer.best(settings.metric) is None:
            first = next((r.failure for r in isomer.templates if r.failure), "")
            isomer.status, isomer.reason = QueryStatus.FAILED, QueryFailureReason.NO_CONFORMER_SCORED
            alike = bool(first) and all(r.failures_alike and r.failure == first for r in isomer.templates)
            isomer.detail = (f"every one of {isomer.conformers} conformers failed: {first}" if alike else
                             f"none of {isomer.conformers} conformers could be scored"
                             + (f" (first failure: {first})" if first else ""))
        return isomer

    def _molecule(self, task: QueryTask, outcome: QueryOutcome) -> Chem.Mol:
        """The query molecule from its SMILES or SDF record(s); a ``QueryError`` when unreadable."""
        with rdBase.BlockLogs():
            if not task.molblocks:
                if not (task.smiles and task.smiles.strip()):  # a CSV row whose SMILES cell is blank
                    raise QueryError(QueryFailureReason.INVALID_SMILES, "no SMILES: the query's SMILES field is empty")
                mol = Chem.MolFromSmiles(task.smiles)
                if mol is None:
                    raise QueryError(QueryFailureReason.INVALID_SMILES, f"cannot parse SMILES {task.smiles!r}")
                return mol
            records = [Chem.MolFromMolBlock(block, removeHs=True) for block in task.molblocks]
        if records[0] is None:
            raise QueryError(QueryFailureReason.INVALID_RECORD, "the SDF record is not a readable molecule")
        outcome.smiles = Chem.MolToSmiles(records[0])
        if not self.settings.use_input_conformers:
            return records[0]
        from templ_pipeline.io import InputError, conformers_of_records

        try:
            return conformers_of_records(records, f"query {task.query_id}")
        except InputError as error:
            raise QueryError(QueryFailureReason.INVALID_RECORD, str(error)) from None

    def _score(self, posed: list[TemplatePoses], name: str, smiles: str,
               outcome: QueryOutcome, isomer: IsomerOutcome, requested: int) -> list[TemplateResult]:
        """Each template's best conformer by the campaign's metric (ties to the lowest conformer id), with its
        pose as the SDF record the campaign writes and why the template was chosen."""
        metric = self.settings.metric
        library = self.library
        found: list[tuple[TemplatePoses, list[ConformerScore], list[ConformerFailure]]] = []
        bases: dict[int, Chem.Mol | None] = {}  # one sanitized topology per conformer set (a free set serves all)
        for poses in posed:
            confs = poses.conformers.confs
            conf_ids = tuple(conformer.GetId() for conformer in confs.GetConformers())
            if id(confs) not in bases:
                bases[id(confs)] = sanitized_copy_without_conformers(confs) if conf_ids else None
            base = bases[id(confs)]
            if base is None:
                detail = "query molecule failed sanitization" if conf_ids else "no conformer embedded"
                found.append((poses, [], [ConformerFailure(cid, FailureReason.SANITIZATION_FAILED, detail)
                                          for cid in conf_ids]))
                continue
            align = self.settings.align or poses.conformers.method in (PoseMethod.FREE, PoseMethod.INPUT)
            batch = score_batch(BatchTask(poses.index, library.mols[poses.index], self._keys[poses.index],
                                          batch_query(base, confs, conf_ids), conf_ids, align=align))
            found.append((poses, batch.scored, batch.failed))
        tops = [best_conformer(scored, metric) for _, scored, _ in found]
        # every scored template once, best first (then library order): each row names the best few of the others
        by_score = sorted(((getattr(top, metric), found[number][0].index, number)
                           for number, top in enumerate(tops) if top is not None), key=lambda item: (-item[0], item[1]))
        results = []
        for position, ((poses, scored, failed_), top) in enumerate(zip(found, tops, strict=True)):
            failure = failed_[0].detail if failed_ else ""
            others = ((library.names[index], score) for score, index, number in by_score if number != position)
            record = poses.record(len(scored) + len(failed_), runner_up_text(others, len(by_score) - (top is not None)))
            if top is None:
                alike = bool(failed_) and all(item.detail == failure for item in failed_)
                results.append(TemplateResult(poses.index, 0, len(failed_), failure=failure, failures_alike=alike,
                                              choice=record))
                continue
            topology = Chem.Mol(poses.conformers.confs)
            topology.RemoveAllConformers()
            properties = {**preparation_properties(outcome, isomer, requested),
                          **record.properties(library.records[poses.index])}
            pose = pose_record(aligned_pose(topology, top.conf_id, top.positions), name=name, query_smiles=smiles,
                               template_name=library.names[poses.index], metric=metric, shape=top.shape,
                               color=top.color, combo=top.combo, conformer_id=top.conf_id, preparation=properties)
            alternatives: tuple[AlternativePose, ...] = ()
            if self.settings.poses_per_query > 1:
                heavy = np.array([atom.GetIdx() for atom in topology.GetAtoms() if atom.GetAtomicNum() > 1])
                ranked = sorted(scored, key=lambda item: (-getattr(item, metric), item.conf_id))
                alternatives = tuple(
                    AlternativePose(item.conf_id, item.shape, item.color, pose_record(
                        aligned_pose(topology, item.conf_id, item.positions), name=name, query_smiles=smiles,
                        template_name=library.names[poses.index], metric=metric, shape=item.shape,
                        color=item.color, combo=item.combo, conformer_id=item.conf_id, pose_rank=rank,
                        preparation=properties))
                    for rank, item in enumerate(distinct_poses(ranked, heavy, self.settings.poses_per_query)[1:],
                                                start=2))
            results.append(TemplateResult(poses.index, len(scored), len(failed_), top.conf_id, top.shape, top.color,
                                          pose, failure, choice=record, alternatives=alternatives))
        return results


def _refused(error: PreparationError, outcome: QueryOutcome) -> QueryError:
    """A query preparation refused (unsupported_element, too_small): recorded as its action, failed with its reason."""
    outcome.actions = (str(PreparationAction(error.reason.value)),)
    return QueryError(error.reason, str(error))


def isomer_id(query_id: str, isomer: int) -> str:
    """The id of one stereoisomer's row and pose: ``query_id#isomer`` (the query id itself when not enumerated)."""
    return isomer_name(query_id, isomer)


def preparation_properties(outcome: QueryOutcome, isomer: IsomerOutcome, requested: int) -> dict[str, str | int]:
    """What preparation did, as the pose's SD properties (the row has the same fields)."""
    return {"input_smiles": outcome.smiles, "isomer": isomer.index, "isomers": outcome.isomer_count,
            "removed": outcome.removed, "preparation": ",".join(outcome.actions) or "unchanged",
            "n_conformers_requested": requested, "n_conformers": isomer.conformers}


