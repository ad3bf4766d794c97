"""The ``templ`` command line: pose selection, the bundled demo, and ``doctor``.

Exit codes: 0 done, 2 bad input (one line naming the file or argument), 1 anything else.
"""

from __future__ import annotations

from templ_pipeline.parent_threads import limit_parent_pools

limit_parent_pools()  # before numpy is imported (by RDKit below): see templ_pipeline.parent_threads

import functools  # noqa: E402
import inspect  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
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
from rich.table import Table  # noqa: E402
from rich.text import Text  # noqa: E402

from telemetry.logs import get_logger, get_run_id  # noqa: E402
from telemetry.session import TelemetryOptions, TelemetrySession, TelemetrySetupError  # noqa: E402
from templ_pipeline.core import native_call  # noqa: E402
from templ_pipeline.core.batch import BatchResult  # noqa: E402
from templ_pipeline.core.conformers import DEFAULT_SEED, generate_conformers, molecule_from_smiles  # noqa: E402
from templ_pipeline.core.events import Fallback, WorkersReduced  # noqa: E402
from templ_pipeline.core.executor import EXECUTOR_CHOICES, shutdown_dask, shutdown_pools  # noqa: E402
from templ_pipeline.core.scoring import METRICS, Selection, select_best_with_report  # noqa: E402
from templ_pipeline.interrupts import Interrupted, signals_raise  # noqa: E402
from templ_pipeline.io import (  # noqa: E402
    InputError,
    check_output_path,
    examples,
    read_conformers,
    read_template,
    write_poses,
)

EXIT_OK, EXIT_ERROR, EXIT_BAD_INPUT = 0, 1, 2

app = typer.Typer(
    name="templ",
    help="Template-based pose selection: score ligand conformers against a template ligand.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
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


def _generate(query: str | Chem.Mol, num_conformers: int, seed: int, workers: int,
              exact_workers: bool = False) -> Chem.Mol:
    """Conformers for the query, remembering their fallbacks and reductions for the summary."""
    _stage(f"generating {num_conformers} conformers")

    def keep(event: object) -> None:
        if isinstance(event, (Fallback, WorkersReduced)):
            CONFORMER_EVENTS.append(event)

    return generate_conformers(query, num_conformers, seed=seed, n_workers=workers, observers=(keep,),
                               exact_workers=exact_workers)


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
    exact_workers: bool = False,
) -> Selection:
    """Score with a progress bar over batches (on stderr, only on a terminal)."""
    progress = Progress(
        TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), ConformerRate(), TimeElapsedColumn(),
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
                                       executor=executor, scheduler=scheduler, exact_workers=exact_workers)
    finally:
        progress.stop()


def _poses(selection: Selection, metric: str, all_ranked: bool) -> list[tuple[Chem.Mol, dict]]:
    if all_ranked:
        return [
            (mol, {**scores, "conformer_id": conf_id, "rank": rank, "metric": metric})
            for rank, (conf_id, scores, mol) in enumerate(selection.ranked, start=1)
        ]
    mol, scores = selection.best[metric]
    if mol is None:
        return []
    return [(mol, {**scores, "conformer_id": mol.GetConformer().GetId(), "rank": 1, "metric": metric})]


def _summary(selection: Selection, output: Path, written: int) -> None:
    report = selection.report
    table = Table(title="Best pose per metric", title_justify="left")
    for column in ("metric", "conformer", "shape", "color", "combo"):
        table.add_column(column, justify="right" if column != "metric" else "left")
    for metric in METRICS:
        mol, scores = selection.best[metric]
        conformer = str(mol.GetConformer().GetId()) if mol is not None else "-"
        table.add_row(metric, conformer, *(f"{scores[m]:.4f}" for m in METRICS))
    stdout.print(table)
    failed = ", ".join(f"{reason} {count}" for reason, count in sorted(report.failed_by_reason.items())) or "none"
    stdout.print(
        f"conformers {report.n_conformers}: scored {report.n_scored}, failed {report.n_failed} ({failed}); "
        f"workers {report.workers_granted} of {report.workers_requested} requested, "
        f"executor {' -> '.join(report.executor_kinds)}; "
        f"{report.conformers_per_second:,.0f} conformers/s; wrote {written} pose(s) to {output}",
        highlight=False, soft_wrap=True,
    )
    for event in [*CONFORMER_EVENTS, *report.reductions, *report.fallbacks]:
        if isinstance(event, WorkersReduced):
            line = (f"{event.task_type} workers {event.requested} -> {event.granted}: {event.reason} "
                    f"({event.detail})")
        else:
            line = f"fallback {event.from_kind} -> {event.to_kind}: {event.reason} (cause {event.cause})"
        stdout.print(line, style="yellow", highlight=False, soft_wrap=True)


