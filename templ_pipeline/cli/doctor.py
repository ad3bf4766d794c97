"""``templ doctor``: the kernel limits on threads and processes, and the workers they allow."""

from __future__ import annotations

from typing import Annotated

import typer


def doctor(
    json_output: Annotated[bool, typer.Option("--json", help="Machine-readable report.")] = False,
    scheduler: Annotated[str | None, typer.Option(
        "--scheduler", help="Also report each worker of this Dask scheduler: its machine's binding limit "
                            "and headroom (JSON key dask_workers).")] = None,
) -> None:
    """Show the kernel limits on threads and processes, and the workers they allow."""
    from templ_pipeline import doctor as doctor_module

    raise typer.Exit(doctor_module.run(json_output, scheduler))
