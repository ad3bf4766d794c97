"""Several `templ` jobs pushing to one real Pushgateway: a group per job, success and failure, deletion."""

from __future__ import annotations

import functools
import json
import select
import signal
import socket
import subprocess
import time
import urllib.request

import pytest
from job_runs import job_env, select_best_argv
from ports import free_port, silent_listener
from processes import stop, wait_until_catches
from pushgateway_server import pushgateway  # noqa: F401 - the fixture

#: Runs here push their metrics and serve no /metrics (each test says otherwise where it needs the endpoint).
_select_best_argv = functools.partial(select_best_argv, metrics_server=False)
FLEXIBLE = "CC(C)Cc1ccc(cc1)C(C)C(=O)NCCCCCCNC(=O)c1ccccc1OCCOCC"  # 3000 conformers of it take minutes
#: From SIGTERM to the exit with a hung Pushgateway: the pusher is not waited for past 2 s, the last push and
#: the delete take 2 s each at most; a push timeout is 10 s, so waiting for them would take over 20 s.
SIGNAL_EXIT_SECONDS = 15.0
LIVE = ("templ_thread_headroom", "templ_thread_limit", "templ_threads_active", "templ_executor_workers_granted")


def _groups(url: str) -> dict[str, dict]:
    """job_id -> the group (its labels and metric families), from the Pushgateway's API."""
    with urllib.request.urlopen(f"{url}/api/v1/metrics", timeout=5) as resp:
        data = json.load(resp)["data"]
    return {group["labels"].get("job_id", ""): group for group in data}


def _value(group: dict, name: str) -> float | None:
    family = group.get(name)
    return None if family is None else float(family["metrics"][0]["value"])


