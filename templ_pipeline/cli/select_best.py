"""``templ select-best``: pose one query ligand on its templates and write the best pose(s).

The workflow, shared with ``templ demo``: prepare the query (each stereoisomer a
candidate), choose its templates, embed conformers for each, score them against each
template with a progress bar, write the best pair's pose(s) and summarise.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rdkit import Chem
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn, TimeElapsedColumn
from rich.text import Text

from templ_pipeline.cli.common import (
    EXIT_BAD_INPUT,
    EXIT_ERROR,
    PROGRESS,
    Reporting,
    default_workers,
    fail,
    observed,
    print_json,
    read_library,
    stage,
    start_progress,
    stderr,
    wrote,
)
from templ_pipeline.cli.options import (
    AllowLargeTemplatesOption,
    ExactWorkersOption,
    ExcludeIdenticalOption,
    ExecutorOption,
    FragmentsOption,
    JsonOption,
    KeepPinnedPoseOption,
    MaxIsomersOption,
    McsTimeoutOption,
    MetricOption,
    PinOption,
    PruneRmsOption,
    SchedulerOption,
    StereoOption,
    TautomerOption,
    TopTemplatesOption,
    WorkersOption,
    WorkerTimeoutOption,
    check_dask_options,
    choice_options,
    pose_target,
)
from templ_pipeline.cli.progress import embedding_progress
from templ_pipeline.cli.telemetry import with_telemetry
from templ_pipeline.core.batch import BatchResult
from templ_pipeline.core.conformers import granted_embedding, molecule_from_smiles
from templ_pipeline.core.embedding import DEFAULT_PRUNE_RMS
from templ_pipeline.core.events import (
    ConformersFinished,
    ConformersStarted,
    Emitter,
    Fallback,
    PoseMethod,
    PreparationAction,
    QueryPrepared,
    TemplatesChoiceDone,
    TemplatesChoosing,
    TemplatesChosen,
    WorkersReduced,
    process_observers,
    reported,
)
from templ_pipeline.core.executor import ExecutorChoice
from templ_pipeline.core.preparation import (
    DEFAULT_MAX_ISOMERS,
    FragmentPolicy,
    Preparation,
    PreparationError,
    PreparationOptions,
    StereoPolicy,
    TautomerPolicy,
    prepare,
    refuse_unscorable,
)
from templ_pipeline.core.scoring import ScoringPart, Selection, part_groups, select_best_each
from templ_pipeline.core.template_choice import (
    DEFAULT_MCS_TIMEOUT,
    DEFAULT_TOP,
    ChoiceOptions,
    TemplateChoice,
    choose_templates,
)
from templ_pipeline.core.template_library import TemplateLibrary
from templ_pipeline.core.template_poses import distinct_conformers, given_conformers, template_conformers
from templ_pipeline.core.vocabulary import Metric
from templ_pipeline.io import InputError, read_conformers
from templ_pipeline.pose_output import PoseTarget
from templ_pipeline.selection_summary import (
    Candidate,
    Hydrogens,
    QueryIdentity,
    RunOutcome,
    TemplateSelection,
    best_template,
    pose_records,
    print_summary,
    runner_up_text,
    summary_json,
)

if TYPE_CHECKING:
    from templ_pipeline.telemetry.session import TelemetrySession


CONFORMER_EVENTS: list[Fallback | WorkersReduced] = []  # the conformer threads' fallbacks and reductions


class ConformerRate(ProgressColumn):
    """Conformers per second so far."""

    def render(self, task: Task) -> Text:
        rate = task.fields.get("conformers", 0) / task.elapsed if task.elapsed else 0.0
        return Text(f"{rate:,.0f} conformers/s", style="progress.data.speed")


def _run_selection(
    parts: list[ScoringPart], workers: int, metric: str, executor: str, scheduler: str | None,
    exact_workers: bool = False, label: str = "scoring", worker_timeout: float | None = None,
) -> list[Selection]:
    """Score the parts, one call per group of them (:func:`part_groups`: one call for a query's chosen templates),
    with one progress bar over their batches (on stderr, only on a terminal)."""
    total = sum(part.confs.GetNumConformers() for part in parts)
    progress = Progress(
        TextColumn(label), BarColumn(), MofNCompleteColumn(), ConformerRate(), TimeElapsedColumn(),
        console=stderr, transient=True, disable=not stderr.is_terminal,
    )
    stage("scoring", total)
    start_progress(progress)
    try:
        task = progress.add_task("scoring", total=total, conformers=0)

        def advance(result: BatchResult) -> None:
            done = len(result.scored) + len(result.failed)
            PROGRESS.conformers_done += done
            progress.update(task, advance=done, conformers=PROGRESS.conformers_done)
            if not progress.live.auto_refresh:
                progress.refresh()

        return [selection for group in part_groups(parts)
                for selection in select_best_each(group, n_workers=workers, align_metric=metric, on_batch=advance,
                                                  executor=executor, scheduler=scheduler, exact_workers=exact_workers,
                                                  worker_timeout=worker_timeout)]
    finally:
        progress.stop()


def select_and_write(
    candidates: list[Candidate], library: TemplateLibrary, query: QueryIdentity, target: PoseTarget,
    reporting: Reporting, *, workers: int, metric: str, all_ranked: bool = False, executor: str = "auto",
    scheduler: str | None = None, worker_timeout: float | None = None, exact_workers: bool = False,
    preparation: Preparation | None = None, conformers_requested: int = 0, align: bool = True,
    prune_rms: float = DEFAULT_PRUNE_RMS,
) -> None:
    """Score each prepared molecule against each template chosen for it, write the best pair's pose(s) when any
    conformer scored, summarise."""
    # every (molecule, template) pair with conformers, scored together: telemetry per query, not per template
    pairs = [(candidate, poses) for candidate in candidates for poses in candidate.posed
             if poses.conformers.confs.GetNumConformers() > 0]
    if not pairs:
        raise fail("no conformer could be embedded for the query", EXIT_ERROR)
    templates = len({poses.index for _, poses in pairs})
    label = "scoring" if templates == 1 else f"scoring vs {templates} templates"
    if len(candidates) > 1:
        label = f"{label}, {len(candidates)} isomers"
    parts = [ScoringPart(poses.conformers.confs, library.mols[poses.index],
                         align or poses.conformers.method in (PoseMethod.FREE, PoseMethod.INPUT))
             for _, poses in pairs]
    selections = _run_selection(parts, workers, metric, executor, scheduler, exact_workers, label, worker_timeout)
    results = [TemplateSelection(library.records[poses.index], library.names[poses.index], selection,
                                 candidate.isomer, candidate.smiles, poses.record(selection.report.n_conformers))
               for (candidate, poses), selection in zip(pairs, selections, strict=True)]
    outcome = RunOutcome(results, metric, target, best_template(results, metric),
                         conformer_events=list(CONFORMER_EVENTS), preparation=preparation,
                         conformers_requested=conformers_requested, prune_rms=prune_rms, library=len(library),
                         choices={c.isomer: c.choice for c in candidates},
                         conformers_made={c.isomer: c.conformers for c in candidates},
                         embedding_seconds=sum(c.embedding_seconds for c in candidates))
    if outcome.chosen is not None and outcome.chosen.choice is not None:
        outcome.chosen = dataclasses.replace(outcome.chosen, choice=dataclasses.replace(
            outcome.chosen.choice, runner_up=runner_up_text(outcome)))
        _observe_choice(query, outcome)
    if outcome.chosen is not None:  # a failed run writes nothing: an earlier good file stays as it was
        stage("writing the poses")
        outcome.written = target.write(pose_records(outcome.chosen, query, metric, all_ranked, preparation,
                                                    conformers_requested))
        wrote(str(target.path) if target.path is not None else "the poses on standard output")
    outcome.wall_seconds = time.monotonic() - PROGRESS.started if PROGRESS.started else 0.0
    if reporting.json_output:
        print_json(summary_json(outcome, query))
    else:
        print_summary(reporting.console, outcome)
    if outcome.chosen is None:
        raise fail(f"no conformer could be scored: {outcome.failure()}", EXIT_ERROR)


def _observe_choice(query: QueryIdentity, outcome: RunOutcome) -> None:
    """``TemplatesChosen`` for the kept pose, to the process's observers (telemetry's), once per run."""
    observe = Emitter(process_observers())
    chosen = outcome.chosen
    assert chosen is not None and chosen.choice is not None
    choice = chosen.choice
    selections = outcome.choices.values()
    observe(TemplatesChosen(query.name, outcome.library, len(outcome.of_isomer(chosen.isomer)), chosen.name,
                            choice.similarity, choice.core_atoms, choice.core_smarts, choice.method, choice.fallback,
                            choice.pinned_atoms, sum(s.mcs_timeouts for s in selections),
                            sum(s.seconds for s in selections)))


def parse_query(smiles: str) -> Chem.Mol:
    """The molecule of a ``--query`` SMILES; an unparsable one is bad input."""
    try:
        return molecule_from_smiles(smiles)
    except ValueError as exc:
        raise InputError(f"--query: {exc}") from None


@with_telemetry
def select_best_command(
    template: Annotated[Path, typer.Option(
        "--template", "-t", help="SDF (or .sdf.gz) with the template ligand's 3D pose; several records: the query "
                                 "is scored against each and the best template's pose is written.")],
    output: Annotated[Path, typer.Option(
        "--output", "-o", help="Where the chosen pose(s) go: FILE.sdf, FILE.sdf.gz (gzip), or - for stdout.")],
    query: Annotated[str | None, typer.Option("--query", "-q", help="Query ligand as SMILES.")] = None,
    conformers: Annotated[Path | None, typer.Option(
        "--conformers", "-c", help="SDF (or .sdf.gz): one record per conformer of one molecule; each pose keeps "
                                   "its record's name and properties.")] = None,
    name: Annotated[str | None, typer.Option(
        "--name", help="Record name of the poses of a --query (default: the SMILES).")] = None,
    num_conformers: Annotated[int, typer.Option("--num-conformers", "-n", min=1, help="Conformers for --query.")] = 200,
    workers: WorkersOption = None,
    metric: MetricOption = Metric.COMBO,
    all_ranked: Annotated[bool, typer.Option("--all-ranked", help="Write every pose, best first.")] = False,
    hydrogens: Annotated[Hydrogens, typer.Option(
        "--hydrogens", help="Hydrogens of the written poses: input (those the input had: a --conformers "
                            "record's explicit ones; none for a SMILES), strip (heavy atoms only), or add "
                            "(all explicit, the missing ones placed from the heavy atoms).")] = Hydrogens.INPUT,
    seed: Annotated[int, typer.Option("--seed", help="Random seed for conformer generation.")] = 42,
    executor: ExecutorOption = ExecutorChoice.AUTO,
    scheduler: SchedulerOption = None,
    worker_timeout: WorkerTimeoutOption = None,
    exact_workers: ExactWorkersOption = False,
    json_output: JsonOption = False,
    fragments: FragmentsOption = FragmentPolicy.LARGEST,
    stereo: StereoOption = StereoPolicy.ENUMERATE,
    max_isomers: MaxIsomersOption = DEFAULT_MAX_ISOMERS,
    tautomer: TautomerOption = TautomerPolicy.AS_IS,
    top_templates: TopTemplatesOption = str(DEFAULT_TOP),
    mcs_timeout: McsTimeoutOption = DEFAULT_MCS_TIMEOUT,
    exclude_identical: ExcludeIdenticalOption = False,
    pin: PinOption = True,
    keep_pinned_pose: KeepPinnedPoseOption = False,
    prune_rms: PruneRmsOption = DEFAULT_PRUNE_RMS,
    allow_large_templates: AllowLargeTemplatesOption = False,
    session: TelemetrySession | None = None,
) -> None:
    """Pose a query ligand on its templates: choose them from the library, embed conformers pinned on the shared
    core, score them by shape and colour, and write the best pose(s)."""
    if (query is None) == (conformers is None):
        raise typer.BadParameter("give exactly one of --query SMILES or --conformers FILE", param_hint="'--query'")
    check_dask_options(executor, scheduler, worker_timeout)
    if name is not None and query is None:
        raise typer.BadParameter("--name names a --query; --conformers poses keep their records' names",
                                 param_hint="'--name'")
    workers = workers or default_workers()
    try:
        target = pose_target(output, json_output)
        choice = choice_options(top_templates, mcs_timeout, exclude_identical, pin)
        library = read_library(template, allow_large_templates)
        confs = read_conformers(conformers) if conformers is not None else None
        query_mol = parse_query(query) if query is not None else None
        if confs is not None:
            _check_scorable(confs, f"--conformers {conformers}")
        preparation = (prepare_query(query_mol, query, PreparationOptions(fragments, stereo, max_isomers, tautomer))
                       if query_mol is not None and query is not None else None)
        identity = _identity(confs, query, query_mol, name, hydrogens)
        with observed(session):
            if preparation is not None:
                candidates = prepared_candidates(preparation, identity, library, choice, num_conformers, seed,
                                                 workers, exact_workers, prune_rms=prune_rms)
            else:
                assert confs is not None
                candidates = [_candidate(0, identity.smiles, confs, library, choice, 0, seed, workers,
                                         exact_workers, given=confs)]
            select_and_write(candidates, library, identity, target, Reporting.of(target, json_output),
                             workers=workers, metric=metric, all_ranked=all_ranked, executor=executor,
                             scheduler=scheduler, worker_timeout=worker_timeout, exact_workers=exact_workers,
                             preparation=preparation,
                             conformers_requested=num_conformers if confs is None else confs.GetNumConformers(),
                             align=not keep_pinned_pose,
                             prune_rms=prune_rms if preparation is not None else DEFAULT_PRUNE_RMS)
    except InputError as exc:
        raise fail(str(exc), EXIT_BAD_INPUT) from None


def prepare_query(mol: Chem.Mol, query: str, options: PreparationOptions) -> Preparation:
    """The prepared query; a query that cannot be scored at all is bad input (exit 2, one line)."""
    try:
        return prepare(mol, options, input_smiles=query)
    except PreparationError as exc:
        raise InputError(f"--query {query}: {exc.reason}: {exc}") from None


def _check_scorable(mol: Chem.Mol, what: str) -> None:
    """Bad input when ``mol`` cannot be scored at all (``what`` names it)."""
    try:
        refuse_unscorable(mol)
    except PreparationError as exc:
        raise InputError(f"{what}: {exc.reason}: {exc}") from None


def prepared_candidates(preparation: Preparation, identity: QueryIdentity, library: TemplateLibrary,
                        choice: ChoiceOptions, num_conformers: int, seed: int, workers: int,
                        exact_workers: bool, *, prune_rms: float = DEFAULT_PRUNE_RMS) -> list[Candidate]:
    """Each prepared molecule (the query, or each stereoisomer) with its templates chosen and its conformers for
    each; ``QueryPrepared`` (to the process's observers) says what preparation did."""
    observe = Emitter(process_observers())
    for warning in preparation.warnings:
        stderr.print(f"warning: {warning}", style="yellow", highlight=False, soft_wrap=True)
    candidates = [_candidate(isomer.index, isomer.smiles, isomer.mol, library, choice, num_conformers, seed, workers,
                             exact_workers, prune_rms=prune_rms)
                  for isomer in preparation.isomers]
    observe(QueryPrepared(identity.name, preparation.input_smiles, tuple(c.smiles for c in candidates),
                          preparation.unassigned_stereo, ".".join(preparation.removed),
                          tuple(PreparationAction(a) for a in sorted(preparation.actions)),
                          num_conformers * len(candidates), sum(c.conformers for c in candidates),
                          "; ".join(preparation.warnings)))
    return candidates


def _candidate(isomer: int, smiles: str, mol: Chem.Mol, library: TemplateLibrary, options: ChoiceOptions,
               num_conformers: int, seed: int, workers: int, exact_workers: bool,
               given: Chem.Mol | None = None, *, prune_rms: float = DEFAULT_PRUNE_RMS) -> Candidate:
    """One prepared molecule: its templates chosen (a ``templates.choose`` span), then its conformers for each
    (pinned on each template's core, with their progress on a terminal, or ``given``); the process's
    observers hear each stage's start and end."""
    emit = Emitter(process_observers())
    stage("choosing templates")
    chosen: TemplateChoice | None = None
    with reported(emit, TemplatesChoosing(len(library)),
                  lambda error: TemplatesChoiceDone(0, 0, 0, error) if chosen is None
                  else TemplatesChoiceDone(len(chosen.chosen), chosen.searched, chosen.mcs_timeouts)):
        chosen = choice = choose_templates(mol, library, options)
    if given is not None:
        return Candidate(isomer, smiles, choice, tuple(given_conformers(given, choice)))
    stage(f"generating {num_conformers} conformers")

    def keep(event: object) -> None:
        shown(event)  # the embedding's progress, bound by the with-statement below before any event comes
        if isinstance(event, (Fallback, WorkersReduced)):
            CONFORMER_EVENTS.append(event)

    label = f"isomer {isomer}: embedding" if isomer else "embedding"
    started, generated, threads_used = time.perf_counter(), 0, workers
    with reported(emit, ConformersStarted(num_conformers, workers),
                  lambda error: ConformersFinished(num_conformers, workers, generated, threads_used,
                                                   time.perf_counter() - started, error)), \
            embedding_progress(stderr, label, num_conformers, start_progress) as shown, \
            granted_embedding(workers, observers=(keep,), exact_workers=exact_workers,
                              prune_rms=prune_rms) as (run, threads):
        posed = template_conformers(mol, library, choice, num_conformers, seed, run, options)
        generated, threads_used = distinct_conformers(posed), threads.count
    return Candidate(isomer, smiles, choice, tuple(posed), embedding_seconds=shown.seconds)


def _identity(confs: Chem.Mol | None, query: str | None, query_mol: Chem.Mol | None, name: str | None,
              hydrogens: Hydrogens) -> QueryIdentity:
    """Who the query is: a --conformers file's molecule (its records name the poses) or a --query's SMILES."""
    if confs is not None:
        smiles = Chem.MolToSmiles(Chem.RemoveHs(confs, sanitize=False))
        return QueryIdentity(name=smiles, smiles=smiles, hydrogens=hydrogens)
    assert query is not None and query_mol is not None
    return QueryIdentity(name=name or query, smiles=Chem.MolToSmiles(query_mol), hydrogens=hydrogens)


