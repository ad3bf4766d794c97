"""``templ screen``: check the input, open the campaign's files, run it with a progress display, summarise.

Unusable input as a whole (no template, an unreadable queries file, no query at
all, an output directory that holds another campaign) is an ``InputError`` before
anything is written. From then on, nothing a single query does stops the campaign:
each result is written (pose, then row) and flushed as it arrives, so an
interrupted or killed run leaves files that ``--resume`` completes. A run that
finishes the campaign ranks it from those files (hits.csv, hits.sdf).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn, TimeRemainingColumn
from rich.text import Text

from templ_pipeline import __version__
from templ_pipeline.campaign import spares
from templ_pipeline.campaign.hits import DEFAULT_TOP, HitList, write_hits
from templ_pipeline.campaign.outputs import (
    CAMPAIGN_FILE,
    HIT_POSES_FILE,
    HITS_FILE,
    CampaignFiles,
    CampaignInputs,
)
from templ_pipeline.campaign.queries import QueryRecord, count_queries, data_columns, read_queries
from templ_pipeline.campaign.report import CampaignTally, rows_and_poses, with_rmsd
from templ_pipeline.campaign.runner import ScreenOptions, screen, templates_digest
from templ_pipeline.cli.common import (
    EXIT_BAD_INPUT,
    EXIT_ERROR,
    PROGRESS,
    default_workers,
    fail,
    observed,
    print_json,
    start_progress,
    stderr,
    stdout,
    warn_left_out,
)
from templ_pipeline.cli.options import (
    AllowLargeTemplatesOption,
    ExactWorkersOption,
    ExcludeIdenticalOption,
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
    require_dask,
)
from templ_pipeline.cli.telemetry import with_telemetry
from templ_pipeline.core.conformers import DEFAULT_SEED
from templ_pipeline.core.embedding import DEFAULT_PRUNE_RMS
from templ_pipeline.core.events import ExecutorCreated, Fallback, WorkersReduced
from templ_pipeline.core.executor import ExecutorChoice
from templ_pipeline.core.preparation import (
    DEFAULT_MAX_ISOMERS,
    FragmentPolicy,
    PreparationOptions,
    StereoPolicy,
    TautomerPolicy,
)
from templ_pipeline.core.template_choice import DEFAULT_MCS_TIMEOUT, DEFAULT_TOP as DEFAULT_TOP_TEMPLATES, ChoiceOptions
from templ_pipeline.core.template_library import TemplateLibrary
from templ_pipeline.core.vocabulary import Metric
from templ_pipeline.io import InputError, read_template_library
from templ_pipeline.reference import ReferencePoses

if TYPE_CHECKING:
    from templ_pipeline.telemetry.session import TelemetrySession


@dataclass(frozen=True)
class ScreenRequest:
    """The command line of one ``templ screen`` run."""

    template: Path
    queries: Path
    output_dir: Path
    num_conformers: int
    seed: int
    workers: int
    metric: str
    resume: bool
    per_template: bool
    use_input_conformers: bool
    query_timeout: float | None
    smiles_column: str | None
    id_column: str | None
    exact_workers: bool
    preparation: PreparationOptions = PreparationOptions()
    executor: str = "auto"
    scheduler: str | None = None
    worker_timeout: float | None = None
    choice: ChoiceOptions = ChoiceOptions()
    align: bool = True
    reference: Path | None = None
    prune_rms: float = DEFAULT_PRUNE_RMS
    allow_large_templates: bool = False
    top: int | None = DEFAULT_TOP  # poses in hits.sdf; None: every ranked query's
    poses_per_query: int = 1  # distinct poses kept per prepared molecule (and template)


@dataclass
class PreparedCampaign:
    """Everything checked and opened: the template library, the query stream, the files, the total."""

    request: ScreenRequest
    library: TemplateLibrary
    records: Iterator[QueryRecord]
    files: CampaignFiles
    total: int | None
    options: ScreenOptions
    references: ReferencePoses | None = None


def parameters(request: ScreenRequest, library: TemplateLibrary) -> dict[str, Any]:
    """What decides a campaign's rows: a resumed run must have the same."""
    return {
        "templates_sha256": templates_digest(library),
        "templates": list(library.names),
        "template_choice": request.choice.as_dict(),
        "align_pinned_poses": request.align,
        "num_conformers": request.num_conformers,
        "seed": request.seed,
        "prune_rms": request.prune_rms,
        "metric": request.metric,
        "per_template": request.per_template,
        "use_input_conformers": request.use_input_conformers,
        "poses_per_query": request.poses_per_query,
        "preparation": request.preparation.as_dict(),
    }


