"""Shared benchmark inputs (the bundled pairs, Polaris Mpro pairs) and the quick size for checking code paths.

``TEMPL_BENCH_QUICK=1`` shrinks every benchmark to seconds (a few queries, conformers and
repeats): the code paths run and the goals table renders, but the numbers mean nothing.
"""

from __future__ import annotations

import gzip
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from rdkit import Chem

from templ_pipeline.core.conformers import generate_conformers
from templ_pipeline.core.template_library import identity_key
from templ_pipeline.io import examples

QUICK_ENV = "TEMPL_BENCH_QUICK"
LIGANDS_ENV = "TEMPL_BENCH_LIGANDS"
POLARIS = Path(__file__).parent / "data" / "polaris" / "train_sarsmols.sdf.gz"
T = TypeVar("T")


def quick() -> bool:
    """Whether ``TEMPL_BENCH_QUICK`` asks for the quick size (set, and neither empty nor ``0``)."""
    return os.environ.get(QUICK_ENV, "") not in ("", "0")


def sized(full: T, small: T) -> T:
    """``small`` at the quick size, else ``full``."""
    return small if quick() else full


def leave_one_out_ligands(default: int) -> int | None:
    """How many Polaris ligands a leave-one-out benchmark predicts: ``TEMPL_BENCH_LIGANDS`` (a count, or ``all``:
    every distinct molecule, None), else ``default``. ``ValueError`` names the variable when it is neither."""
    value = os.environ.get(LIGANDS_ENV, "").strip()
    if not value:
        return default
    if value == "all":
        return None
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{LIGANDS_ENV}={value!r}: a count of ligands (at least 1) or 'all'")
    return int(value)


@dataclass(frozen=True)
class Pair:
    name: str
    template: Chem.Mol
    confs: Chem.Mol


def pairs(n_pairs: int = 5, n_conformers: int = 200) -> list[Pair]:
    """The first ``n_pairs`` bundled examples with ``n_conformers`` conformers each."""
    return [
        Pair(example.name, example.template, generate_conformers(example.query_smiles, n_conformers, seed=42))
        for example in examples()[:n_pairs]
    ]


def polaris_pairs(n_pairs: int = 25, n_conformers: int = 200) -> list[Pair]:
    """``n_pairs`` Polaris Mpro pairs, chosen by position: the query is every k-th distinct molecule of
    :data:`POLARIS` (its SMILES, ``n_conformers`` seeded conformers), the template the next distinct
    molecule in file order (its crystal pose; neighbours in the file are mostly analogues)."""
    with gzip.open(POLARIS) as handle:
        records = [mol for mol in Chem.ForwardSDMolSupplier(handle) if mol is not None]
    first: dict[str, int] = {}
    for index, mol in enumerate(records):
        first.setdefault(identity_key(mol), index)
    distinct = sorted(first.values())
    step = max(1, (len(distinct) - 1) // n_pairs)
    chosen = list(range(0, len(distinct) - 1, step))[:n_pairs]
    return [Pair(f"polaris_{distinct[at] + 1}", records[distinct[at + 1]],
                 generate_conformers(Chem.MolToSmiles(records[distinct[at]]), n_conformers, seed=42))
            for at in chosen]


def median_seconds(run: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``repeats`` runs."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)
