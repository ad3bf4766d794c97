"""The options several ``templ`` commands share, declared once, and the checks that go with them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from templ_pipeline.core.executor import ExecutorChoice, validate_executor
from templ_pipeline.core.preparation import FragmentPolicy, StereoPolicy, TautomerPolicy
from templ_pipeline.core.template_choice import DEFAULT_PREFILTER, ChoiceOptions
from templ_pipeline.core.template_library import MAX_TEMPLATE_HEAVY_ATOMS, RECEPTOR_RESIDUES
from templ_pipeline.core.vocabulary import Metric
from templ_pipeline.pose_output import PoseTarget

WorkersOption = Annotated[
    int | None, typer.Option("--workers", "-w", min=1, help="Worker count (default: the CPUs available).")
]
MetricOption = Annotated[Metric, typer.Option(
    "--metric", help="What poses are ranked by: shape or colour Tanimoto, or combo (their mean).")]
JsonOption = Annotated[bool, typer.Option(
    "--json", help="Print the summary as one JSON object on stdout (nothing else goes there).")]


def pose_target(output: Path, json_output: bool) -> PoseTarget:
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


def parse_top_templates(value: str) -> int | None:
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


def choice_options(top_templates: str, mcs_timeout: float, exclude_identical: bool, pin: bool) -> ChoiceOptions:
    """The template-choice options of the command line."""
    return ChoiceOptions(top=parse_top_templates(top_templates), mcs_timeout=mcs_timeout,
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


def require_dask() -> None:
    """``--executor dask`` without Dask installed is a bad option (exit 2, one line)."""
    try:
        validate_executor("dask", None)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="'--executor'") from None


def check_dask_options(executor: ExecutorChoice, scheduler: str | None, worker_timeout: float | None) -> None:
    """``--scheduler`` and ``--worker-timeout`` mean something only with ``--executor dask``."""
    for value, option in ((scheduler, "--scheduler"), (worker_timeout, "--worker-timeout")):
        if value is not None and executor != ExecutorChoice.DASK:
            raise typer.BadParameter(f"{option} needs --executor dask", param_hint=f"'{option}'")
