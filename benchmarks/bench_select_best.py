"""select_best throughput at 1 and 2 workers against a plain AlignMol loop, same run.

Goals on the 2-core reference machine: 1 worker within 5% of the plain loop,
2 workers at least 1.6x the plain loop. Also reports a thread pool (AlignMol holds
the GIL, so threads should give nothing: the reason the ladder skips them for
scoring) and the cold start of a process pool.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

from rdkit import Chem
from rdkit.Chem import rdShapeAlign

from benchmarks.common import Pair, median_seconds, pairs, sized
from benchmarks.goals import Comparison, Goal
from templ_pipeline.core.executor import shutdown_pools
from templ_pipeline.core.scoring import select_best


def plain_loop(pair: Pair) -> None:
    """The baseline: align a copy of every conformer, one after the other."""
    for conf in pair.confs.GetConformers():
        probe = Chem.Mol(pair.confs, confId=conf.GetId())
        rdShapeAlign.AlignMol(pair.template, probe, useColors=True)


def thread_loop(pair: Pair, threads: int = 2) -> None:
    """The plain loop split over a thread pool."""
    ids = [conf.GetId() for conf in pair.confs.GetConformers()]

    def chunk(part: list[int]) -> None:
        for conf_id in part:
            rdShapeAlign.AlignMol(pair.template, Chem.Mol(pair.confs, confId=conf_id), useColors=True)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(chunk, [ids[i::threads] for i in range(threads)]))


def run(n_pairs: int | None = None, n_conformers: int | None = None, repeats: int | None = None) -> dict:
    n_pairs = n_pairs or sized(5, 1)
    n_conformers = n_conformers or sized(200, 20)
    repeats = repeats or sized(3, 1)
    inputs = pairs(n_pairs, n_conformers)
    total = sum(pair.confs.GetNumConformers() for pair in inputs)

    shutdown_pools()
    started = time.perf_counter()
    select_best(inputs[0].confs, inputs[0].template, n_workers=2, exact_workers=True)  # a cold pool, whatever the work
    cold_two_workers = time.perf_counter() - started

    def each(fn):
        return lambda: [fn(pair) for pair in inputs]

    variants = {
        "plain_loop": each(plain_loop),
        "threads_2": each(thread_loop),
        "select_best_1": each(lambda p: select_best(p.confs, p.template, n_workers=1)),
        "select_best_2": each(lambda p: select_best(p.confs, p.template, n_workers=2, exact_workers=True)),
    }
    # Interleave the variants so drift on a shared machine hits all of them alike.
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            samples[name].append(median_seconds(fn, 1))
    seconds = {name: sorted(values)[len(values) // 2] for name, values in samples.items()}
    rate = {name: total / value for name, value in seconds.items()}
    same = f"the same {total} conformers of {len(inputs)} bundled pairs, median of {repeats}"
    goals = (Goal("select_best_1_vs_plain", "select_best(n_workers=1) vs the plain AlignMol loop: " + same,
                  round(rate["select_best_1"] / rate["plain_loop"], 3), Comparison.AT_LEAST, 0.95),
             Goal("select_best_2_vs_plain", "select_best(n_workers=2, exact_workers), warm pool, vs the plain "
                  "AlignMol loop: " + same, round(rate["select_best_2"] / rate["plain_loop"], 3),
                  Comparison.AT_LEAST, 1.6),
             Goal("threads_2_vs_plain", "the AlignMol loop on 2 threads vs on 1 (AlignMol holds the GIL): " + same,
                  round(rate["threads_2"] / rate["plain_loop"], 3)))
    return {
        "pairs": [pair.name for pair in inputs],
        "conformers_per_pair": n_conformers,
        "conformers_per_second": {name: round(value, 1) for name, value in rate.items()},
        "ratio_1_worker_vs_plain": round(rate["select_best_1"] / rate["plain_loop"], 3),
        "ratio_2_workers_vs_plain": round(rate["select_best_2"] / rate["plain_loop"], 3),
        "ratio_2_threads_vs_plain": round(rate["threads_2"] / rate["plain_loop"], 3),
        "cold_start_2_workers_seconds": round(cold_two_workers, 3),
        "goals": [goal.as_dict() for goal in goals],
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
