"""Several `templ` jobs on one host: free ports, file_sd target files, a real Prometheus that finds them.

Each job takes a free port (``--metrics-addr 127.0.0.1:0``) and names it in its own target
file (``--metrics-sd-file``); a real Prometheus with ``file_sd_configs`` on the directory
discovers both and scrapes both, told apart by ``job_id``. The files go when the jobs end:
by a signal, normally, or with exit status 1.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from dashboard_queries import PROMETHEUS, Prometheus, prometheus_with, tail
from job_runs import job_env, select_best_argv
from ports import silent_listener
from processes import stop

from templ_pipeline.telemetry.export import scheduler_job_id

WAIT_SECONDS = 90


@contextmanager
def _jobs(*commands: tuple[list[str], dict[str, str], Path]) -> Iterator[list[subprocess.Popen]]:
    """Start each (argv, env, log) job; every one is stopped however the block ends."""
    procs: list[subprocess.Popen] = []
    try:
        for argv, env, log in commands:
            with open(log, "w") as out:
                procs.append(subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT))
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                stop(proc, grace=20)


@contextmanager
def _prometheus_on(targets: Path) -> Iterator[Prometheus]:
    """A real Prometheus whose only scrape job (``templ``, 1 s) reads the target files in ``targets``."""
    if PROMETHEUS is None:
        pytest.skip("prometheus is not installed (make test installs the Debian package)")
    config = {"global": {"scrape_interval": "1s"},
              "scrape_configs": [{"job_name": "templ", "file_sd_configs": [
                  {"files": [str(targets / "*.json")], "refresh_interval": "1s"}]}]}
    with prometheus_with(config) as server:
        yield server


def _by_job_id(prometheus: Prometheus, query: str) -> dict[str, float]:
    answer = prometheus.api("/api/v1/query", query=query)
    assert answer["status"] == "success", answer
    return {r["metric"].get("job_id", ""): float(r["value"][1]) for r in answer["data"]["result"]}


def _wait_for(predicate, what: str, procs: list[subprocess.Popen], logs: list[Path]) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not predicate():
        for proc, log in zip(procs, logs, strict=True):
            assert proc.poll() is None, f"a job ended early ({proc.returncode}): {tail(log)}"
        assert time.monotonic() < deadline, f"{what} within {WAIT_SECONDS} s; logs: " + " | ".join(map(tail, logs))
        time.sleep(0.5)


def test_two_jobs_are_discovered_and_scraped_and_their_files_go(template_sdf, tmp_path):
    targets = tmp_path / "targets"
    targets.mkdir()
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    hold = ("--metrics-addr", "127.0.0.1:0", "--hold-metrics", "300")
    a = (select_best_argv(template_sdf, tmp_path / "a.sdf", *hold, "--metrics-sd-file", targets / "a.json"),
         job_env(SLURM_JOB_ID="1001"), logs[0])
    b = (select_best_argv(template_sdf, tmp_path / "b.sdf", *hold, "--metrics-sd-file", targets / "b.json"),
         job_env(PBS_JOBID="2002.pbs"), logs[1])
    with _prometheus_on(targets) as prometheus, _jobs(a, b) as procs:
        _wait_for(lambda: (targets / "a.json").exists() and (targets / "b.json").exists(), "both target files",
                  procs, logs)
        files = {name: json.loads((targets / name).read_text()) for name in ("a.json", "b.json")}
        assert files["a.json"][0]["labels"] == {"job_id": "1001"}
        assert files["b.json"][0]["labels"] == {"job_id": "2002.pbs"}
        ports = {int(f[0]["targets"][0].rsplit(":", 1)[1]) for f in files.values()}
        assert len(ports) == 2 and 9464 not in ports  # two free ports, not the default
        for name, document in files.items():  # the log line says the real port
            target = document[0]["targets"][0]
            log = logs[0] if name == "a.json" else logs[1]
            assert f'"url": "http://{target}/metrics"' in log.read_text()

        _wait_for(lambda: _by_job_id(prometheus, 'up{job="templ"}') == {"1001": 1.0, "2002.pbs": 1.0},
                  "Prometheus scraping both jobs", procs, logs)
        calls = 'sum by (job_id) (templ_select_best_calls_total{job="templ", outcome="ok"})'
        _wait_for(lambda: _by_job_id(prometheus, calls) == {"1001": 1.0, "2002.pbs": 1.0},
                  "each job's finished select_best call", procs, logs)
        # counters with bounded labels are there at 0 before anything happened, without _created
        fallbacks = _by_job_id(prometheus, 'sum by (job_id) (templ_executor_fallbacks_total{job="templ"})')
        assert fallbacks == {"1001": 0.0, "2002.pbs": 0.0}
        assert _by_job_id(prometheus, '{__name__=~".+_created", job="templ"}') == {}

        for proc in procs:
            proc.send_signal(signal.SIGTERM)  # Slurm's scancel / time limit
        for proc in procs:
            assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    assert sorted(os.listdir(targets)) == []  # both files removed, no temporary left


def test_target_file_goes_on_a_normal_exit_and_on_exit_1(template_sdf, unscorable_conformers, tmp_path):
    targets = tmp_path / "targets"
    targets.mkdir()
    logs = [tmp_path / "ok.log", tmp_path / "fail.log"]
    sd = ("--metrics-addr", "127.0.0.1:0", "--metrics-sd-file")
    ok = (select_best_argv(template_sdf, tmp_path / "ok.sdf", *sd, targets / "ok.json"), job_env(), logs[0])
    fail = (select_best_argv(template_sdf, tmp_path / "x.sdf", *sd, targets / "fail.json",
                             conformers=unscorable_conformers), job_env(), logs[1])
    with _jobs(ok, fail) as procs:
        codes = [proc.wait(timeout=240) for proc in procs]
    assert codes == [0, 1], [tail(log) for log in logs]
    for log in logs:  # it was there while the job ran
        assert '"event": "telemetry.sd_file_written"' in log.read_text()
    assert os.listdir(targets) == []


def test_a_taken_port_says_how_to_run_several_jobs(template_sdf, tmp_path):
    with silent_listener() as taken:
        port = taken.getsockname()[1]
        done = subprocess.run(select_best_argv(template_sdf, tmp_path / "o.sdf", "--metrics-addr", f"127.0.0.1:{port}"),
                              env=job_env(), capture_output=True, text=True, timeout=240)
    assert done.returncode == 2, done.stderr
    assert "address in use" in done.stderr and "--metrics-addr 127.0.0.1:0" in done.stderr
    assert "--metrics-sd-file" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("args, message", [
    (("--metrics-sd-file", "{tmp}/targets.yml"), "expected a .json file"),
    (("--metrics-sd-file", "{tmp}/no/such/dir/t.json"), "does not exist"),
    (("--metrics-sd-file", "{tmp}/t.json", "--no-metrics-server"), "--no-metrics-server"),
    (("--metrics-textfile", "{tmp}/templ.txt"), "ending in .prom"),
])
def test_bad_target_options_are_one_line_exit_2(template_sdf, tmp_path, args, message):
    argv = select_best_argv(template_sdf, tmp_path / "o.sdf", *(a.format(tmp=tmp_path) for a in args))
    done = subprocess.run(argv, env=job_env(), capture_output=True, text=True, timeout=240)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "o.sdf").exists()


@pytest.mark.parametrize("environ, expected", [
    ({}, None),
    ({"SLURM_JOB_ID": "4242"}, "4242"),
    ({"PBS_JOBID": "17[3].pbs01"}, "17[3].pbs01"),
    ({"LSB_JOBID": "88"}, "88"),
    ({"LSB_JOBID": "88", "LSB_JOBINDEX": "0"}, "88"),
    ({"LSB_JOBID": "88", "LSB_JOBINDEX": "5"}, "88[5]"),
    ({"JOB_ID": "321", "SGE_TASK_ID": "undefined"}, "321"),
    ({"JOB_ID": "321", "SGE_TASK_ID": "7"}, "321.7"),
    ({"SLURM_JOB_ID": "4242", "TEMPL_JOB_ID": "mine"}, "mine"),
    ({"SLURM_JOB_ID": " ", "PBS_JOBID": "9.pbs"}, "9.pbs"),
])
def test_scheduler_job_id(environ, expected):
    assert scheduler_job_id(environ) == expected


def test_a_target_file_another_run_replaced_is_left_in_place(tmp_path):
    from templ_pipeline import telemetry
    from templ_pipeline.telemetry.session import TelemetryOptions, TelemetrySession

    path = tmp_path / "t.json"
    options = TelemetryOptions(metrics_addr="127.0.0.1:0", metrics_sd_file=path, log_file=tmp_path / "templ.log")
    try:
        with TelemetrySession(options, interactive=False) as session:
            assert session.server is not None and session.server.address.port != 0
            assert json.loads(path.read_text())[0]["targets"] == [str(session.server.address)]
            path.write_text('[{"targets": ["127.0.0.1:1"], "labels": {}}]\n')  # another run took the path
    finally:
        telemetry.testing.reset()
    assert path.read_text() == '[{"targets": ["127.0.0.1:1"], "labels": {}}]\n'
    assert '"event": "telemetry.sd_file_replaced"' in (tmp_path / "templ.log").read_text()


def test_a_run_finding_the_default_port_taken_serves_on_a_free_port_its_target_file_names(template_sdf, tmp_path):
    from templ_pipeline.telemetry.server import DEFAULT_PORT

    target_file, log = tmp_path / "second.json", tmp_path / "second.log"
    argv = select_best_argv(template_sdf, tmp_path / "o.sdf", "--metrics-sd-file", target_file, "--hold-metrics", "300")
    with socket.socket() as first:
        try:
            first.bind(("127.0.0.1", DEFAULT_PORT))
            first.listen(1)
        except OSError:  # another process has the default port: taken all the same
            pass
        with _jobs((argv, job_env(), log)) as procs:
            _wait_for(target_file.exists, "the target file", procs, [log])
            (target,) = json.loads(target_file.read_text())[0]["targets"]
            host, port = target.rsplit(":", 1)
            assert host == "127.0.0.1" and int(port) != DEFAULT_PORT
            with urllib.request.urlopen(f"http://{target}/healthz", timeout=10) as answer:
                assert answer.read() == b"ok\n"
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    (serving,) = [line for line in lines if line["event"] == "telemetry.metrics_serving"]
    assert serving["url"] == f"http://{target}/metrics" and serving["default_port_taken"] is True
    assert [line for line in lines if line["level"] in ("warning", "error")] == []
    assert "Traceback" not in log.read_text()
