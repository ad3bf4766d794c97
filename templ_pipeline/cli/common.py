"""What every ``templ`` command shares: the consoles, the exit codes, the line a signal prints, error lines.

Standard output carries only results (tables, the SDF of ``-o -``, the JSON of
``--json``); progress, warnings and logs go to stderr.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console

if TYPE_CHECKING:  # RDKit and the telemetry stack: imported by the commands that use them, when they run
    from rich.progress import Progress

    from templ_pipeline.core.template_library import TemplateLibrary
    from templ_pipeline.pose_output import PoseTarget
    from templ_pipeline.telemetry.session import TelemetrySession

EXIT_OK, EXIT_ERROR, EXIT_BAD_INPUT = 0, 1, 2

stdout = Console()
stderr = Console(stderr=True)


@dataclass
class RunProgress:
    """What the running command has done so far, for the line printed when a signal stops it."""

    stage: str = "starting"
    conformers_total: int = 0
    conformers_done: int = 0
    started: float = 0.0
    campaign: str = ""  # set while a campaign runs: what it has done and where its files are
    written: str = ""  # the command's output, once complete: a signal after it stops only the finishing

    def begin(self) -> None:
        """A new command: nothing done or written yet (a process may run several, as the CLI's tests do)."""
        for field in fields(self):
            setattr(self, field.name, field.default)
        self.started = time.monotonic()

    def describe(self) -> str:
        """What was done, and what was written, for the line printed when a signal stops the run."""
        elapsed = time.monotonic() - self.started if self.started else 0.0
        if self.campaign:
            return f"{self.campaign} in {elapsed:.1f} s"
        if self.written:  # e.g. while the last spans are exported to a collector that does not answer
            return f"stopped while finishing in {elapsed:.1f} s; {self.written} was written in full"
        if self.stage == "scoring":
            done = f"scored {self.conformers_done} of {self.conformers_total} conformers"
        else:
            done = f"stopped while {self.stage}"
        return f"{done} in {elapsed:.1f} s; no output written"


PROGRESS = RunProgress()


def stage(name: str, total: int = 0) -> None:
    """Record the stage the run is in (for the line a signal prints), with its conformer count."""
    PROGRESS.stage, PROGRESS.conformers_total, PROGRESS.conformers_done = name, total, 0


def wrote(what: str) -> None:
    """Record that the command's output (``what``: its path, or where it went) is complete."""
    PROGRESS.stage, PROGRESS.written = "finishing", what


def fail(message: str, code: int) -> typer.Exit:
    """Print ``error: message`` on stderr; the exit to raise with ``code``."""
    stderr.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def default_workers() -> int:
    """The CPUs this process may run on."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def start_progress(progress: Progress) -> None:
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


@dataclass(frozen=True)
class Reporting:
    """Where a run's summary goes: the human one to ``console`` (stderr when the SDF takes stdout), or JSON."""

    console: Console
    json_output: bool = False

    @classmethod
    def of(cls, target: PoseTarget, json_output: bool) -> Reporting:
        return cls(stderr if target.to_stdout else stdout, json_output)


def print_json(data: dict[str, Any]) -> None:
    """One JSON object on stdout, one line: plain text, no terminal styling, whatever stdout is."""
    sys.stdout.write(json.dumps(data) + "\n")
    sys.stdout.flush()


@contextmanager
def observed(session: TelemetrySession | None) -> Iterator[TelemetrySession | None]:
    """Run inside ``session``; say where the metrics are. None (the command called without the telemetry
    options, as a function) runs without telemetry."""
    if session is None:
        yield None
        return
    from templ_pipeline.telemetry.logs import get_logger, get_run_id
    from templ_pipeline.telemetry.session import TelemetrySetupError

    try:
        with session:
            if session.server is not None:
                get_logger("templ.cli").info("telemetry.metrics_serving", url=session.server.url,
                                             default_port_taken=session.default_port_taken)
                if stderr.is_terminal:
                    taken = "; the default port is another run's" if session.default_port_taken else ""
                    stderr.print(f"metrics: {session.server.url} (run {get_run_id()}{taken})", highlight=False)
            yield session
    except TelemetrySetupError as exc:
        raise fail(str(exc), EXIT_BAD_INPUT) from None


def read_library(path: Path, allow_large: bool = False) -> TemplateLibrary:
    """The template library of ``path``, with one line on stderr for the records left out."""
    from templ_pipeline.io import read_template_library

    library = read_template_library(path, allow_large=allow_large)
    warn_left_out(path, library)
    return library


def warn_left_out(path: Path, library: TemplateLibrary) -> None:
    """One line on stderr naming the template records left out (unreadable, 2D, duplicate), if any."""
    if library.problems:
        listed = ", ".join(f"record {p.record} {p.reason}" for p in library.problems[:5])
        more = f" and {len(library.problems) - 5} more" if len(library.problems) > 5 else ""
        stderr.print(f"warning: {path}: {len(library.problems)} of {len(library) + len(library.problems)} records "
                     f"left out ({listed}{more})", style="yellow", highlight=False, soft_wrap=True)
