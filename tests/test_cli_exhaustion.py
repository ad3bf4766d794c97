"""The templ command run inside a real child pids cgroup whose task budget is small or used up.

Every run is ``python -m templ_pipeline.cli select-best`` started inside the cgroup
(``PidsCgroup.wrap``), with real RDKit and the kernel's own refusals: no mocks.
The thread-count variables of numeric libraries are removed from the child's
environment: limiting its own BLAS/OpenMP pools is the CLI's job.
"""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import termios
import textwrap
import time
from pathlib import Path

import pytest
from cgroup_fixtures import child_pids_cgroup  # noqa: F401  (fixture)
from processes import read_pty_until_exit
from rdkit import Chem
from sdf_files import write_sdf
from templ_runs import TEMPL, THREAD_VARIABLES, templ_env

from templ_pipeline.core.conformers import generate_conformers

QUERY = "O=C(Nc1cccnc1)c1ccc(F)cc1OC"
TESTS_DIR = Path(__file__).resolve().parent

# Left out of the CLI's environment: limiting native thread pools is its job; the default start method and
# plain (not forced-colour) output.
LEFT_OUT = (*THREAD_VARIABLES, "TEMPL_MP_START_METHOD", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE")
RUN_TIMEOUT = 120.0  # "does not hang", not a speed claim
HERD_ROUND_TIMEOUT = 150.0


def _argv(template: Path, out: Path, *source: str, workers: int, log: Path | None = None) -> list[str]:
    argv = [*TEMPL, "select-best", "--template", str(template), *source, "-w", str(workers), "-o", str(out),
            "--no-metrics-server"]
    if log is not None:
        argv += ["--log-format", "json", "--log-file", str(log)]
    return argv


def _run(argv: list[str], timeout: float = RUN_TIMEOUT) -> subprocess.CompletedProcess:
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=templ_env(LEFT_OUT))
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=30)
        pytest.fail(f"{argv} did not finish within {timeout:.0f} s; stderr tail:\n{err[-3000:]}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def _best(path: Path) -> tuple:
    """(conformer_id, shape, color, combo) of the first pose in ``path``."""
    poses = [mol for mol in Chem.SDMolSupplier(str(path)) if mol is not None]
    assert poses, f"{path} holds no pose"
    pose = poses[0]
    return (pose.GetIntProp("conformer_id"), pose.GetDoubleProp("shape"), pose.GetDoubleProp("color"),
            pose.GetDoubleProp("combo"))


def _log_events(path: Path) -> list[dict]:
    events = []
    if not path.exists():
        return events
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            events.append(record)
    return events


def _executor_events(events: list[dict]) -> list[dict]:
    keys = ("event", "task_type", "workers_requested", "workers_granted", "from_kind", "to_kind", "reason", "cause",
            "detail")
    return [{k: e[k] for k in keys if k in e} for e in events if str(e.get("event", "")).startswith("executor.")]


def _pids_events_max(cgroup) -> int:
    """The ``max`` count of the cgroup's ``pids.events``: how many forks the limit refused."""
    text = (cgroup.path / "pids.events").read_text()
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == "max":
            return int(value)
    raise AssertionError(f"pids.events has no max line: {text!r}")


def _kill_cgroup(cgroup, timeout: float = 10.0) -> list[int]:
    """SIGKILL every task left in ``cgroup`` and wait until it is empty; return the pids found."""
    found: list[int] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = cgroup.pids()
        if not pids:
            break
        found.extend(p for p in pids if p not in found)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)
    return found


def _describe(pids: list[int]) -> list[str]:
    described = []
    for pid in pids:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            described.append(f"{pid}: {cmdline[:150]}")
        except OSError:
            described.append(f"{pid}: (gone)")
    return described


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, template_sdf) -> dict:
    """Template, a 40-conformer SDF, and the reference best pose: ``-w 1`` outside any cgroup."""
    root = tmp_path_factory.mktemp("exhaustion")
    template = template_sdf
    conformers = write_sdf(root / "conformers.sdf", generate_conformers(QUERY, 40, seed=3))
    reference_out = root / "reference.sdf"
    result = _run(_argv(template, reference_out, "--conformers", str(conformers), workers=1))
    assert result.returncode == 0, result.stderr[-3000:]
    return {"root": root, "template": template, "conformers": conformers, "reference": _best(reference_out)}


