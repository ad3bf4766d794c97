"""The ``templ`` app: its commands, ``--version``, and the entry point that turns every ending into an exit code.

Exit codes: 0 done, 2 bad input (one line naming the file or argument), 1 a failed run,
130/143 stopped by SIGINT/SIGTERM. Standard output carries only results (tables, the
SDF of ``-o -``, the JSON of ``--json``); progress, warnings and logs go to stderr.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
from typing import Annotated, Any

import typer

from templ_pipeline import __version__
from templ_pipeline.cli.common import EXIT_BAD_INPUT, EXIT_ERROR, EXIT_OK, PROGRESS, stderr, stdout
from templ_pipeline.cli.help import TemplTyper
from templ_pipeline.core import native_call
from templ_pipeline.interrupts import Interrupted, signals_raise
from templ_pipeline.stdout_pipe import StdoutPipe, silence_stdout

__all__ = ["COMMANDS", "PROG_NAME", "app", "main", "make_app"]

PROG_NAME = "templ"  # also when run as ``python -m templ_pipeline.cli``: usage lines, and _TEMPL_COMPLETE

COMMANDS: dict[str, tuple[str, str]] = {
    "select-best": ("templ_pipeline.cli.select_best", "select_best_command"),
    "screen": ("templ_pipeline.cli.screen", "screen_command"),
    "demo": ("templ_pipeline.cli.demo", "demo"),
    "stress": ("templ_pipeline.cli.stress", "stress"),
    "doctor": ("templ_pipeline.cli.doctor", "doctor"),
    "dashboards": ("templ_pipeline.cli.dashboards", "app"),  # a group of its own
}
"""Each command's module and function (a Typer app for a group), in the order ``--help`` lists them. A run
imports only its command's module: ``templ doctor`` needs neither RDKit nor the telemetry stack."""


VERSION_OPTION = "--version"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"{PROG_NAME} {__version__}")
        raise typer.Exit(EXIT_OK)


def _root(
    version: Annotated[bool, typer.Option(
        VERSION_OPTION, callback=_print_version, is_eager=True, help="Print the version and exit.")] = False,
) -> None:
    """Template-based pose selection: score ligand conformers against a template ligand."""


def make_app(only: str | None = None) -> TemplTyper:
    """The ``templ`` app with every command, or with the command ``only`` (whose module alone is imported; a name
    that is no command's gives the root alone)."""
    application = TemplTyper(
        name="templ",
        help="Template-based pose selection: score ligand conformers against a template ligand.",
        no_args_is_help=True,
        add_completion=True,  # --install-completion / --show-completion; completion offers the enums' values
        pretty_exceptions_enable=False,
    )
    application.callback()(_root)
    for name, (module, attribute) in COMMANDS.items():
        if only is None or only == name:
            command = getattr(importlib.import_module(module), attribute)
            if isinstance(command, typer.Typer):
                application.add_typer(command)
            else:
                application.command(name)(command)
    return application


app: TemplTyper  # made when first asked for (__getattr__)
_app: TemplTyper | None = None


def __getattr__(name: str) -> Any:
    """``app``, with every command, made when first asked for (the CLI's tests and completion use it)."""
    global _app
    if name == "app":
        if _app is None:
            _app = make_app()
        return _app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main(argv: list[str] | None = None) -> int:
    """Console entry point; returns the exit code.

    SIGTERM and SIGINT stop the run cleanly: no new batches, the workers are ended
    and reaped, nothing half-written, one line saying what was done, and the
    shell's exit status for the signal (143, 130). A reader of stdout that closes
    it early (``templ doctor | head -1``) ends the command quietly with 0.
    """
    PROGRESS.begin()
    pipe = StdoutPipe.current()
    with signals_raise():
        try:
            args = sys.argv[1:] if argv is None else argv
            application = _app_for(args)
            code = _run(application, argv, pipe)
            sys.stdout.flush()
            return code
        except BrokenPipeError:  # the reader of stdout left (``| head``): it has what it wanted
            silence_stdout()
            return EXIT_OK
        except Interrupted as stop:
            return _stopped(stop)


def _stopped(stop: Interrupted) -> int:
    """End every worker, say what was done, and leave with the signal's exit status."""
    executor = sys.modules.get("templ_pipeline.core.executor")  # not imported: no pool was ever started
    if executor is not None:
        executor.shutdown_pools(terminate=True)
        executor.shutdown_dask(terminate=True)
    stderr.print(f"interrupted by {stop.name}: {PROGRESS.describe()}", highlight=False, soft_wrap=True)
    pools = sys.modules.get("templ_pipeline.core.pools")
    if native_call.busy() or (pools is not None and pools.stuck_managers()):
        # RDKit is still embedding in a helper thread that cannot be stopped, or a pool's manager thread waits
        # for a result its ended worker never finished sending: leave without running interpreter
        # finalization, which would wait for it.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(stop.exit_code)
    return stop.exit_code


def _app_for(args: list[str]) -> TemplTyper:
    """The app ``args`` need: their command's alone, the root alone for ``--version`` (every command's module
    would import RDKit, numpy and the telemetry stack: 0.3 s), else every command (``--help`` and completion
    list them all, and a mistyped command is answered with their names)."""
    if _completing():
        return _full_app()
    if args and args[0] in COMMANDS:
        return make_app(args[0])
    if args[:1] == [VERSION_OPTION]:
        return make_app(only=VERSION_OPTION)  # no command has that name: the root and its options only
    return _full_app()


def _full_app() -> TemplTyper:
    application: TemplTyper = __getattr__("app")
    return application


def _completing() -> bool:
    """Whether the shell asks for completions (``_TEMPL_COMPLETE``): they come from every command."""
    return "_TEMPL_COMPLETE" in os.environ


def _run(application: TemplTyper, argv: list[str] | None, pipe: StdoutPipe | None = None) -> int:
    try:
        code = application(args=argv, prog_name=PROG_NAME, standalone_mode=False)
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
    except KeyboardInterrupt:  # raised by a native call that took SIGINT itself (RDKit): the same stop
        raise Interrupted(signal.SIGINT) from None
    except BrokenPipeError:
        raise
    except SystemExit as exit_:  # rich and typer end a write into a closed pipe so: see stdout_pipe
        if exit_.code == EXIT_ERROR and pipe is not None and pipe.reader_left():
            raise BrokenPipeError from None
        raise
    except Exception as exc:  # the last line of defence: one line, exit 1
        if _telemetry_setup_error(exc):  # a telemetry option the session cannot set up: bad input
            stderr.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            return EXIT_BAD_INPUT
        stderr.print(f"[bold red]error:[/] {type(exc).__name__}: {exc}", highlight=False)
        return EXIT_ERROR
    return code if isinstance(code, int) else EXIT_OK


def _telemetry_setup_error(error: Exception) -> bool:
    """Whether ``error`` is the telemetry session's bad input (only a command that imported the session raises it)."""
    session = sys.modules.get("templ_pipeline.telemetry.session")
    return session is not None and isinstance(error, session.TelemetrySetupError)