def _select_and_write(
    confs: Chem.Mol, template: Chem.Mol, workers: int, metric: str, all_ranked: bool, output: Path,
    executor: str = "auto", scheduler: str | None = None, exact_workers: bool = False,
) -> None:
    selection = _run_selection(confs, template, workers, metric, executor, scheduler, exact_workers)
    _stage("writing the poses")
    written = write_poses(output, _poses(selection, metric, all_ranked))
    _summary(selection, output, written)
    if selection.report.n_scored == 0:
        raise _fail("no conformer could be scored; see the failure reasons above", EXIT_ERROR)


MetricsAddr = Annotated[str | None, typer.Option(
    "--metrics-addr", help="Serve /metrics and /healthz here (default 127.0.0.1:9464; a taken default port only warns).",
    rich_help_panel="Telemetry")]
NoMetricsServer = Annotated[bool, typer.Option(
    "--no-metrics-server", help="Do not serve /metrics.", rich_help_panel="Telemetry")]
MetricsTextfile = Annotated[Path | None, typer.Option(
    "--metrics-textfile", help="Write the final metrics here (*.prom) for node_exporter's textfile collector.",
    rich_help_panel="Telemetry")]
Pushgateway = Annotated[str | None, typer.Option(
    "--pushgateway", help="Push the final metrics to this Pushgateway URL.", rich_help_panel="Telemetry")]
HoldMetrics = Annotated[float, typer.Option(
    "--hold-metrics", min=0, help="Keep /metrics up this many seconds after the run.", rich_help_panel="Telemetry")]
TracesFile = Annotated[Path | None, typer.Option(
    "--traces-file", help="Append spans as OTLP/JSON lines (the Collector's otlpjsonfile format).",
    rich_help_panel="Telemetry")]
LogFormat = Annotated[str, typer.Option(
    "--log-format", help="json, console, or auto (console on a terminal).", rich_help_panel="Telemetry")]
LogFile = Annotated[Path | None, typer.Option(
    "--log-file", help="Append log lines (JSON) here instead of stderr.", rich_help_panel="Telemetry")]
LogLevel = Annotated[str | None, typer.Option(
    "--log-level", help="debug, info, warning or error (default: info, warning on a terminal).",
    rich_help_panel="Telemetry")]


def _telemetry(
    metrics_addr: str | None, no_metrics_server: bool, metrics_textfile: Path | None, pushgateway: str | None,
    hold_metrics: float, traces_file: Path | None, log_format: str, log_file: Path | None, log_level: str | None,
) -> TelemetrySession:
    """The telemetry session of a run; bad telemetry options are bad input (exit 2)."""
    if log_format not in ("auto", "json", "console"):
        raise typer.BadParameter(f"{log_format!r} is not one of auto, json, console", param_hint="'--log-format'")
    if log_level is not None and log_level.lower() not in ("debug", "info", "warning", "error"):
        raise typer.BadParameter(f"{log_level!r} is not a log level", param_hint="'--log-level'")
    options = TelemetryOptions(
        metrics_addr=metrics_addr, metrics_server=not no_metrics_server, metrics_textfile=metrics_textfile,
        pushgateway=pushgateway, hold_metrics=hold_metrics, traces_file=traces_file, log_format=log_format,
        log_file=log_file, log_level=log_level,
    )
    try:
        return TelemetrySession(options)
    except TelemetrySetupError as exc:
        raise _fail(str(exc), EXIT_BAD_INPUT) from None


_TELEMETRY_OPTIONS: dict[str, tuple[Any, Any]] = {
    "metrics_addr": (MetricsAddr, None),
    "no_metrics_server": (NoMetricsServer, False),
    "metrics_textfile": (MetricsTextfile, None),
    "pushgateway": (Pushgateway, None),
    "hold_metrics": (HoldMetrics, 0.0),
    "traces_file": (TracesFile, None),
    "log_format": (LogFormat, "auto"),
    "log_file": (LogFile, None),
    "log_level": (LogLevel, None),
}


