"""Shared benchmark inputs: the bundled pairs with 200 seeded conformers each."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

from rdkit import Chem

from templ_pipeline.core.conformers import generate_conformers
from templ_pipeline.io import examples


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


def median_seconds(run: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``repeats`` runs."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)
