"""A real node_exporter: it reports the host-wide limits TEMPL exports, and serves the textfiles of
several TEMPL jobs at once."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest
from job_runs import job_env
from ports import free_port
from processes import stop
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from templ_runs import TEMPL_SCRIPT

from templ_pipeline.core.thread_manager import ThreadResourceManager
from templ_pipeline.telemetry.metrics import TemplMetrics
from templ_pipeline.telemetry.server import Address, serve_metrics

NODE_EXPORTER = shutil.which("prometheus-node-exporter") or shutil.which("node_exporter")
START_SECONDS = 30

pytestmark = pytest.mark.skipif(
    NODE_EXPORTER is None,
    reason="prometheus-node-exporter is not installed (make test installs the Debian package)")


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


def _samples(text: str) -> dict[tuple[str, frozenset], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


@dataclass
class NodeExporter:
    url: str
    _log: IO[str]

    def log(self) -> str:
        """What node_exporter has logged so far (errors of a scrape are logged, not answered: it serves the rest)."""
        self._log.seek(0)
        return self._log.read()


@contextmanager
def _node_exporter(*collectors: str) -> Iterator[NodeExporter]:
    """node_exporter on a free loopback port with only ``collectors`` (slow defaults off)."""
    port = free_port()
    with tempfile.TemporaryFile(mode="w+") as log:
        process = subprocess.Popen(
            [NODE_EXPORTER, "--collector.disable-defaults", *collectors, f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}/metrics"
            deadline = time.monotonic() + START_SECONDS
            while True:
                if process.poll() is not None:
                    log.seek(0)
                    pytest.fail(f"node_exporter exited with {process.returncode}: {log.read()[-3000:]}")
                try:
                    _get(url)
                    break
                except OSError:
                    assert time.monotonic() < deadline, "node_exporter did not answer in time"
                    time.sleep(0.1)
            yield NodeExporter(url, log)
        finally:
            stop(process, grace=10)


@pytest.fixture
def node_exporter() -> Iterator[str]:
    """node_exporter with only the processes collector and without its own process_* metrics."""
    with _node_exporter("--collector.processes", "--web.disable-exporter-metrics") as exporter:
        yield exporter.url


def test_threads_max_and_pid_max_agree_with_node_exporter(node_exporter):
    registry = CollectorRegistry()
    TemplMetrics(registry, process_collectors=False, snapshot=ThreadResourceManager().snapshot)
    server = serve_metrics(Address("127.0.0.1", 0), registry)
    assert server is not None, "the metrics server could not start its thread"
    try:
        ours = _samples(_get(server.url))
    finally:
        server.stop()
    theirs = _samples(_get(node_exporter))
    assert theirs[("node_scrape_collector_success", frozenset({("collector", "processes")}))] == 1

    threads_max = ours[("templ_thread_limit", frozenset({("limit", "threads_max")}))]
    pid_max = ours[("templ_thread_limit", frozenset({("limit", "pid_max")}))]
    assert threads_max == theirs[("node_processes_max_threads", frozenset())]
    assert pid_max == theirs[("node_processes_max_processes", frozenset())]
    # both are the sysctls as this process sees them
    assert threads_max == int(Path("/proc/sys/kernel/threads-max").read_text())
    assert pid_max == int(Path("/proc/sys/kernel/pid_max").read_text())


QUERY = "O=C(Nc1cccnc1)c1ccc(F)cc1OC"


def _jobs_write_textfiles(template_sdf: Path, directory: Path, tmp_path: Path, job_ids: list[str]) -> None:
    """Real ``templ select-best`` jobs at once, each with its scheduler job id and --metrics-textfile DIR."""
    procs = []
    try:
        for job in job_ids:
            procs.append(subprocess.Popen(
                [str(TEMPL_SCRIPT), "select-best", "-t", str(template_sdf), "-q", QUERY, "-n", "4", "-w", "1",
                 "-o", str(tmp_path / f"{job}.sdf"), "--no-metrics-server", "--metrics-textfile", str(directory)],
                env=job_env(SLURM_JOB_ID=job), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        for proc in procs:
            output, _ = proc.communicate(timeout=240)
            assert proc.returncode == 0, output[-3000:]
    finally:
        for proc in procs:
            if proc.poll() is None:
                stop(proc, grace=10)


def test_node_exporter_serves_two_jobs_textfiles(template_sdf, tmp_path):
    directory = tmp_path / "textfile"
    directory.mkdir()
    _jobs_write_textfiles(template_sdf, directory, tmp_path, ["5001", "5002"])
    assert sorted(os.listdir(directory)) == ["templ_5001.prom", "templ_5002.prom"]
    # node_exporter's own process_* metrics are on, as in a default install
    with _node_exporter("--collector.textfile", f"--collector.textfile.directory={directory}") as exporter:
        theirs = _samples(_get(exporter.url))
        log = exporter.log()
    assert theirs[("node_textfile_scrape_error", frozenset())] == 0
    assert "level=error" not in log, log[-3000:]
    for job in ("5001", "5002"):
        key = ("templ_select_best_calls_total", frozenset({("outcome", "ok"), ("job_id", job)}))
        assert theirs[key] == 1, sorted(k for k in theirs if k[0].startswith("templ_select_best_calls"))
        assert theirs[("templ_last_success_timestamp_seconds", frozenset({("job_id", job)}))] > 0
        mtime = ("node_textfile_mtime_seconds", frozenset({("file", str(directory / f"templ_{job}.prom"))}))
        assert mtime in theirs or (mtime[0], frozenset({("file", f"templ_{job}.prom")})) in theirs
    assert not [k for k in theirs if k[0].startswith("templ_") and ("job_id", "5001") not in k[1]
                and ("job_id", "5002") not in k[1]]


def test_node_exporter_refuses_a_textfile_with_process_metrics(tmp_path):
    """The control: the default collectors' process_* in a textfile break the scrape, which ours avoid."""
    from prometheus_client import CollectorRegistry, ProcessCollector, write_to_textfile

    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    write_to_textfile(str(tmp_path / "plain.prom"), registry)
    with _node_exporter("--collector.textfile", f"--collector.textfile.directory={tmp_path}") as exporter:
        theirs = _samples(_get(exporter.url))  # measured (1.5.0): 200, with node_exporter's own value
        log = exporter.log()
    assert "level=error" in log and "process_cpu_seconds_total" in log and "was collected before" in log, log[-3000:]
    assert theirs[("node_textfile_scrape_error", frozenset())] == 0  # which is why the log is the check
