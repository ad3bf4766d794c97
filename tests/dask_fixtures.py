"""Real Dask clusters for the dask tests: a LocalCluster of two single-threaded process workers on
127.0.0.1, a bare ``dask scheduler`` process, and a killer of the workers under chosen queries."""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import dask
import pytest
from distributed import Client, LocalCluster
from distributed.diagnostics.plugin import SchedulerPlugin
from ports import free_port

from templ_pipeline.core.dask_backend import DaskFailure, check_reachable
from templ_pipeline.core.executor import shutdown_dask


@dataclass
class Cluster:
    address: str
    client: Client

    def worker_pids(self) -> dict[str, int]:
        return self.client.run(os.getpid)


@pytest.fixture(scope="module")
def dask_cluster() -> Iterator[Cluster]:
    """Closed in teardown, after the sessions the pipeline opened on it."""
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address="127.0.0.1:0")
    client = Client(cluster, set_as_default=False)
    try:
        yield Cluster(cluster.scheduler_address, client)
    finally:
        shutdown_dask()
        client.close()
        cluster.close()


def closed_port() -> str:
    """The address of a free TCP port on 127.0.0.1 that nothing listens on."""
    return f"tcp://127.0.0.1:{free_port()}"


def wait_for_scheduler(address: str, scheduler: subprocess.Popen, timeout: float = 60,
                       why: Callable[[], str] = lambda: "") -> None:
    """Until the ``dask scheduler`` process listens on ``address`` (workers started before it would wait out
    their connect retries); what ``why`` says then (its log, say) goes into the error when it does not."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            check_reachable(address, timeout=1.0)
            return
        except DaskFailure:
            if time.monotonic() > deadline or scheduler.poll() is not None:
                raise RuntimeError(f"dask scheduler did not listen on {address}: {why()}") from None
            time.sleep(0.2)


@contextlib.contextmanager
def bare_scheduler() -> Iterator[str]:
    """A ``dask scheduler`` process on 127.0.0.1 with no worker; its address. Ended (and reaped) on exit."""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    scheduler = subprocess.Popen(
        [str(Path(sys.executable).with_name("dask")), "scheduler", "--host", "127.0.0.1", "--port", str(port),
         "--dashboard-address", "127.0.0.1:0"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for_scheduler(address, scheduler)
        yield address
    finally:
        scheduler.terminate()
        try:
            scheduler.wait(timeout=15)
        except subprocess.TimeoutExpired:
            scheduler.kill()
            scheduler.wait(timeout=15)


_PROBE_TOPIC = "templ-test-killer-probe"


class QueryKiller:
    """Kills the worker process of every query start ``select`` picks (as the OOM killer would).

    It listens on the campaign's own start announcements (``templ-query-started``) through a client
    of its own, so it knows the worker process the moment a query starts on it.
    """

    def __init__(self, address: str, select: Callable[[int, int], bool]) -> None:
        from templ_pipeline.campaign.dask_task import START_TOPIC

        self.kills: list[tuple[int, int]] = []  # (query index, worker pid)
        self._select = select
        self._starts: dict[int, int] = {}
        self._probed = threading.Event()
        self._client = Client(address, timeout=10, set_as_default=False)
        self._client.subscribe_topic(START_TOPIC, self._on_start)
        self._wait_until_subscribed()

    def _wait_until_subscribed(self) -> None:
        """A subscription is a message the client sends without waiting for the scheduler: a query that starts
        before the scheduler took it in is never heard of (the killer then kills nothing). The scheduler takes
        one client's messages in order, so once an event of a topic subscribed after it comes back, it is in."""
        self._client.subscribe_topic(_PROBE_TOPIC, lambda event: self._probed.set())
        deadline = time.monotonic() + 30
        while not self._probed.wait(0.2):
            assert time.monotonic() < deadline, "the scheduler never took in the killer's subscription"
            self._client.log_event(_PROBE_TOPIC, {"probe": True})

    def _on_start(self, event: tuple[float, dict]) -> None:
        message = event[1]
        index = int(message["index"])
        self._starts[index] = self._starts.get(index, 0) + 1
        if self._select(index, self._starts[index]):
            self.kills.append((index, int(message["pid"])))
            os.kill(int(message["pid"]), signal.SIGKILL)

    def close(self) -> None:
        self._client.close()


@contextlib.contextmanager
def dask_workers(address: str, count: int, *flags: str) -> Iterator[list[subprocess.Popen]]:
    """``count`` single-threaded ``dask worker`` processes on 127.0.0.1 joined to ``address`` (``flags`` such
    as ``--no-nanny``), once the scheduler sees them; killed and reaped on exit."""
    workers = [subprocess.Popen(
        [str(Path(sys.executable).with_name("dask")), "worker", address, "--nthreads", "1", "--host", "127.0.0.1",
         "--dashboard-address", "127.0.0.1:0", *flags],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        for _ in range(count)]
    try:
        with Client(address, timeout=10, set_as_default=False) as client:
            client.wait_for_workers(count, timeout=60)
        yield workers
    finally:
        for worker in workers:
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(timeout=15)


class TaskSizes(SchedulerPlugin):
    """On the scheduler: the pickled size of every task it takes in (its function and arguments), by key."""

    name = "templ-test-task-sizes"

    def __init__(self) -> None:
        self.sizes: dict[str, int] = {}

    def update_graph(self, scheduler, *, tasks, **kwargs) -> None:
        for key in tasks:
            self.sizes[str(key)] = len(pickle.dumps(scheduler.tasks[key].run_spec))


def task_sizes(client: Client) -> dict[str, int]:
    """What the scheduler's :class:`TaskSizes` recorded so far."""
    return client.run_on_scheduler(lambda dask_scheduler: dict(dask_scheduler.plugins[TaskSizes.name].sizes))


GATE_PRELOAD = """
import asyncio
import os

async def dask_setup(worker):
    while not os.path.exists({gate!r}):
        await asyncio.sleep(0.1)
"""


@contextlib.contextmanager
def gated_cluster(gate: Path) -> Iterator[Cluster]:
    """A LocalCluster of two single-threaded process workers, each of which starts (and joins the scheduler)
    only while the file ``gate`` exists: removing it holds every worker started later (a restarted one) at
    its start, until the file is there again."""
    preload = gate.with_suffix(".py")
    preload.write_text(GATE_PRELOAD.format(gate=str(gate)))
    gate.touch()
    # a LocalCluster closes the nanny of a worker that has not come back 15 s after it left: the gate holds
    # one on purpose, longer than that on a loaded machine
    with dask.config.set({"distributed.deploy.lost-worker-timeout": "10 minutes"}):
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address="127.0.0.1:0", preload=[str(preload)])
        client = Client(cluster, set_as_default=False)
        try:
            yield Cluster(cluster.scheduler_address, client)
        finally:
            gate.touch()
            shutdown_dask()
            client.close()
            cluster.close()