@pytest.mark.parametrize("pids_max", [8, 6])
def test_eight_workers_in_a_tiny_cgroup_give_the_same_best_pose(child_pids_cgroup, inputs, tmp_path, pids_max):
    """pids.max=8: both grants are cut to what fits (nothing needs to fail); pids.max=6: no room for a pool at all.

    Either way the conformers and the best pose are those of ``-w 1`` outside the cgroup, every
    decision names the pids cgroup, and a refusal the kernel counted is a fallback with that cause.
    """
    cgroup = child_pids_cgroup
    seed_args = ("--query", QUERY, "-n", "30", "--seed", "7")
    reference_out = tmp_path / "reference.sdf"
    reference = _run(_argv(inputs["template"], reference_out, *seed_args, workers=1))
    assert reference.returncode == 0, reference.stderr[-3000:]

    cgroup.set_max(pids_max)
    refused_before = _pids_events_max(cgroup)
    out, log = tmp_path / "limited.sdf", tmp_path / "limited.jsonl"
    result = _run(cgroup.wrap(_argv(inputs["template"], out, *seed_args, workers=8, log=log)))
    refused_after = _pids_events_max(cgroup)
    events = _executor_events(_log_events(log))
    context = (f"pids.events max before {refused_before}, after {refused_after}; executor log events {events}; "
               f"stdout tail {result.stdout[-1500:]!r}; stderr tail {result.stderr[-3000:]!r}")

    assert result.returncode == 0, context
    assert "conformers 30: scored 30, failed 0" in result.stdout, context
    assert _best(out) == _best(reference_out), context
    reductions = {e["task_type"]: e for e in events if e.get("event") == "executor.workers_reduced"}
    assert set(reductions) == {"conformers", "scoring"}, context
    assert all(e["reason"] == "pids_cgroup" and e["workers_granted"] < 8 for e in reductions.values()), context
    fallbacks = [e for e in events if e.get("event") == "executor.fallback"]
    assert all(e["cause"] == "pids_cgroup" for e in fallbacks), context
    if refused_after > refused_before:  # the kernel refused a start: it must show as a fallback
        assert fallbacks, context
    if pids_max == 6:  # 5 tasks of headroom: room for RDKit's threads, none for a process pool
        assert [(e["from_kind"], e["to_kind"], e["reason"]) for e in fallbacks
                if e["to_kind"] == "sequential"][-1:] == [("process", "sequential", "no_headroom")], context


def _grant_of(log: Path) -> str | None:
    """How many scoring workers a job got and why, from its log: a reduction, or a pool of all it asked."""
    for event in _log_events(log):
        if event.get("event") == "executor.workers_reduced" and event.get("task_type") == "scoring":
            return f"{event['workers_granted']} of {event['workers_requested']}: {event['reason']}"
        if event.get("event") == "executor.created" and event.get("executor_kind") == "process":
            return f"{event['workers']} as asked"
    return None


