"""A real Dask LocalCluster for the dask tests: two single-threaded process workers on 127.0.0.1."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from ports import free_port
from distributed import Client, LocalCluster

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
