"""The ``templ`` console script (and ``python -m templ_pipeline.cli``): what must happen before the CLI is imported.

Importing the CLI (RDKit, numpy, OpenTelemetry) takes about half a second. A
handler installed by the CLI module itself would leave that time to Python's
defaults (a ``KeyboardInterrupt`` traceback from inside an import), and installing
one at import time would change the signal handling of every program that imports
it. The parent's BLAS and OpenMP pools are limited here too, because numpy reads
the variables once, when it is imported (:mod:`templ_pipeline.parent_threads`).

A ``templ screen`` command line that looks runnable also starts its campaign's
workers here, as spares that do their imports while the parent does its own
(:mod:`templ_pipeline.campaign.spares`). Here rather than in the command: the
command's module needs RDKit for its options' types, so by the time it runs the
parent has spent most of its start-up, and a worker started then is ready a
quarter of a second later than one started now. The check of the command line is
cheap and partial (the command, ``--help``, the files that must exist, the worker
count, ``--executor dask``); a run that still ends in a usage error ends its
spares before it exits.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NoReturn

from templ_pipeline.interrupts import exit_while_ending, exit_while_starting, route_sigint
from templ_pipeline.parent_threads import limit_parent_pools

SCREEN = "screen"
HELP = ("--help", "-h")


def main() -> int:
    """Route SIGINT past RDKit's handlers, handle signals while starting, keep the parent's thread pools at one
    thread, start a campaign's spare workers, then run :func:`templ_pipeline.cli.root.main`."""
    route_sigint()  # first: before any thread starts, so that every thread inherits the blocked SIGINT
    from templ_pipeline.campaign import spares

    exit_while_starting(before_exit=spares.end)
    limit_parent_pools()
    try:
        spares.start(spares_wanted(sys.argv[1:], os.environ))
        from templ_pipeline.cli.root import main as run

        status = run()
        exit_while_ending(status)  # the exit handlers run next (leave): a signal there says what had happened
        return status
    finally:
        spares.end()


def run() -> NoReturn:
    """The ``templ`` console script: :func:`main`, then :func:`leave` with its exit status."""
    leave(main())


def leave(code: int) -> NoReturn:
    """Exit with ``code`` as the interpreter would, less the teardown of its modules (60 ms here after a campaign).

    What an exit must do is still done: the exit handlers run (the telemetry's last export, the log file's
    close, multiprocessing's reaping of its children) and standard output and error are flushed. While a
    thread other than a daemon's runs, the interpreter would wait for it: then this exits as usual.
    """
    if any(not thread.daemon for thread in threading.enumerate() if thread is not threading.main_thread()):
        sys.exit(code)
    atexit._run_exitfuncs()  # CPython's own call at exit; the module has no public name for it
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed, or its reader is gone
            pass
    os._exit(code)


def spares_wanted(args: Sequence[str], environ: Mapping[str, str]) -> int:
    """Spare campaign workers for the command line ``args``: its ``--workers``, else the CPUs, for a ``screen``
    that looks runnable (its template and queries files exist, its output directory is empty or resumed, no
    ``--help``, not on Dask); 0 for anything else."""
    if not args or args[0] != SCREEN or "_TEMPL_COMPLETE" in environ:
        return 0
    options = _options(args[1:])
    if options is None or options.get("--executor") == "dask":
        return 0
    template, queries, output = (options.get(name) for name in ("--template", "--queries", "--output-dir"))
    if template is None or queries is None or output is None:
        return 0
    if not (Path(template).is_file() and Path(queries).is_file()) or not _output_usable(Path(output), options):
        return 0
    workers = options.get("--workers")
    if workers is None:
        return len(os.sched_getaffinity(0))
    return int(workers) if workers.isdigit() and int(workers) >= 1 else 0


_SHORT = {"-t": "--template", "-q": "--queries", "-o": "--output-dir", "-w": "--workers"}
_VALUED = ("--template", "--queries", "--output-dir", "--workers", "--executor")
_FLAGS = ("--resume",)


def _options(args: Sequence[str]) -> dict[str, str] | None:
    """The values of the few options :func:`spares_wanted` reads (flags map to ""); None with ``--help``."""
    found: dict[str, str] = {}
    tokens = iter(args)
    for token in tokens:
        if token in HELP:
            return None
        name, equals, value = token.partition("=")
        if not equals and token[:2] in _SHORT and len(token) > 2:  # -w2
            name, value, equals = token[:2], token[2:], "="
        name = _SHORT.get(name, name)
        if name in _FLAGS:
            found[name] = ""
        elif name in _VALUED:
            found[name] = value if equals else next(tokens, "")
    return found


def _output_usable(directory: Path, options: dict[str, str]) -> bool:
    """An output directory a campaign can start in: absent, empty, or resumed."""
    if not directory.exists():
        return True
    return directory.is_dir() and ("--resume" in options or next(directory.iterdir(), None) is None)