def test_herd_of_six_runs_in_one_cgroup_all_finish_with_the_reference_pose(child_pids_cgroup, inputs, tmp_path):
    """Six jobs of four workers share pids.max=40: they share it through the grant ledger, so the
    kernel refuses nothing (pids.events stays flat), every job says what it was granted and why,
    and all give the reference pose."""
    cgroup = child_pids_cgroup
    cgroup.set_max(40)
    ledger = tmp_path / "ledger"
    ledger.mkdir(mode=0o700)
    env = templ_env(LEFT_OUT, TEMPL_LEDGER_DIR=str(ledger))
    refused_before = _pids_events_max(cgroup)
    jobs, rounds = 6, 5
    grants: list[str | None] = []
    for round_no in range(1, rounds + 1):
        procs: list[tuple[subprocess.Popen, Path, Path, Path]] = []
        problems: list[str] = []
        try:
            for job in range(jobs):
                out = tmp_path / f"r{round_no}j{job}.sdf"
                stdout_path, stderr_path = tmp_path / f"r{round_no}j{job}.out", tmp_path / f"r{round_no}j{job}.err"
                with open(stdout_path, "w") as so, open(stderr_path, "w") as se:
                    proc = subprocess.Popen(
                        cgroup.wrap(_argv(inputs["template"], out, "--conformers", str(inputs["conformers"]),
                                          workers=4, log=tmp_path / f"r{round_no}j{job}.jsonl")),
                        stdout=so, stderr=se, stdin=subprocess.DEVNULL, env=env)
                procs.append((proc, out, stdout_path, stderr_path))
            deadline = time.monotonic() + HERD_ROUND_TIMEOUT
            for job, (proc, out, _stdout_path, stderr_path) in enumerate(procs):
                try:
                    proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    problems.append(f"round {round_no} job {job} hung (> {HERD_ROUND_TIMEOUT:.0f} s); stderr tail: "
                                    f"{stderr_path.read_text()[-1500:]!r}")
                    continue
                if proc.returncode != 0:
                    problems.append(f"round {round_no} job {job} exited {proc.returncode}; stderr tail: "
                                    f"{stderr_path.read_text()[-1500:]!r}")
                    continue
                best = _best(out) if out.exists() else None
                if best != inputs["reference"]:
                    problems.append(f"round {round_no} job {job} best pose {best} != reference {inputs['reference']}")
                grants.append(_grant_of(tmp_path / f"r{round_no}j{job}.jsonl"))
        finally:
            leftovers = _describe(cgroup.pids())
            _kill_cgroup(cgroup)
            for proc, *_ in procs:
                if proc.poll() is None:
                    proc.kill()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    pass
        assert not problems, "\n".join(problems + [f"left in the cgroup at the end of round {round_no}: {leftovers}"])
    assert None not in grants, grants
    assert _pids_events_max(cgroup) == refused_before, f"the kernel refused forks; grants: {grants}"


FILLER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, %(tests)r)
    from grant_probe import idle_threads_until_refused

    with idle_threads_until_refused(100000) as (started, refusal):
        print(f"FILLED {started} {type(refusal).__name__ if refusal else 'none'}", flush=True)
        sys.stdin.readline()
    print("RELEASED", flush=True)
    """
) % {"tests": str(TESTS_DIR)}


def test_progress_bar_on_a_terminal_with_every_task_of_the_cgroup_taken(child_pids_cgroup, inputs, tmp_path):
    cgroup = child_pids_cgroup
    cgroup.set_max(48)
    filler = subprocess.Popen(cgroup.wrap([sys.executable, "-c", FILLER]), stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=templ_env(LEFT_OUT))
    master = slave = -1
    proc = None
    try:
        ready, _, _ = select.select([filler.stdout], [], [], 60)
        report = filler.stdout.readline().strip() if ready else ""
        assert report.startswith("FILLED") and report.endswith("RuntimeError"), (
            f"the filler did not exhaust the cgroup: {report!r}")
        full = cgroup.current()
        with open(cgroup.path / "pids.max") as handle:
            limit = int(handle.read())
        assert full >= limit, f"cgroup not full after the filler: {full} of {limit} tasks ({report})"

        out = tmp_path / "tty.sdf"
        master, slave = pty.openpty()
        termios.tcsetwinsize(slave, (40, 120))  # rows, columns: rich draws its bar to this width
        assert os.isatty(slave)
        proc = subprocess.Popen(
            cgroup.wrap(_argv(inputs["template"], out, "--conformers", str(inputs["conformers"]), workers=1)),
            stdin=slave, stdout=slave, stderr=slave, env=templ_env(LEFT_OUT), close_fds=True)
        os.close(slave)
        slave = -1
        output, finished = read_pty_until_exit(master, proc, RUN_TIMEOUT)
        text = output.decode(errors="replace")
        context = (f"filler: {report}; cgroup {cgroup.current()} of {limit} tasks; terminal output tail:\n"
                   f"{text[-3000:]}")
        assert finished, f"templ did not finish within {RUN_TIMEOUT:.0f} s; {context}"
        assert proc.returncode == 0, f"exit {proc.returncode}; {context}"
        assert out.exists(), context
        assert _best(out) == inputs["reference"], context
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        for fd in (slave, master):
            if fd >= 0:
                os.close(fd)
        try:
            filler.communicate("release\n", timeout=30)
        except (subprocess.TimeoutExpired, OSError, ValueError):
            filler.kill()
            filler.wait(timeout=30)