def prepare(request: ScreenRequest) -> PreparedCampaign:
    """Read the templates, open the query stream and the campaign's files; ``InputError`` when unusable."""
    library = read_template_library(request.template, allow_large=request.allow_large_templates)
    references = ReferencePoses.read(request.reference) if request.reference is not None else None
    stream = read_queries(request.queries, smiles_column=request.smiles_column, id_column=request.id_column,
                          group_conformers=request.use_input_conformers)
    first = next(stream, None)
    if first is None:
        raise InputError(f"{request.queries}: no query records")
    resuming = request.resume and (request.output_dir / CAMPAIGN_FILE).exists()
    columns = () if resuming else data_columns(request.queries, smiles_column=request.smiles_column,
                                               id_column=request.id_column)  # a resume keeps the stored ones
    files = CampaignFiles.open(request.output_dir, parameters(request, library), resume=request.resume,
                               rows_per_query=rows_per_isomer(request, library) if request.per_template else 1,
                               inputs=CampaignInputs(request.template, request.queries, columns))
    total = count_queries(request.queries, smiles_column=request.smiles_column, id_column=request.id_column,
                          group_conformers=request.use_input_conformers)
    done = files.done
    records = (record for record in itertools.chain((first,), stream) if record.query_id not in done)
    options = ScreenOptions(num_conformers=request.num_conformers, seed=request.seed, workers=request.workers,
                            metric=request.metric, query_timeout=request.query_timeout,
                            use_input_conformers=request.use_input_conformers, exact_workers=request.exact_workers,
                            preparation=request.preparation, executor=request.executor,
                            scheduler=request.scheduler, worker_timeout=request.worker_timeout,
                            choice=request.choice, align=request.align, poses_per_query=request.poses_per_query,
                            prune_rms=request.prune_rms)
    left = None if total is None else max(0, total - len(done))
    return PreparedCampaign(request, library, records, files, left, options, references)


def rows_per_isomer(request: ScreenRequest, library: TemplateLibrary) -> int:
    """Rows of one prepared molecule with ``--per-template``: one per template scored."""
    top = request.choice.top
    return len(library) if top is None else min(top, len(library))


class QueryRate(ProgressColumn):
    """Queries per second so far, and failures."""

    def render(self, task: Task) -> Text:
        rate = task.completed / task.elapsed if task.elapsed else 0.0
        return Text(f"{rate:,.2f} queries/s, {task.fields.get('failed', 0)} failed", style="progress.data.speed")


@dataclass(frozen=True)
class CampaignSummary:
    """What one run of a campaign did, for the human summary and ``--json``."""

    request: ScreenRequest
    tally: CampaignTally
    seconds: float
    reductions: list[WorkersReduced]
    fallbacks: list[Fallback]
    hits: HitList | None = None


