"""Upstream TEMPL's leave-one-out steps on given ligands, run in upstream's own environment.

Run by :mod:`benchmarks.bench_upstream` with upstream's checkout on ``PYTHONPATH`` and a Python that has
its dependencies (``rdkit==2024.09.6`` as upstream pins, ``numpy``, ``spyrmsd``). Its package is also named
``templ_pipeline``, so this file imports nothing of ours.

Per ligand, the steps of upstream's ``run_templ_pipeline_single`` (``benchmark/polaris/benchmark.py``)
with its defaults: the templates of the same canonical SMILES are left out, ``find_mcs`` picks one
template of the rest, ``constrained_embed`` makes 200 conformers on one worker pinned on the shared
core, ``select_best`` keeps the best by combo. The pose is written for RMSD in the caller; the time is the
ligand's, all three steps.

The queries are SMILES, as a user gives them (``SMILES name`` lines): no crystal coordinates reach upstream.

Usage: ``upstream_child.py QUERIES.smi LIBRARY.sdf[.gz] OUT.sdf [CONFORMERS]``
"""

from __future__ import annotations

import gzip
import sys
import time

from rdkit import Chem

# upstream's package (its checkout on PYTHONPATH), not ours
from templ_pipeline.core.mcs import constrained_embed, find_mcs
from templ_pipeline.core.scoring import select_best


def _read(path: str) -> list[Chem.Mol]:
    with gzip.open(path) if path.endswith(".gz") else open(path, "rb") as handle:
        return [mol for mol in Chem.ForwardSDMolSupplier(handle) if mol is not None]


def _predict(query: Chem.Mol, library: list[Chem.Mol], library_smiles: list[str],
             conformers: int) -> tuple[Chem.Mol | None, str]:
    """Upstream's pose of ``query`` (or None) and what happened."""
    own = Chem.MolToSmiles(query)
    templates = [mol for mol, smiles in zip(library, library_smiles, strict=True) if smiles != own]
    query_heavy = Chem.RemoveHs(Chem.Mol(query))
    index, smarts = find_mcs(query_heavy, templates)
    if index is None or smarts is None:
        return None, "mcs_failed"
    template = templates[index]
    confs = constrained_embed(query_heavy, template, smarts, conformers, 1, False)
    if confs is None or confs.GetNumConformers() == 0:
        return None, "no_conformers"
    best = select_best(confs, template, no_realign=False, n_workers=1, align_metric="combo")
    pose, _scores = best.get("combo", (None, {}))
    if pose is None:
        return None, "no_pose"
    pose.SetProp("upstream_template", template.GetProp("_Name") if template.HasProp("_Name") else str(index))
    return pose, "ok"


def _queries(path: str) -> list[Chem.Mol]:
    queries = []
    with open(path) as handle:
        for line in handle:
            smiles, name = line.split()
            mol = Chem.MolFromSmiles(smiles)
            mol.SetProp("_Name", name)
            queries.append(mol)
    return queries


def main(argv: list[str]) -> int:
    queries, library = _queries(argv[1]), _read(argv[2])
    conformers = int(argv[4]) if len(argv) > 4 else 200
    library_smiles = [Chem.MolToSmiles(mol) for mol in library]
    with Chem.SDWriter(argv[3]) as writer:
        for query in queries:
            name = query.GetProp("_Name")
            started = time.perf_counter()
            try:
                pose, outcome = _predict(query, library, library_smiles, conformers)
            except Exception as error:  # upstream's own benchmark records any error as the ligand's outcome
                pose, outcome = None, f"error: {type(error).__name__}: {error}"
            seconds = time.perf_counter() - started
            record = Chem.Mol(pose) if pose is not None else Chem.Mol(query)  # no pose: the caller counts a failure
            record.SetProp("_Name", name)
            record.SetProp("upstream_outcome", outcome)
            record.SetProp("upstream_seconds", f"{seconds:.3f}")
            writer.write(record)
            writer.flush()
            print(f"{name} {outcome} {seconds:.2f} s", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
