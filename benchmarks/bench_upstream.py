"""Our defaults against upstream TEMPL itself: the same leave-one-out ligands, same machine, same run.

``bench_templates`` sets our configurations against each other; this one runs upstream TEMPL's own code
(``fulopjoz/templ-pipeline``) beside our defaults, so "better than upstream" is measured here, not quoted.
It needs upstream's checkout and a Python with its dependencies, so it is not part of ``make bench``:
``make bench-upstream UPSTREAM=/path/to/templ-pipeline`` makes that environment (``.venv-upstream``:
``rdkit==2024.09.6``, the release upstream pins, on which its pinned embedding works) and runs this.
Environment: ``TEMPL_UPSTREAM`` (the checkout), ``TEMPL_UPSTREAM_PYTHON`` (that environment's Python).

Equal work, equal conditions:

- the ligands: ``bench_templates``' leave-one-out subset, each given to both as the SMILES of its crystal
  pose (as a user gives a query), with the whole Polaris file as the template library, the query's own
  records left out (upstream: same canonical SMILES; ours: ``--exclude-identical``);
- upstream: :mod:`benchmarks.upstream_child`, the steps of its leave-one-out benchmark (``find_mcs`` over
  the library, ``constrained_embed`` of 200 conformers, ``select_best`` by combo), one worker per
  ligand, two ligands at a time as our campaign runs two workers;
- ours: ``templ screen`` with the defaults at 2 workers, one worker per query;
- both poses get the same heavy-atom RMSD in place to the crystal pose
  (:func:`templ_pipeline.reference.rmsd_in_place`); a ligand without a pose is a failure.

Goals (the issue's): more ligands under 2 A than upstream, and a median time per ligand no worse.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from rdkit import Chem

from benchmarks.bench_templates import LIBRARY, SUCCESS_RMSD, _campaign, _inputs, _records, subset
from benchmarks.common import leave_one_out_ligands, quick
from benchmarks.goals import Comparison, Goal
from templ_pipeline.reference import rmsd_in_place

CHILD = Path(__file__).with_name("upstream_child.py")
PARALLEL = 2  # upstream processes at once, one ligand each: as our campaign's 2 workers


def _upstream_environment() -> tuple[Path, str]:
    checkout, python = os.environ.get("TEMPL_UPSTREAM"), os.environ.get("TEMPL_UPSTREAM_PYTHON")
    if not checkout or not python:
        raise RuntimeError("set TEMPL_UPSTREAM (upstream's checkout) and TEMPL_UPSTREAM_PYTHON (a Python with its "
                           "dependencies), or run make bench-upstream UPSTREAM=/path/to/templ-pipeline")
    if not (Path(checkout) / "templ_pipeline" / "core" / "mcs.py").is_file():
        raise RuntimeError(f"{checkout}: not a checkout of upstream TEMPL (no templ_pipeline/core/mcs.py)")
    return Path(checkout), python


def upstream(queries: Path, directory: Path, conformers: int = 200) -> list[Chem.Mol]:
    """Upstream's pose (or its query, when it made none) per ligand, each with its outcome and seconds."""
    checkout, python = _upstream_environment()
    lines = queries.read_text().splitlines(keepends=True)
    parts = [directory / f"upstream_{part}.smi" for part in range(PARALLEL)]
    for part, path in enumerate(parts):
        path.write_text("".join(lines[part::PARALLEL]))
    environment = {**os.environ, "PYTHONPATH": str(checkout), "OMP_NUM_THREADS": "1"}
    children = []
    for path in parts:
        # its log to a file: a pipe read only after the other child ends could fill and stall this one's clock
        with path.with_suffix(".log").open("w") as log:
            children.append(subprocess.Popen([python, str(CHILD), str(path), str(LIBRARY),
                                              str(path.with_suffix(".sdf")), str(conformers)], env=environment,
                                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log))
    try:
        for child, path in zip(children, parts, strict=True):
            if child.wait(timeout=7200) != 0:
                errors = path.with_suffix(".log").read_text()[-2000:]
                raise RuntimeError(f"upstream TEMPL failed ({child.returncode}): {errors}")
    finally:
        for child in children:  # the other one, when one failed or ran out of time
            if child.poll() is None:
                child.kill()
                child.wait(timeout=30)  # SIGKILL ends it; a bound all the same
    return [mol for path in parts for mol in Chem.SDMolSupplier(str(path.with_suffix(".sdf"))) if mol is not None]


def upstream_figures(poses: list[Chem.Mol], reference: Path) -> dict[str, object]:
    """Success rate, median RMSD and median seconds per ligand of upstream's poses."""
    crystal = {mol.GetProp("_Name"): mol for mol in Chem.SDMolSupplier(str(reference))}
    rmsds: list[float] = []
    outcomes: dict[str, int] = {}
    for pose in poses:
        outcome = pose.GetProp("upstream_outcome")
        kind = outcome.split(":")[0]  # "error: <the exception>" counts as "error"
        outcomes[kind] = outcomes.get(kind, 0) + 1
        rmsd = rmsd_in_place(pose, crystal[pose.GetProp("_Name")]) if outcome == "ok" else None
        rmsds.append(float("inf") if rmsd is None else rmsd)
    return {
        "ligands": len(poses),
        "success_rate": round(sum(rmsd < SUCCESS_RMSD for rmsd in rmsds) / len(rmsds), 4),
        "median_rmsd": round(statistics.median(rmsds), 3),
        "median_seconds_per_ligand_one_worker": round(
            statistics.median(float(pose.GetProp("upstream_seconds")) for pose in poses), 2),
        "outcomes": outcomes,
    }


def run(size: int | None = None) -> dict[str, object]:
    """Upstream TEMPL and our defaults on the same leave-one-out ligands, in this order, same run."""
    _upstream_environment()  # before anything runs
    records = _records()
    chosen = subset(records, size or (4 if quick() else leave_one_out_ligands(80)))
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        queries, reference = _inputs(records, chosen, root)
        print(f"  upstream TEMPL on {len(chosen)} ligands ...", file=sys.stderr, flush=True)
        theirs = upstream_figures(upstream(queries, root), reference)
        print(f"  ours (defaults) on {len(chosen)} ligands ...", file=sys.stderr, flush=True)
        ours = _campaign(queries, reference, root / "ours")
    success = round(ours["success_rate"] - float(theirs["success_rate"]), 4)  # type: ignore[arg-type]
    seconds = round(ours["median_seconds_per_ligand_one_worker"]
                    / float(theirs["median_seconds_per_ligand_one_worker"]), 3)  # type: ignore[arg-type]
    same = (f"{len(chosen)} Polaris ligands, leave-one-out against the 770-ligand library, 200 conformers, "
            "two ligands at a time on one worker each")
    return {
        "ligands": len(chosen),
        "upstream": theirs,
        "ours": ours,
        "goals": [goal.as_dict() for goal in (
            Goal("success_vs_upstream", "our success rate under 2 A minus upstream TEMPL's: " + same,
                 success, Comparison.ABOVE, 0.0, ""),
            Goal("seconds_vs_upstream", "our median seconds per ligand over upstream TEMPL's: " + same,
                 seconds, Comparison.AT_MOST, 1.0),
        )],
    }
