"""``templ dashboards export DIR``: the files an operator deploys, out of the installed package.

The Grafana dashboard JSON and provisioning, the Prometheus alert rules, scrape and
target-discovery configuration and the compose stack ship inside the wheel as
package data of ``templ_pipeline.dashboards``; this copies them out with the layout
of the repository's ``dashboards/`` folder, so the paths in the README and in the
compose file hold for an installed copy too.
"""

from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path, PurePosixPath
from typing import Annotated

import typer

from templ_pipeline.cli.help import TemplTyper
from templ_pipeline.errors import InputError
from templ_pipeline.safe_files import check_target, write_atomically

__all__ = ["DEPLOYED", "app", "deployed_files", "export"]

#: The folders of ``templ_pipeline.dashboards`` that hold deployable files.
DEPLOYED = ("grafana", "prometheus", "compose")

app = TemplTyper(name="dashboards", help="The Grafana dashboard and Prometheus rules for operators.",
                  no_args_is_help=True)


def deployed_files() -> dict[PurePosixPath, Traversable]:
    """Every deployable file of the installed package, by its path under ``dashboards/``."""
    root = resources.files("templ_pipeline.dashboards")
    found: dict[PurePosixPath, Traversable] = {}

    def walk(node: Traversable, relative: PurePosixPath) -> None:
        for child in node.iterdir():
            if child.is_dir():
                if child.name != "__pycache__":
                    walk(child, relative / child.name)
            elif not child.name.endswith((".py", ".pyc")):
                found[relative / child.name] = child

    for folder in DEPLOYED:
        walk(root / folder, PurePosixPath(folder))
    return dict(sorted(found.items()))


def export(directory: Path, *, overwrite: bool = False) -> list[Path]:
    """Copy the deployable files under ``directory`` (created); the paths written.

    An existing file is replaced only with ``overwrite``, and never when it is not a
    regular file; every target is checked before the first file is written.
    """
    files = deployed_files()
    if not files:
        raise InputError("templ_pipeline.dashboards: this installation has no dashboard files")
    if directory.exists() and not directory.is_dir():
        raise InputError(f"{directory}: exists and is not a directory")
    targets = {relative: directory.joinpath(*relative.parts) for relative in files}
    existing = [path for path in targets.values() if path.is_symlink() or path.exists()]
    if existing and not overwrite:
        raise InputError(f"{existing[0]}: exists ({len(existing)} of the {len(files)} files do); "
                         "pass --overwrite to replace them")
    for path in existing:
        check_target(path)  # a symlink, device or directory in the way is refused, never replaced
    written = []
    for relative, source in files.items():
        target = targets[relative]
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"{target.parent}: cannot create ({exc.strerror})") from None
        written.append(write_atomically(target, source.read_bytes()))
    return written


@app.command("export")
def export_command(
    directory: Annotated[Path, typer.Argument(help="Where to write them (created if missing).")],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace files already there.")] = False,
) -> None:
    """Write the dashboard JSON, Grafana provisioning, Prometheus rules and scrape configuration to DIR."""
    try:
        written = export(directory, overwrite=overwrite)
    except InputError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    for path in written:
        typer.echo(path)