def _run_all(*jobs: tuple[list[str], dict[str, str]]) -> list[tuple[int, str]]:
    """Run the jobs at once; (exit status, output) of each. Every one is stopped however this ends."""
    procs = []
    try:
        for argv, env in jobs:
            procs.append(subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        outputs = [proc.communicate(timeout=240)[0] for proc in procs]
        return [(proc.returncode, output) for proc, output in zip(procs, outputs, strict=True)]
    finally:
        for proc in procs:
            if proc.poll() is None:
                stop(proc, grace=10)


def test_two_jobs_push_two_groups_and_a_failure_says_so(template_sdf, unscorable_conformers, tmp_path, pushgateway):
    push = ("--pushgateway", pushgateway)
    results = _run_all(
        (_select_best_argv(template_sdf, tmp_path / "a.sdf", *push), job_env(SLURM_JOB_ID="71")),
        (_select_best_argv(template_sdf, tmp_path / "b.sdf", *push), job_env(SLURM_JOB_ID="72")),
        (_select_best_argv(template_sdf, tmp_path / "c.sdf", *push, conformers=unscorable_conformers),
         job_env(SLURM_JOB_ID="73")),
    )
    assert [code for code, _ in results] == [0, 0, 1], [output[-2000:] for _, output in results]
    assert not [out for _, out in results if "telemetry.push_failed" in out]
    groups = _groups(pushgateway)
    assert set(groups) == {"71", "72", "73"}
    for job in ("71", "72", "73"):
        labels = groups[job]["labels"]
        assert labels == {"job": "templ", "instance": socket.gethostname(), "job_id": job}
        assert not [name for name in groups[job] if name in LIVE or name.startswith(("process_", "python_"))]
    for job in ("71", "72"):
        assert _value(groups[job], "templ_last_success_timestamp_seconds") > 0
        assert _value(groups[job], "templ_last_failure_timestamp_seconds") == 0
    failed = groups["73"]
    assert _value(failed, "templ_last_failure_timestamp_seconds") > 0
    assert _value(failed, "templ_last_success_timestamp_seconds") == 0


def test_delete_on_exit_leaves_no_group(template_sdf, tmp_path, pushgateway):
    push = ("--pushgateway", pushgateway, "--push-delete-on-exit")
    (code, output), = _run_all((_select_best_argv(template_sdf, tmp_path / "a.sdf", *push), job_env(SLURM_JOB_ID="81")))
    assert code == 0, output[-3000:]
    assert "telemetry.push_failed" not in output and "telemetry.push_delete_failed" not in output
    assert _groups(pushgateway) == {}


def test_delete_on_exit_after_the_group_was_there_and_a_signal(template_sdf, tmp_path, pushgateway):
    """Pushed, held for a scrape, then SIGTERM (the scheduler ends the job): the group goes anyway."""
    argv = select_best_argv(template_sdf, tmp_path / "a.sdf", "--pushgateway", pushgateway, "--push-delete-on-exit",
                            "--hold-metrics", "300", "--metrics-addr", "127.0.0.1:0")
    proc = subprocess.Popen(argv, env=job_env(SLURM_JOB_ID="91"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        deadline = time.monotonic() + 120
        while "91" not in _groups(pushgateway):
            assert proc.poll() is None, proc.communicate(timeout=10)[0][-3000:]
            assert time.monotonic() < deadline, "the final push did not arrive"
            time.sleep(0.2)
        assert _value(_groups(pushgateway)["91"], "templ_last_success_timestamp_seconds") > 0
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            stop(proc, grace=10)
    assert proc.returncode == 128 + signal.SIGTERM, output[-3000:]
    assert _groups(pushgateway) == {}


def test_grouping_key_from_the_command_line(template_sdf, tmp_path, pushgateway):
    key = ("--push-grouping-key", "site=lab2", "--push-grouping-key", "job_id=nightly")
    (code, output), = _run_all((_select_best_argv(template_sdf, tmp_path / "a.sdf", "--pushgateway", pushgateway, *key),
                                job_env(SLURM_JOB_ID="99")))
    assert code == 0, output[-3000:]
    (group,) = _groups(pushgateway).values()
    assert group["labels"] == {"job": "templ", "instance": socket.gethostname(), "job_id": "nightly", "site": "lab2"}


@pytest.mark.parametrize("args, message", [
    (("--push-grouping-key", "site"), "is not LABEL=VALUE"),
    (("--push-grouping-key", "job=x"), "not a label name"),
    (("--push-grouping-key", "9x=y"), "not a label name"),
    (("--push-grouping-key", "site="), "must not be empty"),
])
def test_bad_grouping_keys_are_one_line_exit_2(template_sdf, tmp_path, pushgateway, args, message):
    done = subprocess.run(_select_best_argv(template_sdf, tmp_path / "o.sdf", "--pushgateway", pushgateway, *args),
                          env=job_env(), capture_output=True, text=True, timeout=240)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("option", [("--push-delete-on-exit",), ("--push-interval", "5")])
def test_push_options_need_a_pushgateway(template_sdf, tmp_path, option):
    done = subprocess.run(_select_best_argv(template_sdf, tmp_path / "o.sdf", *option), env=job_env(),
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 2 and f"{option[0]}: needs --pushgateway" in done.stderr, done.stderr


def test_a_running_job_pushes_and_a_killed_one_leaves_a_group_without_an_end(template_sdf, tmp_path, pushgateway):
    """--push-interval: the group appears while the job runs; SIGKILL (the OOM killer) leaves it as it was:
    no end timestamp, a push time that stops moving, and the interval that tells a rule it is overdue."""
    long_run = _select_best_argv(template_sdf, tmp_path / "o.sdf", "--pushgateway", pushgateway, "--push-interval",
                                 "0.5", query=FLEXIBLE, num_conformers=3000)
    proc = subprocess.Popen(long_run, env=job_env(SLURM_JOB_ID="501"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        deadline = time.monotonic() + 120
        pushes: set[float] = set()
        while len(pushes) < 2:  # two pushes while it runs: the group is refreshed, not written once
            assert proc.poll() is None, proc.communicate(timeout=10)[0][-3000:]
            assert time.monotonic() < deadline, f"pushes seen: {pushes}"
            if (group := _groups(pushgateway).get("501")) is not None:
                pushes.add(_value(group, "push_time_seconds"))
            time.sleep(0.2)
        proc.kill()
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            stop(proc, grace=10)
    group = _groups(pushgateway)["501"]
    time.sleep(1.5)  # three push intervals: nothing refreshes the group of a dead job
    assert _value(_groups(pushgateway)["501"], "push_time_seconds") == _value(group, "push_time_seconds")
    assert _value(group, "templ_push_interval_seconds") == 0.5
    assert _value(group, "templ_last_success_timestamp_seconds") == 0
    assert _value(group, "templ_last_failure_timestamp_seconds") == 0
    (info,) = group["templ_run_info"]["metrics"]
    assert info["labels"]["job_id"] == "501" and info["labels"]["host"] == socket.gethostname()
    assert info["labels"]["run_id"]
    assert not any(name in group for name in LIVE)


def test_a_failed_push_is_counted_where_it_can_be_seen(template_sdf, tmp_path):
    """A Pushgateway that does not answer (a closed port on 127.0.0.1): the run succeeds, says so once per push,
    and its textfile, written after the final push, counts the failure."""
    closed = free_port()
    textfile = tmp_path / "job.prom"
    argv = _select_best_argv(template_sdf, tmp_path / "a.sdf", "--pushgateway", f"http://127.0.0.1:{closed}",
                             "--push-interval", "0", "--metrics-textfile", textfile)
    (code, output), = _run_all((argv, job_env(TEMPL_JOB_ID="7")))
    assert code == 0, output[-3000:]
    assert output.count('"event": "telemetry.push_failed"') == 1, output[-3000:]
    samples = textfile.read_text().splitlines()
    assert ('templ_telemetry_degraded_total{component="pushgateway",job_id="7",reason="push_failed"} 1.0'
            in samples), [line for line in samples if "degraded" in line]


def test_which_endings_are_a_success():
    import typer

    from templ_pipeline.interrupts import Interrupted
    from templ_pipeline.telemetry.session import succeeded

    assert succeeded(None) and succeeded(typer.Exit(0)) and succeeded(SystemExit(None)) and succeeded(SystemExit(0))
    for failure in (typer.Exit(1), typer.Exit(2), Interrupted(signal.SIGTERM), SystemExit(1), ValueError("x"),
                    KeyboardInterrupt()):
        assert not succeeded(failure), failure


def test_sigterm_with_a_hung_pushgateway_exits_within_seconds(template_sdf, tmp_path):
    """A Pushgateway that takes connections and never answers: a signal still ends the run promptly (the
    periodic push in flight is not waited for, the last push and nothing else get a short timeout)."""
    with silent_listener() as hung:
        url = f"http://127.0.0.1:{hung.getsockname()[1]}"
        argv = _select_best_argv(template_sdf, tmp_path / "o.sdf", "--log-file", tmp_path / "run.jsonl",
                                 "--pushgateway", url, "--push-interval", "0.2", "--push-delete-on-exit",
                                 query=FLEXIBLE, num_conformers=3000)
        proc = subprocess.Popen(argv, env=job_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            problem = wait_until_catches(proc, signal.SIGTERM, 120)
            assert problem is None, f"{problem}: {proc.communicate(timeout=10)[1][-3000:]}"
            # the listening socket turns readable once a push has connected: that push hangs now, for up to 10 s
            readable, _, _ = select.select([hung], [], [], 120)
            assert readable, "no push was attempted"
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=SIGNAL_EXIT_SECONDS)
            except subprocess.TimeoutExpired:
                pytest.fail(f"no exit within {SIGNAL_EXIT_SECONDS:.0f} s of SIGTERM with a hung Pushgateway")
        finally:
            if proc.poll() is None:
                stop(proc, grace=10)
    assert proc.returncode == 128 + signal.SIGTERM
