"""A campaign on a 2-worker Dask LocalCluster against the local campaign (2 worker processes), same run.

Inputs: the bundled library (24 drug-like ligands, 32 molecules once stereoisomers are
enumerated) against the bundled Mpro template, 50 conformers each, through the Python API
(:func:`templ_pipeline.campaign.runner.screen`). Both are warmed first (the LocalCluster
started and its workers' templates prepared; the local pool is started by each campaign,
as the CLI does) and the variants are interleaved, best of ``repeats``.

Each task carries a whole query (0.2-1.5 s here), so the cluster's round trips are a small
share: the goal on this machine is at least 0.9x the local campaign. The LocalCluster runs in
a process of its own (scheduler and nannies), as a scheduler does on a cluster, so this
process is the driver alone: its CPU per query is given for its main thread (the dispatch
loop: submit, collect, write) and for the whole process (with the client's event loop).
"""

from __future__ import annotations

import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

from templ_pipeline.campaign.queries import read_queries
from templ_pipeline.campaign.runner import ScreenOptions, screen
from templ_pipeline.core.executor import shutdown_dask
from templ_pipeline.io import read_template

CONFORMERS = 50
GOAL = 0.9
CLUSTER = """
import sys
from distributed import LocalCluster
from templ_pipeline.core.pools import worker_env
if __name__ == "__main__":
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0", env=worker_env()) as cluster:
        print(cluster.scheduler_address, flush=True)
        sys.stdin.read()  # until the benchmark closes it
"""


def _data(name: str) -> Path:
    return Path(str(resources.files("templ_pipeline") / "data" / name))


def _campaign(template, options: ScreenOptions) -> dict:
    wall, main, process = time.perf_counter(), time.thread_time(), time.process_time()
    results = list(screen(read_queries(_data("screen_library.smi")), [template], options))
    wall, main, process = (time.perf_counter() - wall, time.thread_time() - main, time.process_time() - process)
    assert all(result.ok for result in results), [r.outcome.detail for r in results if not r.ok]
    kinds = {str(result.kind) for result in results}
    return {"seconds": wall, "queries": len(results), "kinds": sorted(kinds),
            "main_thread_ms_per_query": 1e3 * main / len(results),
            "process_ms_per_query": 1e3 * process / len(results)}


def run(repeats: int = 3) -> dict:
    template = read_template(_data("mpro_template.sdf"))
    local = ScreenOptions(num_conformers=CONFORMERS, workers=2, exact_workers=True)
    cluster = subprocess.Popen([sys.executable, "-c", CLUSTER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True)
    try:
        address = cluster.stdout.readline().strip()  # type: ignore[union-attr]
        if not address.startswith("tcp://"):
            raise RuntimeError(f"the LocalCluster process did not start (exit {cluster.poll()})")
        dask = ScreenOptions(num_conformers=CONFORMERS, workers=2, executor="dask", scheduler=address)
        warm = ScreenOptions(num_conformers=5, workers=2, executor="dask", scheduler=address)
        list(screen(["CCO", "CCCO"], [template], warm))
        runs: dict[str, list[dict]] = {"local_2": [], "dask_2": []}
        for _ in range(repeats):
            runs["local_2"].append(_campaign(template, local))
            runs["dask_2"].append(_campaign(template, dask))
    finally:
        shutdown_dask()
        cluster.stdin.close()  # type: ignore[union-attr]
        try:
            cluster.wait(timeout=30)
        except subprocess.TimeoutExpired:
            cluster.kill()
            cluster.wait(timeout=30)
    best = {name: min(found, key=lambda run: run["seconds"]) for name, found in runs.items()}
    ratio = best["local_2"]["seconds"] / best["dask_2"]["seconds"]
    return {
        "queries": best["local_2"]["queries"],
        "conformers_per_query": CONFORMERS,
        "seconds": {name: [round(run["seconds"], 2) for run in found] for name, found in runs.items()},
        "kinds": {name: run["kinds"] for name, run in best.items()},
        "dask_vs_local": round(ratio, 3),
        "driver_cpu_ms_per_query": {name: {"main_thread": round(run["main_thread_ms_per_query"], 2),
                                           "process": round(run["process_ms_per_query"], 2)}
                                    for name, run in best.items()},
        "goal": f"dask_2 at least {GOAL}x local_2 (same run, best of {repeats})",
        "met": ratio >= GOAL,
    }


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
