"""End to end: a real Prometheus scrapes a real Dask cluster and the ``templ screen --executor dask`` run on it.

A ``dask scheduler`` and two ``dask worker`` processes (one thread each, each with its nanny) serve
their own /metrics on loopback dashboard ports; a campaign runs on them while one worker is killed
under a query (its nanny starts another). Every query of the dashboard's Dask row, run as Grafana
sends it, must show the cluster as it was:

- tasks by state: the campaign's queries processing on the workers, no more than the driver keeps in flight;
- workers: both workers, and the killed one removed;
- worker threads: the threads the workers were started with, again after the killed one came back;
- query resubmissions: bars that add up to the resubmissions the driver logged (the killed query's at
  least); batch resubmissions (select-best's) parse and add up to the run's, none.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

pytest.importorskip("distributed", reason="dask distributed is not installed (the dask extra)")

from dashboard_queries import (
    PROMETHEUS,
    Prometheus,
    fill_variables,
    load_dashboard,
    panel_queries,
    prometheus_with,
    sum_of_bars,
    tail,
)
from dask_fixtures import QueryKiller, wait_for_scheduler
from ports import free_port
from processes import stop
from templ_runs import TEMPL
from test_screen import SERIES, write_smi

from templ_pipeline.campaign.dask_pool import IN_FLIGHT_PER_THREAD
from templ_pipeline.dashboards import dask_metrics
from templ_pipeline.dashboards.executor_dashboard import QUERY_RESUBMISSIONS, RESUBMISSIONS
from templ_pipeline.telemetry.catalog import EVENT_SPECS

pytestmark = pytest.mark.slow

DASK = Path(sys.executable).with_name("dask")
WORKERS = 2
THREADS = 1  # per worker: AlignMol holds the GIL
#: 24 amides of 20 conformers: the campaign lasts several 1 s scrapes on 2 single-thread workers (6-9 s here)
QUERIES = SERIES[:24]
NUM_CONFORMERS = 20
KILLED_QUERY = 4  # its worker is killed the first time it starts it
HOLD_SECONDS = 6
READY_TIMEOUT = 60
JOB_TIMEOUT = 120
ROW = "Dask"


def _wait_for(prometheus: Prometheus, expr: str, value: float, what: str, logs: list[Path]) -> None:
    """Until Prometheus's latest ``expr`` is ``value``: the targets are up and scraped as the test needs them."""
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        result = prometheus.api("/api/v1/query", query=expr)["data"]["result"]
        if result and float(result[0]["value"][1]) == value:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: {expr} is {result}, not {value}, after {READY_TIMEOUT} s\n"
                        + "\n".join(f"{log.name}:\n{tail(log, 2000)}" for log in logs))
        time.sleep(0.5)


def _end(process: subprocess.Popen) -> None:
    """SIGTERM, a bounded wait, then SIGKILL to its session: a nanny's worker process goes with it."""
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # the session the test started it in: whatever is left of it
    except ProcessLookupError:
        pass
    if process.poll() is None:
        process.wait(timeout=30)


@contextmanager
def _dask_cluster(workdir: Path, port: int, scheduler_http: int, worker_http: list[int]) -> Iterator[list[Path]]:
    """A ``dask scheduler`` on 127.0.0.1:``port`` and one ``dask worker`` (with its nanny) per dashboard port,
    all serving /metrics on their dashboard ports; their log files. Every process is ended on exit."""
    address = f"tcp://127.0.0.1:{port}"
    commands = {"scheduler": [str(DASK), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                              "--dashboard-address", f"127.0.0.1:{scheduler_http}"]}
    for n, http in enumerate(worker_http):
        commands[f"worker{n}"] = [str(DASK), "worker", address, "--name", f"worker{n}", "--nthreads", str(THREADS),
                                  "--host", "127.0.0.1", "--dashboard-address", f"127.0.0.1:{http}",
                                  "--local-directory", str(workdir / f"worker{n}")]
    processes: list[subprocess.Popen] = []
    logs = [workdir / f"{name}.log" for name in commands]
    try:
        for (name, command), log in zip(commands.items(), logs, strict=True):
            with open(log, "w") as out:
                processes.append(subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out,
                                                  stderr=subprocess.STDOUT, start_new_session=True))
            if name == "scheduler":
                wait_for_scheduler(address, processes[0], READY_TIMEOUT, lambda log=log: tail(log))
        yield logs
    finally:
        for process in reversed(processes):
            _end(process)


def _range(prometheus: Prometheus, expr: str, start: float, end: float) -> list[dict]:
    answer = prometheus.api("/api/v1/query_range", query=expr, start=start, end=end, step=1)
    assert answer["status"] == "success", (expr, answer)
    return answer["data"]["result"]


def _totals(result: list[dict]) -> dict[float, float]:
    """Timestamp -> the sum of every series' sample at it."""
    totals: dict[float, float] = defaultdict(float)
    for series in result:
        for t, v in series["values"]:
            totals[t] += float(v)
    return dict(totals)


def _logged(lines: list[dict], short: str) -> int:
    """Events the run logged of the counter ``short`` (one count per log line, as the catalog says)."""
    names = {spec.name for spec in EVENT_SPECS if spec.counter == short}
    assert names, f"no log event counts {short}"
    return sum(line.get("event") in names for line in lines)


