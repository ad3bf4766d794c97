"""``templ demo``: the select-best workflow on a bundled template/query pair."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rdkit import Chem

from templ_pipeline.cli.common import EXIT_BAD_INPUT, Reporting, default_workers, fail, observed, stderr
from templ_pipeline.cli.options import JsonOption, MetricOption, WorkersOption, pose_target
from templ_pipeline.cli.select_best import parse_query, prepare_query, prepared_candidates, select_and_write
from templ_pipeline.cli.telemetry import with_telemetry
from templ_pipeline.core.conformers import DEFAULT_SEED
from templ_pipeline.core.preparation import PreparationOptions
from templ_pipeline.core.template_choice import ChoiceOptions
from templ_pipeline.core.vocabulary import Metric
from templ_pipeline.io import ExampleName, InputError, examples
from templ_pipeline.selection_summary import QueryIdentity

if TYPE_CHECKING:
    from templ_pipeline.telemetry.session import TelemetrySession


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
    workers = workers or default_workers()
    try:
        target = pose_target(output, json_output)
        reporting = Reporting.of(target, json_output)
        (stderr if json_output else reporting.console).print(
            f"demo {pair.name}: query {pair.query_smiles}, {num_conformers} conformers", highlight=False)
        identity = QueryIdentity(name=pair.name, smiles=Chem.MolToSmiles(Chem.MolFromSmiles(pair.query_smiles)))
        preparation = prepare_query(parse_query(pair.query_smiles), pair.query_smiles, PreparationOptions())
        with observed(session):
            from templ_pipeline.campaign.runner import as_library

            library = as_library([pair.template])
            candidates = prepared_candidates(preparation, identity, library, ChoiceOptions(), num_conformers,
                                             DEFAULT_SEED, workers, False)
            select_and_write(candidates, library, identity, target, reporting, workers=workers,
                             metric=metric, preparation=preparation, conformers_requested=num_conformers)
    except InputError as exc:
        raise fail(str(exc), EXIT_BAD_INPUT) from None
