"""``templ stress``: load that drives the executor into worker reductions and fallbacks, for the dashboards."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from templ_pipeline.cli.common import default_workers, observed, stderr, stdout
from templ_pipeline.cli.options import WorkersOption
from templ_pipeline.cli.telemetry import with_telemetry

if TYPE_CHECKING:
    from templ_pipeline.telemetry.session import TelemetrySession


@with_telemetry
def stress(
    duration: Annotated[float, typer.Option("--duration", min=1, max=3600,
                                            help="Seconds of load; the command stops by itself.")] = 60.0,
    workers: WorkersOption = None,
    session: TelemetrySession | None = None,
) -> None:
    """Drive the executor into worker reductions and fallbacks for a while, so dashboards light up."""
    from templ_pipeline import stress as stress_module

    workers = workers or max(4, default_workers())
    if workers < 2:
        raise typer.BadParameter("stress needs at least 2 workers to have something to reduce",
                                 param_hint="'--workers'")
    with observed(session):
        summary = stress_module.run(duration, workers, log=lambda message: stderr.print(message, highlight=False))
    stdout.print_json(data=summary)