def run(prepared: PreparedCampaign, *, console: Console, out: Console, progress: Any,
        start_progress: Callable[[Progress], None],
        on_summary: Callable[[CampaignSummary], None] | None = None) -> CampaignTally:
    """Run the campaign, writing each result as it arrives; print the summary to ``out``, or hand it to
    ``on_summary`` instead (``--json``). ``progress`` is the CLI's :class:`RunProgress`, which says what
    was done when a signal stops the run."""
    request, files = prepared.request, prepared.files
    tally = CampaignTally(skipped=len(files.done), prune_rms=request.prune_rms)
    reductions: list[WorkersReduced] = []
    fallbacks: list[Fallback] = []

    def keep(event: object) -> None:
        if isinstance(event, WorkersReduced):
            reductions.append(event)
        elif isinstance(event, Fallback):
            fallbacks.append(event)
        if isinstance(event, (ExecutorCreated, Fallback)):  # the campaign knows where it runs: the pool took its
            spares.end()  # spares, and those left over (or all, on Dask or in this process) are not needed

    display = Progress(TextColumn("screening"), BarColumn(), MofNCompleteColumn(), QueryRate(),
                       TextColumn("ETA"), TimeRemainingColumn(), console=console, transient=True,
                       disable=not console.is_terminal)
    progress.stage = "screening"
    started = time.monotonic()
    progress.campaign = _stop_note(tally, request.output_dir)
    with files:
        start_progress(display)
        try:
            bar = display.add_task("screening", total=prepared.total, failed=0)
            for result in screen(prepared.records, prepared.library, prepared.options, total=prepared.total,
                                 skipped=tally.skipped, observers=(keep,)):
                rows, poses = rows_and_poses(result, prepared.library, request.metric, request.per_template,
                                             rows_per_isomer(request, prepared.library), request.prune_rms)
                if prepared.references is not None:
                    poses = with_rmsd(rows, poses, prepared.references)
                files.write(rows, poses, result.record.data)
                tally.add(result)
                display.update(bar, advance=1, failed=tally.failed)
                if not display.live.auto_refresh:
                    display.refresh()
                progress.campaign = _stop_note(tally, request.output_dir)
        finally:
            display.stop()
    hits = write_hits(request.output_dir, request.metric, request.top)
    summary = CampaignSummary(request, tally, time.monotonic() - started, reductions, fallbacks, hits)
    if on_summary is not None:
        on_summary(summary)
    else:
        _summary(out, summary)
    return tally


def _stop_note(tally: CampaignTally, directory: Path) -> str:
    """What an interrupted campaign did, for the line the CLI prints when a signal stops it."""
    return (f"screened {tally.done} queries in this run (ok {tally.ok}, failed {tally.failed}); queries in "
            f"flight were abandoned; {directory} holds every finished query: rerun with --resume to go on")


def summary_json(summary: CampaignSummary) -> dict[str, Any]:
    """The run's summary as one JSON-ready object (``templ screen --json``)."""
    tally, request = summary.tally, summary.request
    return {
        "templ_version": __version__,
        "metric": str(request.metric),
        "queries": {"done": tally.done, "ok": tally.ok, "failed": tally.failed, "skipped": tally.skipped,
                    "fewer_conformers": tally.fewer_conformers,
                    "failed_by_reason": dict(sorted(tally.failed_by_reason.items())),
                    "first_failure": dict(sorted(tally.first_failure.items()))},
        "preparation": {"options": request.preparation.as_dict(),
                        "queries_by_action": dict(sorted(tally.prepared.items())), "isomers_scored": tally.isomers},
        "seconds": round(summary.seconds, 3),
        "queries_per_second": round(tally.done / summary.seconds, 3) if summary.seconds > 0 else 0.0,
        "workers": request.workers,
        "executor_kinds": list(tally.kinds),
        "reductions": [{"task_type": str(event.task_type), "requested": event.requested,
                        "granted": event.granted, "reason": str(event.reason), "detail": event.detail}
                       for event in summary.reductions],
        "fallbacks": [{"from": str(event.from_kind), "to": str(event.to_kind), "reason": str(event.reason),
                       "cause": str(event.cause), "detail": event.detail} for event in summary.fallbacks],
        "output_dir": str(request.output_dir),
        "scores": str(request.output_dir / "scores.csv"),
        "poses": str(request.output_dir / "poses.sdf"),
        "hits": str(request.output_dir / HITS_FILE),
        "hit_poses": str(request.output_dir / HIT_POSES_FILE),
        "ranked": None if summary.hits is None else summary.hits.ranked,
    }