def with_telemetry(command: Callable[..., None]) -> Callable[..., None]:
    """Give a command the telemetry options; it receives the run's ``TelemetrySession`` as ``session``.

    The options are declared once (``_TELEMETRY_OPTIONS``) and appended to the
    command's signature, which is what typer reads to build the CLI.
    """
    signature = inspect.signature(command, eval_str=True)
    own = [param for name, param in signature.parameters.items() if name != "session"]
    extra = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default)
             for name, (annotation, default) in _TELEMETRY_OPTIONS.items()]

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> None:
        options = {name: kwargs.pop(name) for name in _TELEMETRY_OPTIONS}
        command(session=_telemetry(**options), **kwargs)

    wrapper.__signature__ = signature.replace(parameters=own + extra)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {param.name: param.annotation for param in own + extra}
    return wrapper


@contextmanager
def _observed(session: TelemetrySession) -> Iterator[TelemetrySession]:
    """Run inside ``session``; say where the metrics are."""
    try:
        with session:
            if session.server is not None:
                _log.info("telemetry.metrics_serving", url=session.server.url)
                if stderr.is_terminal:
                    stderr.print(f"metrics: {session.server.url} (run {get_run_id()})", highlight=False)
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


def _check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise typer.BadParameter(f"{metric!r} is not one of {', '.join(METRICS)}", param_hint="'--metric'")
    return metric


def _check_executor(executor: str) -> str:
    if executor not in EXECUTOR_CHOICES:
        raise typer.BadParameter(f"{executor!r} is not one of {', '.join(EXECUTOR_CHOICES)}", param_hint="'--executor'")
    return executor


ExactWorkersOption = Annotated[bool, typer.Option(
    "--exact-workers", help="Start --workers workers even beyond the CPUs this process may use, or for work "
                            "too small to repay a cold pool (the kernel's limits still apply; also "
                            "TEMPL_EXACT_WORKERS=1).")]

ExecutorOption = Annotated[str, typer.Option(
    "--executor", callback=_check_executor,
    help="auto (the local ladder: process pool, fewer processes, sequential), process (the same), or dask "
         "(a Dask cluster; without --scheduler or DASK_SCHEDULER_ADDRESS a LocalCluster sized from headroom).")]
SchedulerOption = Annotated[str | None, typer.Option(
    "--scheduler", help="Dask scheduler address (tcp://HOST:PORT) for --executor dask "
                        "(default: $DASK_SCHEDULER_ADDRESS). Unreachable: the run goes on locally.")]


