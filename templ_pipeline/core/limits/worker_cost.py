"""What one pool worker costs in kernel tasks.

Measured on the 2-CPU development machine (Python 3.11, fork start method): a
``ProcessPoolExecutor`` worker that imports ``rdkit.Chem.AllChem`` runs 2 tasks: its
main thread and one OpenBLAS thread, because AllChem imports numpy and OpenBLAS
starts a pool of (CPUs - 1) threads (CPUs from the affinity mask, or from
``OPENBLAS_NUM_THREADS``/``GOTO_NUM_THREADS``/``OMP_NUM_THREADS``: with
``OPENBLAS_NUM_THREADS=1`` or ``taskset -c 0`` the worker runs 1 task). Hence the
model ``1 + (blas threads - 1)``, checked against :func:`measure_process_worker_tasks`
by the tests. The model is not capped at OpenBLAS's build-time ``MAX_THREADS``
(64 for numpy's wheels), so it errs on the safe side on very large machines.

A ``ProcessPoolExecutor`` also adds threads in the parent: the executor-manager
thread and the call queue's feeder thread; the spawn start method adds a
resource-tracker process and forkserver adds the fork server as well. A thread-pool
worker, or a native RDKit thread, is one task and no helpers.

A Dask ``LocalCluster`` of single-threaded process workers (distributed 2026.8,
``processes=True``, measured with :func:`measure_local_cluster_tasks`) costs more: its
nannies live in the driver, 3 threads each, and each worker process runs 3 tasks before
its first task and 4 after (main thread, event loop, offload thread, the task thread),
plus its BLAS threads beyond the first. Once per cluster the driver adds 2 threads
(the scheduler's and the client's event loops) and Dask's spawn start method a
resource tracker: 10 tasks for one worker, 16 for two, 28 for four.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing.context import BaseContext

from templ_pipeline.core import pools
from templ_pipeline.core.limits.procfs import parse_status, read_bytes

EXECUTOR_KINDS = ("process", "thread", "dask")
POOL_HELPER_THREADS = 2  # executor-manager thread + queue feeder thread
DASK_NANNY_THREADS = 3  # per LocalCluster worker, in the driver
DASK_WORKER_TASKS = 4  # per LocalCluster worker process, once it has run a task
DASK_CLUSTER_THREADS = 2  # once per LocalCluster, in the driver: scheduler and client event loops
DASK_HELPER_PROCESSES = 1  # the resource tracker of Dask's spawn start method
START_METHOD_HELPER_TASKS = {"fork": 0, "spawn": 1, "forkserver": 2}
_BLAS_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS")


@dataclass(frozen=True, slots=True)
class WorkerCost:
    """Tasks per worker and tasks the pool adds once, in the parent."""

    kind: str  # "process" | "thread" | "dask" (a LocalCluster)
    per_worker: int
    pool_helpers: int  # threads the pool adds in the parent
    helper_processes: int = 0  # processes the start method adds (fork server, resource tracker)

    @property
    def fixed_tasks(self) -> int:
        """Tasks the pool adds once, whatever its size."""
        return self.pool_helpers + self.helper_processes


def worker_blas_threads() -> int:
    """OpenBLAS threads of a process worker, which starts with :func:`pools.worker_env`."""
    return blas_threads({**os.environ, **pools.worker_env()})


def blas_threads(env: Mapping[str, str] | None = None) -> int:
    """Threads OpenBLAS starts in a fresh process with ``env`` (default: this process's environment)."""
    environ: Mapping[str, str] = os.environ if env is None else env
    for var in _BLAS_THREAD_VARS:
        value = environ.get(var, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    return len(os.sched_getaffinity(0)) or 1


def default_start_method() -> str:
    """The start method the project's process pools use."""
    return pools.start_method()


def worker_cost(kind: str, start_method: str | None = None) -> WorkerCost:
    """The cost model for ``kind`` ("process", "thread" or "dask": a LocalCluster's) workers."""
    if kind == "thread":
        return WorkerCost("thread", 1, 0)
    if kind == "dask":
        per_worker = DASK_NANNY_THREADS + DASK_WORKER_TASKS + worker_blas_threads() - 1
        return WorkerCost("dask", per_worker, DASK_CLUSTER_THREADS, DASK_HELPER_PROCESSES)
    if kind != "process":
        raise ValueError(f"executor_kind must be one of {EXECUTOR_KINDS}, not {kind!r}")
    method = start_method or default_start_method()
    method_tasks = START_METHOD_HELPER_TASKS.get(method, max(START_METHOD_HELPER_TASKS.values()))
    return WorkerCost("process", worker_blas_threads(), POOL_HELPER_THREADS, method_tasks)


def _worker_tasks() -> int:
    """Run in a worker: import what a scoring worker imports, touch BLAS, count own threads."""
    try:
        import numpy
        from rdkit import Chem
        from rdkit.Chem import AllChem

        AllChem.Compute2DCoords(Chem.MolFromSmiles("c1ccccc1O"))
        numpy.ones((256, 256)) @ numpy.ones((256, 256))
    except ImportError:
        pass
    return parse_status(read_bytes("/proc/self/status")).threads or 1


def measure_process_worker_tasks(mp_context: BaseContext | None = None) -> int:
    """Start a one-worker pool as the project starts them and return the tasks its worker runs."""
    with pools.worker_environment(), ProcessPoolExecutor(1, mp_context=mp_context or pools.pool_context()) as pool:
        return pool.submit(_worker_tasks).result(timeout=120)


def measure_local_cluster_tasks(workers: int) -> int:
    """Start a LocalCluster of ``workers`` as the project starts them, run a task on each worker, and
    return the tasks it added: driver threads, worker processes' tasks, the resource tracker."""
    import psutil
    from distributed import Client, LocalCluster

    before = parse_status(read_bytes("/proc/self/status")).threads or 1
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address="127.0.0.1:0", env=pools.worker_env())
    try:
        with Client(cluster, set_as_default=False) as client:
            # a task on each worker: its imports, its BLAS pool and its task thread
            client.gather([client.submit(_worker_tasks, workers=[address], pure=False)
                           for address in client.nthreads()])
            driver = parse_status(read_bytes("/proc/self/status")).threads or 1
            children: int = sum(child.num_threads() for child in psutil.Process().children(recursive=True))
    finally:
        cluster.close(timeout=10)
    return driver - before + children
