"""select_best throughput on a 2-worker Dask LocalCluster against the local process pool (2 workers), same run.

Both executors are warmed before timing (pool and client started, RDKit imported in
every worker) and the variants are interleaved. A batch costs one scheduler round
trip; with 200 conformers on 2 workers a batch holds 25 conformers. The LocalCluster's
scheduler runs in this process, so its CPU time (reported per batch, with the client's)
is taken from the same cores as the workers'; on a cluster it runs on its own node.
Also reports the cold start of ``executor="dask"`` without a scheduler (a LocalCluster
sized from headroom).
"""

from __future__ import annotations

import json
import resource
import time

from distributed import LocalCluster

from benchmarks.common import pairs, sized
from benchmarks.goals import Goal
from templ_pipeline.core.executor import shutdown_dask
from templ_pipeline.core.scoring import choose_batch_size, select_best


def _cpu_seconds() -> float:
    """CPU time of this process: the driver, and for Dask the in-process scheduler and client threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run(n_pairs: int | None = None, n_conformers: int | None = None, repeats: int | None = None) -> dict:
    n_pairs = n_pairs or sized(5, 1)
    n_conformers = n_conformers or sized(200, 20)
    repeats = repeats or sized(3, 1)
    inputs = pairs(n_pairs, n_conformers)
    total = sum(pair.confs.GetNumConformers() for pair in inputs)
    batches = sum(-(-pair.confs.GetNumConformers() // choose_batch_size(pair.confs.GetNumConformers(), 2))
                  for pair in inputs)

    shutdown_dask()
    started = time.perf_counter()
    select_best(inputs[0].confs, inputs[0].template, n_workers=2, executor="dask")
    cold_local_cluster = time.perf_counter() - started
    shutdown_dask()

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address="127.0.0.1:0")
    try:
        address = cluster.scheduler_address
        variants = {
            "process_2": lambda: [select_best(p.confs, p.template, n_workers=2, exact_workers=True) for p in inputs],
            "dask_2": lambda: [select_best(p.confs, p.template, n_workers=2, executor="dask", scheduler=address)
                               for p in inputs],
        }
        for fn in variants.values():
            fn()  # warm-up
        samples: dict[str, list[float]] = {name: [] for name in variants}
        cpu: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(repeats):
            for name, fn in variants.items():
                started, cpu_started = time.perf_counter(), _cpu_seconds()
                fn()
                samples[name].append(time.perf_counter() - started)
                cpu[name].append(_cpu_seconds() - cpu_started)
    finally:
        shutdown_dask()
        cluster.close()
    seconds = {name: sorted(values)[len(values) // 2] for name, values in samples.items()}
    rate = {name: total / value for name, value in seconds.items()}
    return {
        "pairs": [pair.name for pair in inputs],
        "conformers_per_pair": n_conformers,
        "batches_per_sweep": batches,
        "conformers_per_second": {name: round(value, 1) for name, value in rate.items()},
        "ratio_dask_vs_process": round(rate["dask_2"] / rate["process_2"], 3),
        "extra_ms_per_batch_on_dask": round(1000 * (seconds["dask_2"] - seconds["process_2"]) / batches, 2),
        "driver_cpu_ms_per_batch": {name: round(1000 * sorted(values)[len(values) // 2] / batches, 2)
                                    for name, values in cpu.items()},
        "cold_start_local_cluster_seconds": round(cold_local_cluster, 3),
        "goals": [Goal("dask_2_vs_process_2", f"select_best on a 2-worker LocalCluster vs the 2-worker process pool, "
                       f"both warm: the same {total} conformers of {len(inputs)} pairs, median of {repeats}",
                       round(rate["dask_2"] / rate["process_2"], 3)).as_dict()],
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