@pytest.mark.skipif(PROMETHEUS is None, reason="prometheus is not installed (make test installs the Debian package)")
@pytest.mark.skipif(not DASK.exists(), reason=f"the dask command is not installed ({DASK})")
def test_dask_row_on_a_scraped_cluster_and_campaign(template_sdf, tmp_path):
    scheduler_port, scheduler_http, driver_port = free_port(), free_port(), free_port()
    worker_http = [free_port() for _ in range(WORKERS)]
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {"job_name": "templ", "static_configs": [{"targets": [f"127.0.0.1:{driver_port}"]}]},
            {"job_name": dask_metrics.SCHEDULER_JOB,
             "static_configs": [{"targets": [f"127.0.0.1:{scheduler_http}"]}]},
            {"job_name": dask_metrics.WORKERS_JOB,
             "static_configs": [{"targets": [f"127.0.0.1:{port}" for port in worker_http]}]},
        ],
    }
    instance = f"127.0.0.1:{driver_port}"
    queries = write_smi(tmp_path / "queries.smi", QUERIES)
    log_file, output = tmp_path / "templ.log", tmp_path / "screen.out"
    command = [*TEMPL, "screen", "--template", str(template_sdf), "--queries", str(queries),
               "--output-dir", str(tmp_path / "campaign"), "-n", str(NUM_CONFORMERS), "-w", str(WORKERS),
               "--executor", "dask", "--scheduler", f"tcp://127.0.0.1:{scheduler_port}",
               "--metrics-addr", instance, "--hold-metrics", str(HOLD_SECONDS),
               "--log-format", "json", "--log-file", str(log_file), "--json"]
    by_panel: dict[str, list[str]] = defaultdict(list)
    for query in panel_queries(load_dashboard()):
        if query.row == ROW:
            by_panel[query.panel].append(fill_variables(query.expr, job="templ", instance=instance))
    assert set(by_panel) >= {RESUBMISSIONS.title, QUERY_RESUBMISSIONS.title}, sorted(by_panel)

    with prometheus_with(config, driver_port) as prometheus, \
            _dask_cluster(tmp_path, scheduler_port, scheduler_http, worker_http) as cluster_logs:
        (threads_expr,) = by_panel["Dask worker threads"]
        _wait_for(prometheus, threads_expr, WORKERS * THREADS, "the workers' /metrics", cluster_logs)
        _wait_for(prometheus, f'sum(dask_scheduler_workers{{job="{dask_metrics.SCHEDULER_JOB}"}})', WORKERS,
                  "the scheduler's workers", cluster_logs)
        killer = QueryKiller(f"tcp://127.0.0.1:{scheduler_port}",
                             lambda index, start: index == KILLED_QUERY and start == 1)
        started = time.time()
        try:
            with open(output, "w") as out, open(tmp_path / "screen.err", "w") as err:
                job = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
                try:
                    job.wait(timeout=JOB_TIMEOUT)
                finally:
                    if job.poll() is None:
                        stop(job, grace=10)
        finally:
            killer.close()
        ended = time.time()
        during_hold = ended - HOLD_SECONDS / 2  # the driver's /metrics still answers, the campaign is done
        assert job.returncode == 0, tail(tmp_path / "screen.err") + tail(log_file)
        summary = json.loads(output.read_text())
        assert summary["executor_kinds"] == ["dask"] and not summary["fallbacks"], summary
        assert [index for index, _pid in killer.kills] == [KILLED_QUERY], killer.kills

        empty = [f"{panel}: {expr}" for panel, exprs in by_panel.items() for expr in exprs
                 if not _range(prometheus, expr, started, ended) and panel != RESUBMISSIONS.title]
        assert not empty, "Dask panels without data:\n" + "\n".join(empty)

        (tasks_expr,) = by_panel["Dask tasks by state"]
        processing = [max(float(v) for _t, v in series["values"]) for series in _range(
            prometheus, tasks_expr, started, ended) if series["metric"].get("state") == "processing"]
        # processing: on a worker, running or next in its line; the driver keeps at most its bound in flight
        assert processing and 1 <= processing[0] <= IN_FLIGHT_PER_THREAD * WORKERS * THREADS, processing

        workers_expr, removed_expr = by_panel["Dask workers"]
        known = _totals(_range(prometheus, workers_expr, started, ended))
        assert max(known.values()) == WORKERS, known
        removed = _totals(_range(prometheus, removed_expr, started, ended))
        assert max(removed.values()) > 0, removed  # the killed worker

        threads = _totals(_range(prometheus, threads_expr, started, ended))
        assert max(threads.values()) == WORKERS * THREADS, threads
        now = prometheus.api("/api/v1/query", query=threads_expr, time=during_hold)["data"]["result"]
        assert [float(s["value"][1]) for s in now] == [WORKERS * THREADS], now  # the nanny's new worker

        lines = [json.loads(line) for line in log_file.read_text().splitlines() if line.startswith("{")]
        counts = {}
        for panel in (QUERY_RESUBMISSIONS, RESUBMISSIONS):
            (expr,) = by_panel[panel.title]
            logged = _logged(lines, panel.short)
            shown = sum_of_bars(prometheus, expr, started - 5, ended + 5, job="templ", instance=instance)
            assert shown == logged, f"{panel.title}: bars add up to {shown:g}, the run logged {logged}"
            counts[panel.short] = logged
        assert counts[QUERY_RESUBMISSIONS.short] >= 1 and counts[RESUBMISSIONS.short] == 0, counts