def _summary(out: Console, summary: CampaignSummary) -> None:
    tally, request, seconds = summary.tally, summary.request, summary.seconds
    reductions, fallbacks = summary.reductions, summary.fallbacks
    rate = tally.done / seconds if seconds > 0 else 0.0
    skipped = f"; {tally.skipped} already done (resumed)" if tally.skipped else ""
    fewer = f"; {tally.fewer_conformers} got fewer conformers than asked" if tally.fewer_conformers else ""
    out.print(
        f"screened {tally.done} queries in {seconds:.1f} s ({rate:,.2f}/s): ok {tally.ok}, failed {tally.failed} "
        f"({tally.failures()}){fewer}{skipped}; executor {' -> '.join(tally.kinds) or '-'}; "
        f"wrote {request.output_dir / 'scores.csv'} and {request.output_dir / 'poses.sdf'}",
        highlight=False, soft_wrap=True)
    if summary.hits is not None:
        hits = summary.hits
        unranked = f", {hits.unranked} without a pose after them" if hits.unranked else ""
        out.print(f"hits: {hits.ranked} queries ranked by {request.metric}{unranked} in "
                  f"{request.output_dir / HITS_FILE}; the best {hits.poses} poses in "
                  f"{request.output_dir / HIT_POSES_FILE}", highlight=False, soft_wrap=True)
    prepared = tally.preparation()
    if prepared:
        out.print(f"preparation: {prepared}", highlight=False, soft_wrap=True)
    for reason, detail in sorted(tally.first_failure.items()):
        out.print(f"{reason}: {detail}" + (" (and others)" if tally.failed_by_reason[reason] > 1 else ""),
                  style="yellow", highlight=False, soft_wrap=True)
    for reduction in reductions:
        out.print(f"workers {reduction.requested} -> {reduction.granted}: {reduction.reason} ({reduction.detail})",
                  style="yellow" if reduction.reason.is_limit else "", highlight=False, soft_wrap=True)
    for fallback in fallbacks:
        out.print(f"fallback {fallback.from_kind} -> {fallback.to_kind}: {fallback.reason} (cause {fallback.cause})",
                  style="yellow", highlight=False)


