"""The ``templ`` command line: pose selection, screening, the bundled demo, ``doctor`` and ``dashboards``.

Exit codes: 0 done, 2 bad input (one line naming the file or argument), 1 a failed run,
130/143 stopped by SIGINT/SIGTERM. Standard output carries only results (tables, the
SDF of ``-o -``, the JSON of ``--json``); progress, warnings and logs go to stderr.
"""

from __future__ import annotations

if __name__ == "__main__":  # ``python -m templ_pipeline.cli``; the ``templ`` script does this in entry.py
    from templ_pipeline.interrupts import exit_while_starting

    exit_while_starting()  # Ctrl-C during the imports below: one line, exit 130, no traceback

from templ_pipeline.parent_threads import limit_parent_pools  # noqa: E402

limit_parent_pools()  # before numpy is imported (by RDKit below): see templ_pipeline.parent_threads

import dataclasses  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Annotated, Any  # noqa: E402

import typer  # noqa: E402
from rdkit import Chem  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import (  # noqa: E402
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text  # noqa: E402

from templ_pipeline import __version__  # noqa: E402
from templ_pipeline.telemetry.logs import get_logger, get_run_id  # noqa: E402
from templ_pipeline.telemetry.session import TelemetrySession, TelemetrySetupError  # noqa: E402
from templ_pipeline.core import native_call  # noqa: E402
from templ_pipeline.core.batch import BatchResult  # noqa: E402
from templ_pipeline.core.conformers import DEFAULT_SEED, granted_embedding, molecule_from_smiles  # noqa: E402
from templ_pipeline.core.embedding import DEFAULT_PRUNE_RMS  # noqa: E402
from templ_pipeline.core.events import (  # noqa: E402
    Fallback,
    PoseMethod,
    PreparationAction,
    QueryPrepared,
    TemplatesChosen,
    WorkersReduced,
)
from templ_pipeline.core.template_choice import (  # noqa: E402
    DEFAULT_MCS_TIMEOUT,
    DEFAULT_PREFILTER,
    DEFAULT_TOP,
    ChoiceOptions,
    choose_templates,
)
from templ_pipeline.core.template_library import (  # noqa: E402
    MAX_TEMPLATE_HEAVY_ATOMS,
    RECEPTOR_RESIDUES,
    TemplateLibrary,
)
from templ_pipeline.core.template_poses import (  # noqa: E402
    distinct_conformers,
    given_conformers,
    template_conformers,
)
from templ_pipeline.core.executor import ExecutorChoice, shutdown_dask, shutdown_pools, validate_executor  # noqa: E402
from templ_pipeline.core.preparation import (  # noqa: E402
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
from templ_pipeline.core.scoring import Metric, Selection, select_best_with_report  # noqa: E402
from templ_pipeline.cli_dashboards import app as dashboards_app  # noqa: E402
from templ_pipeline.cli_help import TemplTyper  # noqa: E402
from templ_pipeline.cli_progress import embedding_progress  # noqa: E402
from templ_pipeline.cli_telemetry import with_telemetry  # noqa: E402
from templ_pipeline.interrupts import Interrupted, signals_raise  # noqa: E402
from templ_pipeline.io import (  # noqa: E402
    ExampleName,
    InputError,
    examples,
    read_conformers,
    read_template_library,
)
from templ_pipeline.pose_output import PoseTarget  # noqa: E402
from templ_pipeline.stdout_pipe import StdoutPipe, silence_stdout  # noqa: E402
from templ_pipeline.selection_summary import (  # noqa: E402
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

EXIT_OK, EXIT_ERROR, EXIT_BAD_INPUT = 0, 1, 2

app = TemplTyper(
    name="templ",
    help="Template-based pose selection: score ligand conformers against a template ligand.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion; completion offers the enums' values
    pretty_exceptions_enable=False,
)
PROG_NAME = "templ"  # also when run as ``python -m templ_pipeline.cli``: usage lines, and _TEMPL_COMPLETE
stdout = Console()
stderr = Console(stderr=True)
_log = get_logger("templ.cli")


class ConformerRate(ProgressColumn):
    """Conformers per second so far."""

    def render(self, task) -> Text:  # type: ignore[override]
        rate = task.fields.get("conformers", 0) / task.elapsed if task.elapsed else 0.0
        return Text(f"{rate:,.0f} conformers/s", style="progress.data.speed")


@dataclass
class RunProgress:
    """What the running command has done so far, for the line printed when a signal stops it."""

    stage: str = "starting"
    conformers_total: int = 0
    conformers_done: int = 0
    started: float = 0.0
    campaign: str = ""  # set while a campaign runs: what it has done and where its files are

    def describe(self) -> str:
        """What was done, and what was written, for the line printed when a signal stops the run."""
        elapsed = time.monotonic() - self.started if self.started else 0.0
        if self.campaign:
            return f"{self.campaign} in {elapsed:.1f} s"
        if self.stage == "scoring":
            done = f"scored {self.conformers_done} of {self.conformers_total} conformers"
        else:
            done = f"stopped while {self.stage}"
        return f"{done} in {elapsed:.1f} s; no output written"


PROGRESS = RunProgress()
CONFORMER_EVENTS: list[Fallback | WorkersReduced] = []  # the conformer threads' fallbacks and reductions


def _stage(stage: str, total: int = 0) -> None:
    PROGRESS.stage, PROGRESS.conformers_total, PROGRESS.conformers_done = stage, total, 0


def _fail(message: str, code: int) -> typer.Exit:
    stderr.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def _default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def _start_progress(progress: Progress) -> None:
    """Start the display; without a thread for its refresh it is redrawn after each batch instead.

    rich refreshes from a thread of its own. Where the user's other processes have
    used up the thread budget (a login node) that thread cannot start, and a run
    that itself needs no thread must not die of it.
    """
    try:
        progress.start()
    except RuntimeError as error:
        if "can't start new thread" not in str(error):
            raise
        progress.live.auto_refresh = False  # the display is up; only its refresh thread is missing
        stderr.print(f"warning: no thread for the progress display ({error}); it is redrawn after each batch",
                     style="yellow", highlight=False)


def _run_selection(
    confs: Chem.Mol, template: Chem.Mol, workers: int, metric: str, executor: str, scheduler: str | None,
    exact_workers: bool = False, label: str = "scoring", worker_timeout: float | None = None, align: bool = True,
) -> Selection:
    """Score with a progress bar over batches (on stderr, only on a terminal)."""
    progress = Progress(
        TextColumn(label), BarColumn(), MofNCompleteColumn(), ConformerRate(), TimeElapsedColumn(),
        console=stderr, transient=True, disable=not stderr.is_terminal,
    )
    _stage("scoring", confs.GetNumConformers())
    _start_progress(progress)
    try:
        task = progress.add_task("scoring", total=confs.GetNumConformers(), conformers=0)

        def advance(result: BatchResult) -> None:
            done = len(result.scored) + len(result.failed)
            PROGRESS.conformers_done += done
            progress.update(task, advance=done, conformers=PROGRESS.conformers_done)
            if not progress.live.auto_refresh:
                progress.refresh()

        return select_best_with_report(confs, template, n_workers=workers, align_metric=metric, on_batch=advance,
                                       executor=executor, scheduler=scheduler, exact_workers=exact_workers,
                                       worker_timeout=worker_timeout, align=align)
    finally:
        progress.stop()


@dataclass(frozen=True)
class Reporting:
    """Where a run's summary goes: the human one to ``console`` (stderr when the SDF takes stdout), or JSON."""

    console: Console
    json_output: bool = False

    @classmethod
    def of(cls, target: PoseTarget, json_output: bool) -> Reporting:
        return cls(stderr if target.to_stdout else stdout, json_output)


def _select_and_write(
    candidates: list[Candidate], library: TemplateLibrary, query: QueryIdentity, target: PoseTarget,
    reporting: Reporting, *, workers: int, metric: str, all_ranked: bool = False, executor: str = "auto",
    scheduler: str | None = None, worker_timeout: float | None = None, exact_workers: bool = False,
    preparation: Preparation | None = None, conformers_requested: int = 0, align: bool = True,
    prune_rms: float = DEFAULT_PRUNE_RMS,
) -> None:
    """Score each prepared molecule against each template chosen for it, write the best pair's pose(s) when any
    conformer scored, summarise."""
    results = []
    for candidate in candidates:
        for number, poses in enumerate(candidate.posed, start=1):
            name, record = library.names[poses.index], library.records[poses.index]
            label = "scoring" if len(candidate.posed) == 1 else f"scoring vs {name} ({number}/{len(candidate.posed)})"
            if len(candidates) > 1:
                label = f"isomer {candidate.isomer}/{len(candidates)} {label}"
            made = poses.conformers
            if made.confs.GetNumConformers() == 0:
                continue
            selection = _run_selection(made.confs, library.mols[poses.index], workers, metric, executor, scheduler,
                                       exact_workers, label, worker_timeout,
                                       align=align or made.method in (PoseMethod.FREE, PoseMethod.INPUT))
            results.append(TemplateSelection(record, name, selection, candidate.isomer, candidate.smiles,
                                             poses.record(selection.report.n_conformers)))
    if not results:
        raise _fail("no conformer could be embedded for the query", EXIT_ERROR)
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
        _stage("writing the poses")
        outcome.written = target.write(pose_records(outcome.chosen, query, metric, all_ranked, preparation,
                                                    conformers_requested))
    outcome.wall_seconds = time.monotonic() - PROGRESS.started if PROGRESS.started else 0.0
    if reporting.json_output:
        _print_json(summary_json(outcome, query))
    else:
        print_summary(reporting.console, outcome)
    if outcome.chosen is None:
        raise _fail(f"no conformer could be scored: {outcome.failure()}", EXIT_ERROR)


def _observe_choice(query: QueryIdentity, outcome: RunOutcome) -> None:
    """``templates.chosen`` for the kept pose: the telemetry of the template choice, once per run."""
    from templ_pipeline.telemetry.observer import observe

    chosen = outcome.chosen
    assert chosen is not None and chosen.choice is not None
    choice = chosen.choice
    selections = outcome.choices.values()
    observe(TemplatesChosen(query.name, outcome.library, len(outcome.of_isomer(chosen.isomer)), chosen.name,
                            choice.similarity, choice.core_atoms, choice.core_smarts, choice.method, choice.fallback,
                            choice.pinned_atoms, sum(s.mcs_timeouts for s in selections),
                            sum(s.seconds for s in selections)))


def _print_json(data: dict[str, Any]) -> None:
    """One JSON object on stdout, one line: plain text, no terminal styling, whatever stdout is."""
    sys.stdout.write(json.dumps(data) + "\n")
    sys.stdout.flush()


@contextmanager
def _observed(session: TelemetrySession) -> Iterator[TelemetrySession]:
    """Run inside ``session``; say where the metrics are."""
    try:
        with session:
            if session.server is not None:
                _log.info("telemetry.metrics_serving", url=session.server.url,
                          default_port_taken=session.default_port_taken)
                if stderr.is_terminal:
                    taken = "; the default port is another run's" if session.default_port_taken else ""
                    stderr.print(f"metrics: {session.server.url} (run {get_run_id()}{taken})", highlight=False)
            yield session
    except TelemetrySetupError as exc:
        raise _fail(str(exc), EXIT_BAD_INPUT) from None


def _parse_query(smiles: str) -> Chem.Mol:
    try:
        return molecule_from_smiles(smiles)
    except ValueError as exc:
        raise InputError(f"--query: {exc}") from None


WorkersOption = Annotated[
    int | None, typer.Option("--workers", "-w", min=1, help="Worker count (default: the CPUs available).")
]


MetricOption = Annotated[Metric, typer.Option(
    "--metric", help="What poses are ranked by: shape or colour Tanimoto, or combo (their mean).")]
JsonOption = Annotated[bool, typer.Option(
    "--json", help="Print the summary as one JSON object on stdout (nothing else goes there).")]


def _pose_target(output: Path, json_output: bool) -> PoseTarget:
    """The checked ``--output``, before any work; ``-`` (the SDF on stdout) leaves no room for ``--json``."""
    target = PoseTarget.parse(str(output), "--output")
    if target.to_stdout and json_output:
        raise typer.BadParameter("-o - writes the SDF to stdout; --json needs stdout too: give -o a file",
                                 param_hint="'--json'")
    return target


FragmentsOption = Annotated[FragmentPolicy, typer.Option(
    "--fragments", rich_help_panel="Query preparation",
    help="largest: drop counterions, solvents and smaller fragments, keep the largest organic one; "
         "all: embed every fragment together, as given.")]
StereoOption = Annotated[StereoPolicy, typer.Option(
    "--stereo", rich_help_panel="Query preparation",
    help="Unassigned stereocentres and double bonds: enumerate (score each stereoisomer, up to --max-isomers), "
         "first (the first isomer only), or as-is (ETKDG picks a configuration per conformer).")]
MaxIsomersOption = Annotated[int, typer.Option(
    "--max-isomers", min=1, rich_help_panel="Query preparation",
    help="Stereoisomers scored per query at most (more possible: RDKit samples this many, the same every run).")]
TautomerOption = Annotated[TautomerPolicy, typer.Option(
    "--tautomer", rich_help_panel="Query preparation",
    help="as-is: the input's tautomer and protonation state; canonical: RDKit's canonical tautomer.")]


def _top_templates(value: str) -> int | None:
    """``--top-templates``: a count, or ``all``."""
    if value.strip().lower() == "all":
        return None
    try:
        top = int(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is neither a count nor 'all'") from None
    if top < 1:
        raise typer.BadParameter(f"{value!r}: at least 1 (or 'all')")
    return top


TopTemplatesOption = Annotated[str, typer.Option(
    "--top-templates", rich_help_panel="Template choice", metavar="K|all",
    help=f"Templates chosen per query by common substructure (after a 2D prefilter of "
         f"{DEFAULT_PREFILTER}), each with its core pinned; all: score every template, free conformers.")]
McsTimeoutOption = Annotated[float, typer.Option(
    "--mcs-timeout", min=0.001, rich_help_panel="Template choice",
    help="Seconds of MCS search per query; past it the candidates left keep their 2D rank, unpinned.")]
ExcludeIdenticalOption = Annotated[bool, typer.Option(
    "--exclude-identical", rich_help_panel="Template choice",
    help="Leave out templates that are the query itself (same molecule), for leave-one-out benchmarks.")]
PinOption = Annotated[bool, typer.Option(
    "--pin/--no-pin", rich_help_panel="Template choice",
    help="Pin the core shared with each chosen template while embedding (--no-pin: free conformers, scored "
         "against every chosen template).")]
PruneRmsOption = Annotated[float, typer.Option(
    "--prune-rms", min=0.0, metavar="A",
    help="Drop each generated conformer within this heavy-atom RMSD (angstrom) of an earlier one (RDKit's "
         "pruning: fewer, more varied conformers); 0: off.")]
AllowLargeTemplatesOption = Annotated[bool, typer.Option(
    "--allow-large-templates", rich_help_panel="Template choice",
    help=f"Keep template records that look like a receptor (over {MAX_TEMPLATE_HEAVY_ATOMS} heavy atoms, or a "
         f"peptide backbone of {RECEPTOR_RESIDUES}+ residues), which are left out otherwise.")]
KeepPinnedPoseOption = Annotated[bool, typer.Option(
    "--keep-pinned-pose", rich_help_panel="Template choice",
    help="Score pinned poses where they were made instead of aligning them onto the template by shape.")]


def _choice(top_templates: str, mcs_timeout: float, exclude_identical: bool, pin: bool) -> ChoiceOptions:
    return ChoiceOptions(top=_top_templates(top_templates), mcs_timeout=mcs_timeout,
                         exclude_identical=exclude_identical, pin=pin)


ExactWorkersOption = Annotated[bool, typer.Option(
    "--exact-workers", help="Start --workers workers even beyond the CPUs this process may use, or for work "
                            "too small to repay a cold pool (the kernel's limits still apply; also "
                            "TEMPL_EXACT_WORKERS=1).")]

ExecutorOption = Annotated[ExecutorChoice, typer.Option(
    "--executor",
    help="auto (the local ladder: process pool, fewer processes, sequential), process (the same), or dask "
         "(a Dask cluster; without --scheduler or DASK_SCHEDULER_ADDRESS a LocalCluster sized from headroom).")]
SchedulerOption = Annotated[str | None, typer.Option(
    "--scheduler", help="Dask scheduler address (tcp://HOST:PORT) for --executor dask "
                        "(default: $DASK_SCHEDULER_ADDRESS). Unreachable: the run goes on locally.")]
WorkerTimeoutOption = Annotated[float | None, typer.Option(
    "--worker-timeout", min=0, help="Seconds --executor dask waits for the scheduler to have a worker (at the "
                                    "start, or after every worker left) before the run goes on locally "
                                    "(default: $TEMPL_DASK_WORKER_TIMEOUT, else 60).")]


def _require_dask() -> None:
    """``--executor dask`` without Dask installed is a bad option (exit 2, one line)."""
    try:
        validate_executor("dask", None)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="'--executor'") from None


def _check_dask_options(executor: ExecutorChoice, scheduler: str | None, worker_timeout: float | None) -> None:
    """``--scheduler`` and ``--worker-timeout`` mean something only with ``--executor dask``."""
    for value, option in ((scheduler, "--scheduler"), (worker_timeout, "--worker-timeout")):
        if value is not None and executor != ExecutorChoice.DASK:
            raise typer.BadParameter(f"{option} needs --executor dask", param_hint=f"'{option}'")


@app.command("select-best")
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
    _check_dask_options(executor, scheduler, worker_timeout)
    if name is not None and query is None:
        raise typer.BadParameter("--name names a --query; --conformers poses keep their records' names",
                                 param_hint="'--name'")
    workers = workers or _default_workers()
    try:
        target = _pose_target(output, json_output)
        choice = _choice(top_templates, mcs_timeout, exclude_identical, pin)
        library = _read_library(template, allow_large_templates)
        confs = read_conformers(conformers) if conformers is not None else None
        query_mol = _parse_query(query) if query is not None else None
        if confs is not None:
            _check_scorable(confs, f"--conformers {conformers}")
        preparation = (_prepare(query_mol, query, PreparationOptions(fragments, stereo, max_isomers, tautomer))
                       if query_mol is not None and query is not None else None)
        identity = _identity(confs, query, query_mol, name, hydrogens)
        with _observed(session):
            if preparation is not None:
                candidates = _prepared_candidates(preparation, identity, library, choice, num_conformers, seed,
                                                  workers, exact_workers, prune_rms=prune_rms)
            else:
                assert confs is not None
                candidates = [_candidate(0, identity.smiles, confs, library, choice, 0, seed, workers,
                                         exact_workers, given=confs)]
            _select_and_write(candidates, library, identity, target, Reporting.of(target, json_output),
                              workers=workers, metric=metric, all_ranked=all_ranked, executor=executor,
                              scheduler=scheduler, worker_timeout=worker_timeout, exact_workers=exact_workers,
                              preparation=preparation,
                              conformers_requested=num_conformers if preparation is not None
                              else confs.GetNumConformers(), align=not keep_pinned_pose,
                              prune_rms=prune_rms if preparation is not None else DEFAULT_PRUNE_RMS)
    except InputError as exc:
        raise _fail(str(exc), EXIT_BAD_INPUT) from None


def _prepare(mol: Chem.Mol, query: str, options: PreparationOptions) -> Preparation:
    """The prepared query; a query that cannot be scored at all is bad input (exit 2, one line)."""
    try:
        return prepare(mol, options, input_smiles=query)
    except PreparationError as exc:
        raise InputError(f"--query {query}: {exc.reason}: {exc}") from None


def _read_library(path: Path, allow_large: bool = False) -> TemplateLibrary:
    """The template library of ``path``, with one line on stderr for the records left out."""
    library = read_template_library(path, allow_large=allow_large)
    _warn_left_out(path, library)
    return library


def _warn_left_out(path: Path, library: TemplateLibrary) -> None:
    """One line on stderr naming the template records left out (unreadable, 2D, duplicate), if any."""
    if library.problems:
        listed = ", ".join(f"record {p.record} {p.reason}" for p in library.problems[:5])
        more = f" and {len(library.problems) - 5} more" if len(library.problems) > 5 else ""
        stderr.print(f"warning: {path}: {len(library.problems)} of {len(library) + len(library.problems)} records "
                     f"left out ({listed}{more})", style="yellow", highlight=False, soft_wrap=True)


def _check_scorable(mol: Chem.Mol, what: str) -> None:
    try:
        refuse_unscorable(mol)
    except PreparationError as exc:
        raise InputError(f"{what}: {exc.reason}: {exc}") from None


def _prepared_candidates(preparation: Preparation, identity: QueryIdentity, library: TemplateLibrary,
                         choice: ChoiceOptions, num_conformers: int, seed: int, workers: int,
                         exact_workers: bool, *, prune_rms: float = DEFAULT_PRUNE_RMS) -> list[Candidate]:
    """Each prepared molecule (the query, or each stereoisomer) with its templates chosen and its conformers for
    each; ``query.prepared`` says what preparation did."""
    from templ_pipeline.telemetry.observer import observe

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
    (pinned on each template's core, with their progress on a terminal, or ``given``)."""
    from templ_pipeline import telemetry

    _stage("choosing templates")
    with telemetry.templates_span(len(library)) as span:
        choice = choose_templates(mol, library, options)
        span.chosen, span.searched, span.timeouts = len(choice.chosen), choice.searched, choice.mcs_timeouts
    if given is not None:
        return Candidate(isomer, smiles, choice, tuple(given_conformers(given, choice)))
    _stage(f"generating {num_conformers} conformers")

    def keep(event: object) -> None:
        shown(event)  # the embedding's progress, bound by the with-statement below before any event comes
        if isinstance(event, (Fallback, WorkersReduced)):
            CONFORMER_EVENTS.append(event)

    label = f"isomer {isomer}: embedding" if isomer else "embedding"
    with telemetry.conformers_span(num_conformers, workers) as stats, \
            embedding_progress(stderr, label, num_conformers, _start_progress) as shown, \
            granted_embedding(workers, observers=(keep,), exact_workers=exact_workers,
                              prune_rms=prune_rms) as (run, threads):
        posed = template_conformers(mol, library, choice, num_conformers, seed, run, options)
        stats.generated = distinct_conformers(posed)
        stats.threads = threads.count
    return Candidate(isomer, smiles, choice, tuple(posed), embedding_seconds=shown.seconds)


def _identity(confs: Chem.Mol | None, query: str | None, query_mol: Chem.Mol | None, name: str | None,
              hydrogens: Hydrogens) -> QueryIdentity:
    """Who the query is: a --conformers file's molecule (its records name the poses) or a --query's SMILES."""
    if confs is not None:
        smiles = Chem.MolToSmiles(Chem.RemoveHs(confs, sanitize=False))
        return QueryIdentity(name=smiles, smiles=smiles, hydrogens=hydrogens)
    assert query is not None and query_mol is not None
    return QueryIdentity(name=name or query, smiles=Chem.MolToSmiles(query_mol), hydrogens=hydrogens)


@app.command("screen")
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
    top_templates: TopTemplatesOption = str(DEFAULT_TOP),
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
    from templ_pipeline.campaign import cli_screen

    _check_dask_options(executor, scheduler, worker_timeout)
    if executor == ExecutorChoice.DASK:
        _require_dask()
    try:
        request = cli_screen.ScreenRequest(
            template=template, queries=queries, output_dir=output_dir, num_conformers=num_conformers, seed=seed,
            workers=workers or _default_workers(), metric=metric, resume=resume, per_template=per_template,
            use_input_conformers=use_input_conformers, query_timeout=query_timeout or None,
            smiles_column=smiles_column, id_column=id_column, exact_workers=exact_workers,
            preparation=PreparationOptions(fragments, stereo, max_isomers, tautomer),
            executor=str(executor), scheduler=scheduler, worker_timeout=worker_timeout,
            choice=_choice(top_templates, mcs_timeout, exclude_identical, pin), align=not keep_pinned_pose,
            reference=reference, top=top or None, poses_per_query=poses_per_query, prune_rms=prune_rms,
            allow_large_templates=allow_large_templates)
        prepared = cli_screen.prepare(request)
        _warn_left_out(template, prepared.library)
        with _observed(session):
            tally = cli_screen.run(prepared, console=stderr, out=stdout, progress=PROGRESS,
                                   start_progress=_start_progress,
                                   on_summary=(lambda summary: _print_json(cli_screen.summary_json(summary)))
                                   if json_output else None)
            if tally.done and not tally.ok:  # inside the session: the run is recorded (and pushed) as failed
                raise _fail(f"no query could be scored: {tally.failure_summary()}", EXIT_ERROR)
    except InputError as exc:
        raise _fail(str(exc), EXIT_BAD_INPUT) from None


@app.command()
@with_telemetry
def demo(
    output: Annotated[Path, typer.Option(
        "--output", "-o", help="Where the best pose goes: FILE.sdf, FILE.sdf.gz, or - for stdout.")] = Path(
        "templ_demo_poses.sdf"
    ),
    example: Annotated[ExampleName, typer.Option("--example", help="Bundled pair to run.")] = ExampleName("mpro"),
    num_conformers: Annotated[int, typer.Option("--num-conformers", "-n", min=1)] = 100,
    workers: WorkersOption = None,
    metric: MetricOption = Metric.COMBO,
    json_output: JsonOption = False,
    session: TelemetrySession | None = None,
) -> None:
    """Run pose selection on a bundled template/query pair."""
    pair = {pair.name: pair for pair in examples()}[example]
    workers = workers or _default_workers()
    try:
        target = _pose_target(output, json_output)
        reporting = Reporting.of(target, json_output)
        (stderr if json_output else reporting.console).print(
            f"demo {pair.name}: query {pair.query_smiles}, {num_conformers} conformers", highlight=False)
        identity = QueryIdentity(name=pair.name, smiles=Chem.MolToSmiles(Chem.MolFromSmiles(pair.query_smiles)))
        preparation = _prepare(_parse_query(pair.query_smiles), pair.query_smiles, PreparationOptions())
        with _observed(session):
            from templ_pipeline.campaign.runner import as_library

            library = as_library([pair.template])
            candidates = _prepared_candidates(preparation, identity, library, ChoiceOptions(), num_conformers,
                                              DEFAULT_SEED, workers, False)
            _select_and_write(candidates, library, identity, target, reporting, workers=workers,
                              metric=metric, preparation=preparation, conformers_requested=num_conformers)
    except InputError as exc:
        raise _fail(str(exc), EXIT_BAD_INPUT) from None


@app.command()
@with_telemetry
def stress(
    duration: Annotated[float, typer.Option("--duration", min=1, max=3600,
                                            help="Seconds of load; the command stops by itself.")] = 60.0,
    workers: WorkersOption = None,
    session: TelemetrySession | None = None,
) -> None:
    """Drive the executor into worker reductions and fallbacks for a while, so dashboards light up."""
    from templ_pipeline import stress as stress_module

    workers = workers or max(4, _default_workers())
    if workers < 2:
        raise typer.BadParameter("stress needs at least 2 workers to have something to reduce", param_hint="'--workers'")
    with _observed(session):
        summary = stress_module.run(duration, workers, log=lambda message: stderr.print(message, highlight=False))
    stdout.print_json(data=summary)


@app.command()
def doctor(
    json_output: Annotated[bool, typer.Option("--json", help="Machine-readable report.")] = False,
    scheduler: Annotated[str | None, typer.Option(
        "--scheduler", help="Also report each worker of this Dask scheduler: its machine's binding limit "
                            "and headroom (JSON key dask_workers).")] = None,
) -> None:
    """Show the kernel limits on threads and processes, and the workers they allow."""
    from templ_pipeline import doctor as doctor_module

    raise typer.Exit(doctor_module.run(json_output, scheduler))


app.add_typer(dashboards_app)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"{PROG_NAME} {__version__}")
        raise typer.Exit(EXIT_OK)


@app.callback()
def _root(
    version: Annotated[bool, typer.Option(
        "--version", callback=_print_version, is_eager=True, help="Print the version and exit.")] = False,
) -> None:
    """Template-based pose selection: score ligand conformers against a template ligand."""


def main(argv: list[str] | None = None) -> int:
    """Console entry point; returns the exit code.

    SIGTERM and SIGINT stop the run cleanly: no new batches, the workers are ended
    and reaped, nothing half-written, one line saying what was done, and the
    shell's exit status for the signal (143, 130). A reader of stdout that closes
    it early (``templ doctor | head -1``) ends the command quietly with 0.
    """
    PROGRESS.started = time.monotonic()
    pipe = StdoutPipe.current()
    with signals_raise():
        try:
            code = _run(argv, pipe)
            sys.stdout.flush()
            return code
        except BrokenPipeError:  # the reader of stdout left (``| head``): it has what it wanted
            silence_stdout()
            return EXIT_OK
        except Interrupted as stop:
            return _stopped(stop)


def _stopped(stop: Interrupted) -> int:
    """End every worker, say what was done, and leave with the signal's exit status."""
    shutdown_pools(terminate=True)
    shutdown_dask()
    stderr.print(f"interrupted by {stop.name}: {PROGRESS.describe()}", highlight=False, soft_wrap=True)
    if native_call.busy():
        # RDKit is still embedding in a helper thread that cannot be stopped: leave without
        # running interpreter finalization underneath it.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(stop.exit_code)
    return stop.exit_code


def _run(argv: list[str] | None, pipe: StdoutPipe | None = None) -> int:
    try:
        code = app(args=argv, prog_name=PROG_NAME, standalone_mode=False)
    except typer.Abort as abort:
        if isinstance(abort.__context__, KeyboardInterrupt):  # click's name for a KeyboardInterrupt
            raise Interrupted(signal.SIGINT) from None
        stderr.print("aborted")
        return EXIT_ERROR
    except typer.TyperException as exc:  # usage errors: one line, exit 2
        if type(exc).__name__ == "NoArgsIsHelpError":
            # a bare ``templ`` (or ``templ dashboards``): the help, already printed on stdout by typer's rich
            # formatter when the error was made, is the answer, not an error. typer exports no name for this
            # class and checks it by name itself (typer/rich_utils.py).
            if exc.format_message().strip():
                stdout.print(exc.format_message(), highlight=False, markup=False)
            return EXIT_OK
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        stderr.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
        return int(getattr(exc, "exit_code", EXIT_BAD_INPUT))
    except TelemetrySetupError as exc:  # a telemetry option the session cannot set up: bad input
        stderr.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:  # raised by a native call that took SIGINT itself (RDKit): the same stop
        raise Interrupted(signal.SIGINT) from None
    except BrokenPipeError:
        raise
    except SystemExit as exit_:  # rich and typer end a write into a closed pipe so: see stdout_pipe
        if exit_.code == EXIT_ERROR and pipe is not None and pipe.reader_left():
            raise BrokenPipeError from None
        raise
    except Exception as exc:  # the last line of defence: one line, exit 1
        stderr.print(f"[bold red]error:[/] {type(exc).__name__}: {exc}", highlight=False)
        return EXIT_ERROR
    return code if isinstance(code, int) else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