@app.command("select-best")
@with_telemetry
def select_best_command(
    template: Annotated[Path, typer.Option("--template", "-t", help="SDF with the template ligand's 3D pose.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="SDF to write the chosen pose(s) to.")],
    query: Annotated[str | None, typer.Option("--query", "-q", help="Query ligand as SMILES.")] = None,
    conformers: Annotated[
        Path | None, typer.Option("--conformers", "-c", help="SDF: one record per conformer of one molecule.")
    ] = None,
    num_conformers: Annotated[int, typer.Option("--num-conformers", "-n", min=1, help="Conformers for --query.")] = 200,
    workers: WorkersOption = None,
    metric: Annotated[str, typer.Option("--metric", callback=_check_metric, help="shape, color or combo.")] = "combo",
    all_ranked: Annotated[bool, typer.Option("--all-ranked", help="Write every pose, best first.")] = False,
    seed: Annotated[int, typer.Option("--seed", help="Random seed for conformer generation.")] = 42,
    executor: ExecutorOption = "auto",
    scheduler: SchedulerOption = None,
    exact_workers: ExactWorkersOption = False,
    session: TelemetrySession | None = None,
) -> None:
    """Score conformers of a query ligand against a template and write the best pose(s)."""
    if (query is None) == (conformers is None):
        raise typer.BadParameter("give exactly one of --query SMILES or --conformers FILE", param_hint="'--query'")
    if scheduler is not None and executor != "dask":
        raise typer.BadParameter("--scheduler needs --executor dask", param_hint="'--scheduler'")
    workers = workers or _default_workers()
    try:
        check_output_path(output)
        tpl = read_template(template)
        confs = read_conformers(conformers) if conformers is not None else None
        query_mol = _parse_query(query) if query is not None else None
        with _observed(session):
            if confs is None:
                confs = _generate(query_mol, num_conformers, seed, workers, exact_workers)
            _select_and_write(confs, tpl, workers, metric, all_ranked, output, executor, scheduler, exact_workers)
    except InputError as exc:
        raise _fail(str(exc), EXIT_BAD_INPUT) from None


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
        "--output-dir", "-o", help="Directory for scores.csv, poses.sdf and campaign.json (created; an existing "
                                   "non-empty one needs --resume).")],
    num_conformers: Annotated[int, typer.Option("--num-conformers", "-n", min=1, help="Conformers per query.")] = 200,
    seed: Annotated[int, typer.Option("--seed", help="Random seed for conformer generation.")] = DEFAULT_SEED,
    workers: WorkersOption = None,
    metric: Annotated[str, typer.Option("--metric", callback=_check_metric, help="shape, color or combo.")] = "combo",
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
    smiles_column: Annotated[str, typer.Option("--smiles-column", help="CSV column holding the SMILES.")] = "smiles",
    id_column: Annotated[str, typer.Option("--id-column", help="CSV column holding the query id.")] = "id",
    exact_workers: ExactWorkersOption = False,
    session: TelemetrySession | None = None,
) -> None:
    """Screen a library of query ligands against the template(s): one row and best pose per query."""
    from templ_pipeline.campaign import cli_screen

    try:
        request = cli_screen.ScreenRequest(
            template=template, queries=queries, output_dir=output_dir, num_conformers=num_conformers, seed=seed,
            workers=workers or _default_workers(), metric=metric, resume=resume, per_template=per_template,
            use_input_conformers=use_input_conformers, query_timeout=query_timeout or None,
            smiles_column=smiles_column, id_column=id_column, exact_workers=exact_workers)
        prepared = cli_screen.prepare(request)
        with _observed(session):
            tally = cli_screen.run(prepared, console=stderr, out=stdout, progress=PROGRESS,
                                   start_progress=_start_progress)
    except InputError as exc:
        raise _fail(str(exc), EXIT_BAD_INPUT) from None
    if tally.done and not tally.ok:
        raise _fail("no query could be scored; see the reasons in scores.csv and the log", EXIT_ERROR)


@app.command()
@with_telemetry
def demo(
    output: Annotated[Path, typer.Option("--output", "-o", help="SDF to write the best pose to.")] = Path(
        "templ_demo_poses.sdf"
    ),
    example: Annotated[str, typer.Option("--example", help="Bundled pair to run.")] = "mpro",
    num_conformers: Annotated[int, typer.Option("--num-conformers", "-n", min=1)] = 100,
    workers: WorkersOption = None,
    metric: Annotated[str, typer.Option("--metric", callback=_check_metric)] = "combo",
    session: TelemetrySession | None = None,
) -> None:
    """Run pose selection on a bundled template/query pair."""
    pairs = {pair.name: pair for pair in examples()}
    if example not in pairs:
        raise typer.BadParameter(f"{example!r}: choose one of {', '.join(pairs)}", param_hint="'--example'")
    pair = pairs[example]
    workers = workers or _default_workers()
    stdout.print(f"demo {pair.name}: query {pair.query_smiles}, {num_conformers} conformers", highlight=False)
    try:
        check_output_path(output)
        with _observed(session):
            confs = _generate(pair.query_smiles, num_conformers, DEFAULT_SEED, workers)
            _select_and_write(confs, pair.template, workers, metric, False, output)
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


def main(argv: list[str] | None = None) -> int:
    """Console entry point; returns the exit code.

    SIGTERM and SIGINT stop the run cleanly: no new batches, the workers are ended
    and reaped, nothing half-written, one line saying what was done, and the
    shell's exit status for the signal (143, 130).
    """
    PROGRESS.started = time.monotonic()
    with signals_raise():
        try:
            return _run(argv)
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


def _run(argv: list[str] | None) -> int:
    try:
        code = app(args=argv, standalone_mode=False)
    except typer.Abort:
        stderr.print("aborted")
        return EXIT_ERROR
    except typer.TyperException as exc:  # usage errors: one line, exit 2
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        stderr.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
        return int(getattr(exc, "exit_code", EXIT_BAD_INPUT))
    except KeyboardInterrupt:
        stderr.print("interrupted")
        return 130
    except Exception as exc:  # the last line of defence: one line, exit 1
        stderr.print(f"[bold red]error:[/] {type(exc).__name__}: {exc}", highlight=False)
        return EXIT_ERROR
    return code if isinstance(code, int) else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