@with_telemetry
def screen_command(
    template: Annotated[Path, typer.Option(
        "--template", "-t", help="SDF with the template ligand's 3D pose; several records: each query is scored "
                                 "against each, and its row names the best.")],
    queries: Annotated[Path, typer.Option(
        "--queries", "-q", help="Query ligands: .smi (SMILES, whitespace, id), .csv/.tsv (smiles and id columns) "
                                "or .sdf (one record per query); any of them .gz.")],
    output_dir: Annotated[Path, typer.Option(
        "--output-dir", "-o", help="Directory for scores.csv, poses.sdf, hits.csv, hits.sdf and campaign.json "
                                   "(created; an existing non-empty one needs --resume).")],
    num_conformers: Annotated[int, typer.Option("--num-conformers", "-n", min=1, help="Conformers per query.")] = 200,
    seed: Annotated[int, typer.Option("--seed", help="Random seed for conformer generation.")] = DEFAULT_SEED,
    workers: WorkersOption = None,
    metric: MetricOption = Metric.COMBO,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue the campaign in --output-dir: skip the queries already in scores.csv.")] = False,
    per_template: Annotated[bool, typer.Option(
        "--per-template", help="One row and pose per query and template, instead of the best template's.")] = False,
    use_input_conformers: Annotated[bool, typer.Option(
        "--use-input-conformers", help="SDF queries: score the records' own coordinates (consecutive records "
                                       "with one name are one query's conformers) instead of generating "
                                       "conformers.")] = False,
    query_timeout: Annotated[float, typer.Option(
        "--query-timeout", min=0, help="Seconds one query may take before it is a timeout row (0: no limit).")] = 600.0,
    smiles_column: Annotated[str | None, typer.Option(
        "--smiles-column", help="CSV/TSV column holding the SMILES (default: smiles, canonical_smiles, ...).")] = None,
    id_column: Annotated[str | None, typer.Option(
        "--id-column",
        help="CSV/TSV column holding the query id (default: id, name, title, compound_id, ...).")] = None,
    top: Annotated[int, typer.Option(
        "--top", min=0, help="Poses of the best-ranked queries in hits.sdf (0: all).")] = 100,
    poses_per_query: Annotated[int, typer.Option(
        "--poses-per-query", min=1, help="Distinct poses kept per query molecule (heavy-atom RMSD over 0.5 A).")] = 1,
    executor: Annotated[ExecutorChoice, typer.Option(
        "--executor", help="auto or process: local worker processes (fewer when some cannot start, this process "
                           "when none can); dask: each query a task on a Dask cluster (without --scheduler or "
                           "DASK_SCHEDULER_ADDRESS a LocalCluster sized from headroom), going on locally when "
                           "the cluster is unreachable, lost or without workers.")] = ExecutorChoice.AUTO,
    scheduler: SchedulerOption = None,
    worker_timeout: WorkerTimeoutOption = None,
    exact_workers: ExactWorkersOption = False,
    json_output: JsonOption = False,
    fragments: FragmentsOption = FragmentPolicy.LARGEST,
    stereo: StereoOption = StereoPolicy.ENUMERATE,
    max_isomers: MaxIsomersOption = DEFAULT_MAX_ISOMERS,
    tautomer: TautomerOption = TautomerPolicy.AS_IS,
    top_templates: TopTemplatesOption = str(DEFAULT_TOP_TEMPLATES),
    mcs_timeout: McsTimeoutOption = DEFAULT_MCS_TIMEOUT,
    exclude_identical: ExcludeIdenticalOption = False,
    pin: PinOption = True,
    keep_pinned_pose: KeepPinnedPoseOption = False,
    reference: Annotated[Path | None, typer.Option(
        "--reference", help="SDF of known poses (matched by query id, or by being the same molecule): each row and "
                            "pose gets its heavy-atom RMSD in place (symmetry-aware, no superposition).")] = None,
    prune_rms: PruneRmsOption = DEFAULT_PRUNE_RMS,
    allow_large_templates: AllowLargeTemplatesOption = False,
    session: TelemetrySession | None = None,
) -> None:
    """Screen a library of query ligands against the template(s): one row and best pose per query (per
    stereoisomer, when its stereo is enumerated)."""
    check_dask_options(executor, scheduler, worker_timeout)
    if executor == ExecutorChoice.DASK:
        require_dask()
    try:
        request = ScreenRequest(
            template=template, queries=queries, output_dir=output_dir, num_conformers=num_conformers, seed=seed,
            workers=workers or default_workers(), metric=metric, resume=resume, per_template=per_template,
            use_input_conformers=use_input_conformers, query_timeout=query_timeout or None,
            smiles_column=smiles_column, id_column=id_column, exact_workers=exact_workers,
            preparation=PreparationOptions(fragments, stereo, max_isomers, tautomer),
            executor=str(executor), scheduler=scheduler, worker_timeout=worker_timeout,
            choice=choice_options(top_templates, mcs_timeout, exclude_identical, pin), align=not keep_pinned_pose,
            reference=reference, top=top or None, poses_per_query=poses_per_query, prune_rms=prune_rms,
            allow_large_templates=allow_large_templates)
        prepared = prepare(request)
        warn_left_out(template, prepared.library)
        with observed(session):
            tally = run(prepared, console=stderr, out=stdout, progress=PROGRESS, start_progress=start_progress,
                        on_summary=(lambda summary: print_json(summary_json(summary))) if json_output else None)
            if tally.done and not tally.ok:  # inside the session: the run is recorded (and pushed) as failed
                raise fail(f"no query could be scored: {tally.failure_summary()}", EXIT_ERROR)
    except InputError as exc:
        raise fail(str(exc), EXIT_BAD_INPUT) from None
