"""A campaign on a 2-worker Dask LocalCluster against the local campaign (2 worker processes), same run.

Inputs: the bundled library (24 drug-like ligands, 32 molecules once stereoisomers are
enumerated) against the bundled Mpro template, 50 conformers each, through the Python API
(:func:`templ_pipeline.campaign.runner.screen`). Both are warmed first (the LocalCluster
started and its workers' templates prepared; the local pool is started by each campaign,
as the CLI does) and the variants are interleaved, best of ``repeats``.

Each task carries a whole query (0.2-1.5 s here), so the cluster's round trips are a small
share: the goal on this machine is at least 0.9x the local campaign, with at most 2 ms of the
driver's CPU per query (the whole process). The LocalCluster runs in
a process of its own (scheduler and nannies), as a scheduler does on a cluster, so this
process is the driver alone: its CPU per query is given for its main thread (the dispatch
loop: submit, collect, write) and for the whole process (with the client's event loop).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

from benchmarks.common import sized
from benchmarks.goals import Comparison, Goal
from templ_pipeline.campaign.queries import read_queries
from templ_pipeline.campaign.runner import ScreenOptions, screen
from templ_pipeline.core.executor import shutdown_dask
from templ_pipeline.io import read_template

CONFORMERS = 50
GOAL = 0.9
DRIVER_CPU_GOAL_MS = 2.0
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


def _campaign(template, options: ScreenOptions, queries: Path) -> dict:
    wall, main, process = time.perf_counter(), time.thread_time(), time.process_time()
    results = list(screen(read_queries(queries), [template], options))
    wall, main, process = (time.perf_counter() - wall, time.thread_time() - main, time.process_time() - process)
    assert all(result.ok for result in results), [r.outcome.detail for r in results if not r.ok]
    kinds = {str(result.kind) for result in results}
    return {"seconds": wall, "queries": len(results), "kinds": sorted(kinds),
            "main_thread_ms_per_query": 1e3 * main / len(results),
            "process_ms_per_query": 1e3 * process / len(results)}


def _queries(directory: Path) -> Path:
    """The bundled library, or its first 3 queries at the quick size."""
    lines = [line for line in _data("screen_library.smi").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    path = directory / "queries.smi"
    path.write_text("\n".join(lines[:sized(None, 3)]) + "\n")
    return path


def run(repeats: int | None = None, conformers: int | None = None) -> dict:
    repeats = repeats or sized(3, 1)
    conformers = conformers or sized(CONFORMERS, 5)
    template = read_template(_data("mpro_template.sdf"))
    local = ScreenOptions(num_conformers=conformers, workers=2, exact_workers=True)
    directory = tempfile.TemporaryDirectory()
    queries = _queries(Path(directory.name))
    cluster = subprocess.Popen([sys.executable, "-c", CLUSTER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True)
    try:
        address = cluster.stdout.readline().strip()  # type: ignore[union-attr]
        if not address.startswith("tcp://"):
            raise RuntimeError(f"the LocalCluster process did not start (exit {cluster.poll()})")
        dask = ScreenOptions(num_conformers=conformers, workers=2, executor="dask", scheduler=address)
        warm = ScreenOptions(num_conformers=5, workers=2, executor="dask", scheduler=address)
        list(screen(["CCO", "CCCO"], [template], warm))
        runs: dict[str, list[dict]] = {"local_2": [], "dask_2": []}
        for _ in range(repeats):
            runs["local_2"].append(_campaign(template, local, queries))
            runs["dask_2"].append(_campaign(template, dask, queries))
    finally:
        directory.cleanup()
        shutdown_dask()
        cluster.stdin.close()  # type: ignore[union-attr]
        try:
            cluster.wait(timeout=30)
        except subprocess.TimeoutExpired:
            cluster.kill()
            cluster.wait(timeout=30)
    best = {name: min(found, key=lambda run: run["seconds"]) for name, found in runs.items()}
    ratio = best["local_2"]["seconds"] / best["dask_2"]["seconds"]
    queries_done = best["local_2"]["queries"]
    driver = round(best["dask_2"]["process_ms_per_query"], 2)
    return {
        "queries": best["local_2"]["queries"],
        "conformers_per_query": conformers,
        "seconds": {name: [round(run["seconds"], 2) for run in found] for name, found in runs.items()},
        "kinds": {name: run["kinds"] for name, run in best.items()},
        "dask_vs_local": round(ratio, 3),
        "driver_cpu_ms_per_query": {name: {"main_thread": round(run["main_thread_ms_per_query"], 2),
                                           "process": round(run["process_ms_per_query"], 2)}
                                    for name, run in best.items()},
        "goal": f"dask_2 at least {GOAL}x local_2 (same run, best of {repeats})",
        "met": ratio >= GOAL,
        "goals": [
            Goal("dask_2_vs_local_2", f"a campaign on a 2-worker LocalCluster vs the local 2-worker campaign: the same "
                 f"{queries_done} queries and isomers, {conformers} conformers each, best of {repeats}",
                 round(ratio, 3), Comparison.AT_LEAST, GOAL).as_dict(),
            Goal("dask_driver_cpu_per_query", f"the Dask campaign driver's CPU (whole process) over its "
                 f"{queries_done} queries (absolute)", driver, Comparison.AT_MOST, DRIVER_CPU_GOAL_MS, "ms").as_dict(),
        ],
    }


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
