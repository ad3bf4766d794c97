"""Ctrl-C while RDKit embeds conformers stops the run: no retry, no other answer, no output replaced.

RDKit takes SIGINT for itself while it embeds (its ``ControlCHandler``) and returns no
conformer, which looked like an embedding failure and was retried with random coordinates:
the run went on and ended with another answer. These tests send SIGINT in the middle of an
embedding (to the process group, as a terminal does) and check that ``select-best``,
``screen`` and a script calling the library stop at once and change nothing.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
from processes import descendants, kill_quietly, wait_until_catches
from templ_runs import TEMPL, templ_env

from templ_pipeline.campaign.outputs import read_scores

# a flexible chain: ETKDG needs many seconds for these conformer counts, so a signal 1.5 s in lands mid-embedding
FLEXIBLE = "CC(C)Cc1ccc(cc1)C(C)C(=O)NCCCCCCNC(=O)c1ccccc1OCCOCC"
SLOW_CONFORMERS = "1500"
FAST = ("aspirin", "CC(=O)Oc1ccccc1C(=O)O")
START_TIMEOUT = 120.0  # imports and setup under the suite's load: "does not hang"
EMBEDDING_SECONDS = 1.5  # after the handler is in place: the run is embedding
ROUTED_CONFORMERS = 40  # about 2.5 s of single-threaded ETKDG for FLEXIBLE here
ROUTED_SIGNAL_SECONDS = 0.5
STOP_TIMEOUT = 5.0  # seconds from SIGINT to the exit (about 0.05 s idle; the suite's load adds to it)
GONE_TIMEOUT = 5.0


def _start(argv: list[object], directory: Path) -> subprocess.Popen:
    with open(directory / "stdout.txt", "w") as stdout, open(directory / "stderr.txt", "w") as stderr:
        return subprocess.Popen([*TEMPL, *map(str, argv), "--no-metrics-server"], stdin=subprocess.DEVNULL,
                                stdout=stdout, stderr=stderr, start_new_session=True)


def _stderr(directory: Path) -> str:
    return (directory / "stderr.txt").read_text(errors="replace")


def _interrupt(proc: subprocess.Popen, directory: Path, *, ready: Path | None = None) -> tuple[float, list[str]]:
    """SIGINT to ``proc``'s process group mid-embedding; (seconds to exit, processes left running)."""
    collected: list[psutil.Process] = []
    try:
        if (problem := wait_until_catches(proc, signal.SIGINT, START_TIMEOUT)) is not None:
            pytest.fail(f"{problem}; stderr {_stderr(directory)[-2000:]!r}")
        deadline = time.monotonic() + START_TIMEOUT
        while ready is not None and not (ready.exists() and len(read_scores(ready)) >= 1):
            assert proc.poll() is None, f"the run ended first; stderr {_stderr(directory)[-2000:]!r}"
            assert time.monotonic() < deadline, "the fast query never got its row"
            time.sleep(0.05)
        time.sleep(EMBEDDING_SECONDS)
        collected = descendants(proc.pid)
        assert proc.poll() is None, f"the run finished before the signal (exit {proc.returncode})"
        os.killpg(proc.pid, signal.SIGINT)
        signalled = time.monotonic()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"no exit within 60 s of SIGINT; stderr {_stderr(directory)[-2000:]!r}")
        took = time.monotonic() - signalled
        deadline = time.monotonic() + GONE_TIMEOUT
        while (left := [p for p in collected if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]) \
                and time.monotonic() < deadline:
            time.sleep(0.1)
        return took, [" ".join(p.cmdline())[:120] for p in left if p.is_running()]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        kill_quietly(collected)


def _one_interrupt_line(directory: Path) -> str:
    lines = [line for line in _stderr(directory).splitlines() if line.startswith("interrupted by SIGINT")]
    assert len(lines) == 1, f"{len(lines)} 'interrupted by SIGINT' lines in {_stderr(directory)[-2000:]!r}"
    return lines[0]


@pytest.mark.parametrize("workers", [1, 2])
def test_sigint_while_select_best_embeds_stops_at_once_and_keeps_the_old_output(workers, template_sdf, tmp_path):
    out = tmp_path / "pose.sdf"
    out.write_text("the previous answer\n")
    proc = _start(["select-best", "-t", template_sdf, "-q", FLEXIBLE, "-n", SLOW_CONFORMERS, "-w", workers,
                   "-o", out], tmp_path)
    took, left = _interrupt(proc, tmp_path)
    line = _one_interrupt_line(tmp_path)
    assert proc.returncode == 130, f"exit {proc.returncode}; {_stderr(tmp_path)[-2000:]!r}"
    assert took < STOP_TIMEOUT, f"{took:.1f} s from SIGINT to the exit"
    assert "while generating" in line, line
    assert '"level": "error"' not in _stderr(tmp_path), "an interrupt was logged as a failure"
    assert out.read_text() == "the previous answer\n"
    assert not list(tmp_path.glob(".pose.sdf.*")), "a temporary output file was left"
    assert not left, f"still running after the exit: {left}"


@pytest.mark.parametrize("options", [("-w", 1), ("-w", 2), ("-w", 2, "--executor", "dask")],
                         ids=["w1", "w2", "dask"])
def test_sigint_while_a_campaign_embeds_keeps_the_rows_written_and_adds_none(options, template_sdf, tmp_path):
    # on Dask (a LocalCluster): its workers, busy in a native embedding, cannot close when asked; they are
    # killed half a second later, not after the nannies' own 4 s
    queries = tmp_path / "queries.smi"
    queries.write_text(f"{FAST[1]} {FAST[0]}\n{FLEXIBLE} flexible\n")
    campaign = tmp_path / "campaign"
    proc = _start(["screen", "-t", template_sdf, "--queries", queries, "--output-dir", campaign,
                   "-n", SLOW_CONFORMERS, *options], tmp_path)
    took, left = _interrupt(proc, tmp_path, ready=campaign / "scores.csv")
    _one_interrupt_line(tmp_path)
    assert proc.returncode == 130, f"exit {proc.returncode}; {_stderr(tmp_path)[-2000:]!r}"
    assert took < STOP_TIMEOUT, f"{took:.1f} s from SIGINT to the exit"
    rows = read_scores(campaign / "scores.csv")
    assert [(row["query_id"], row["status"]) for row in rows] == [(FAST[0], "ok")], rows
    assert not left, f"still running after the exit: {left}"


def test_sigint_while_the_library_embeds_raises_keyboard_interrupt_at_once(tmp_path):
    script = tmp_path / "embed.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys
        from templ_pipeline.core.conformers import generate_conformers
        print("embedding", flush=True)
        try:
            mol = generate_conformers({FLEXIBLE!r}, {SLOW_CONFORMERS}, n_workers=1)
        except KeyboardInterrupt:
            print("stopped", flush=True)
            os._exit(7)
        print("finished with", mol.GetNumConformers(), flush=True)
    """))
    code, took = _interrupt_script(script, tmp_path, EMBEDDING_SECONDS)
    assert (tmp_path / "stdout.txt").read_text().split() == ["embedding", "stopped"], _stderr(tmp_path)[-2000:]
    assert code == 7
    assert took < STOP_TIMEOUT, f"{took:.1f} s from SIGINT to KeyboardInterrupt"


def _interrupt_script(script: Path, tmp_path: Path, delay: float) -> tuple[int, float]:
    """Run ``script`` in a session of its own, SIGINT it ``delay`` s after it prints "embedding"; (its exit code,
    seconds from the signal to the exit). Its stdout and stderr are left in ``tmp_path``."""
    with open(tmp_path / "stdout.txt", "w") as stdout, open(tmp_path / "stderr.txt", "w") as stderr:
        proc = subprocess.Popen([sys.executable, str(script)], stdout=stdout, stderr=stderr,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while "embedding" not in (tmp_path / "stdout.txt").read_text():
            assert proc.poll() is None and time.monotonic() < deadline, _stderr(tmp_path)[-2000:]
            time.sleep(0.05)
        time.sleep(delay)
        assert proc.poll() is None, "the embedding ended before the signal: make it longer"
        os.killpg(proc.pid, signal.SIGINT)
        signalled = time.monotonic()
        proc.wait(timeout=120)
        return proc.returncode, time.monotonic() - signalled
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def test_routed_sigint_never_reaches_rdkit_and_stops_the_program_after_the_call(tmp_path):
    # RDKit's own SIGINT handler is in place for the whole of an EmbedMultipleConfs made in the main thread: a
    # SIGINT that reached it would end the embedding early, with no error and no KeyboardInterrupt (the run went
    # on). Routed as ``templ`` routes it, the signal waits for Python's handler, which stops the program as soon
    # as the call returns, with every conformer embedded.
    script = tmp_path / "embed.py"
    script.write_text(textwrap.dedent(f"""
        import os
        from templ_pipeline.interrupts import route_sigint
        assert route_sigint()  # first: numpy starts threads when RDKit imports it
        from rdkit import Chem
        from rdkit.Chem import AllChem
        mol = Chem.AddHs(Chem.MolFromSmiles({FLEXIBLE!r}))
        print("embedding", flush=True)
        try:
            AllChem.EmbedMultipleConfs(mol, {ROUTED_CONFORMERS}, randomSeed=7, numThreads=1)
            print("finished with", mol.GetNumConformers(), flush=True)
        except KeyboardInterrupt:
            print("stopped with", mol.GetNumConformers(), flush=True)
            os._exit(7)
    """))
    code, _ = _interrupt_script(script, tmp_path, ROUTED_SIGNAL_SECONDS)
    lines = (tmp_path / "stdout.txt").read_text().splitlines()
    assert lines == ["embedding", f"stopped with {ROUTED_CONFORMERS}"], (lines, _stderr(tmp_path)[-2000:])
    assert code == 7



def test_sigint_after_the_poses_are_written_says_they_are(template_sdf, tmp_path):
    # the run's last spans go to a collector that takes the connection and never answers: the run waits at its
    # end (up to OTEL_EXPORTER_OTLP_TIMEOUT); a Ctrl-C then must not claim that no output was written
    collector = socket.socket()
    try:
        collector.bind(("127.0.0.1", 0))
        collector.listen(16)  # never accepted: the kernel completes the connection, nobody reads the request
        out = tmp_path / "pose.sdf"
        out.write_text("the previous answer\n")
        with open(tmp_path / "stdout.txt", "w") as stdout, open(tmp_path / "stderr.txt", "w") as stderr:
            proc = subprocess.Popen(
                [*TEMPL, "select-best", "-t", str(template_sdf), "-q", FAST[1], "-n", "10", "-o", str(out),
                 "--no-metrics-server"], stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                start_new_session=True,
                env=templ_env(OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{collector.getsockname()[1]}",
                              OTEL_EXPORTER_OTLP_TIMEOUT="60"))
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while out.read_text() == "the previous answer\n":
                assert proc.poll() is None and time.monotonic() < deadline, _stderr(tmp_path)[-2000:]
                time.sleep(0.05)
            time.sleep(EMBEDDING_SECONDS)  # into the export's wait
            assert proc.poll() is None, f"the run ended without waiting for the collector: {proc.returncode}"
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
    finally:
        collector.close()
    line = _one_interrupt_line(tmp_path)
    assert f"{out} was written in full" in line and "no output written" not in line, line
    assert proc.returncode == 130
    assert out.read_text().count("$$$$") >= 1


def test_sigint_while_the_process_exits_after_the_command_says_the_command_had_ended(template_sdf, tmp_path):
    # an exit handler that takes its time, as a Dask cluster's close at exit does (a few tenths of a second there):
    # registered before templ's own, it runs after them, the last thing before the process is gone
    out = tmp_path / "pose.sdf"
    script = textwrap.dedent(f"""
        import atexit, sys, time
        def slow_exit():
            print("exiting", flush=True)
            time.sleep(60)
        atexit.register(slow_exit)
        from templ_pipeline.entry import run
        sys.argv = ["templ", "select-best", "-t", {str(template_sdf)!r}, "-q", {FAST[1]!r}, "-n", "10",
                    "-o", {str(out)!r}, "--no-metrics-server"]
        run()
    """)
    with open(tmp_path / "stdout.txt", "w") as stdout, open(tmp_path / "stderr.txt", "w") as stderr:
        proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.DEVNULL, stdout=stdout,
                                stderr=stderr, start_new_session=True, env=templ_env())
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while "exiting" not in (tmp_path / "stdout.txt").read_text():
            assert proc.poll() is None and time.monotonic() < deadline, _stderr(tmp_path)[-2000:]
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=STOP_TIMEOUT)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    assert _one_interrupt_line(tmp_path) == (
        "interrupted by SIGINT: stopped while exiting, after the command ended with status 0")
    assert proc.returncode == 130
    assert out.read_text().count("$$$$") == 1


def _sigint_unblocked(pid: int) -> tuple[int, list[int]]:
    """(threads of ``pid``, those whose signal mask lets SIGINT through)."""
    open_to_sigint = []
    tasks = os.listdir(f"/proc/{pid}/task")
    for task in tasks:
        try:
            status = Path(f"/proc/{pid}/task/{task}/status").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        blocked = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigBlk:")), 16)
        if not blocked & (1 << (signal.SIGINT - 1)):
            open_to_sigint.append(int(task))
    return len(tasks), open_to_sigint


def _workers(pid: int) -> int:
    """Pool workers below ``pid`` (the resource tracker is not one)."""
    count = 0
    for process in descendants(pid):
        try:
            count += "resource_tracker" not in " ".join(process.cmdline())
        except psutil.Error:
            pass
    return count


@pytest.mark.parametrize("command", ["select-best", "screen"])
def test_every_thread_of_templ_but_its_sigint_thread_blocks_sigint(command, template_sdf, tmp_path):
    # select-best mid-embedding: RDKit's own threads run, and its handler is installed; screen once its workers
    # run: the main thread started them, and with them multiprocessing's resource tracker, whose start unblocked
    # SIGINT in the starting thread. Only the thread waiting in sigwait (the kernel lifts the block for the length
    # of the wait) may take SIGINT.
    if command == "screen":
        queries = tmp_path / "queries.smi"
        queries.write_text(f"{FLEXIBLE} flexible\n{FLEXIBLE}C longer\n")
        argv = ["screen", "-t", template_sdf, "--queries", queries, "--output-dir", tmp_path / "campaign"]
    else:
        argv = ["select-best", "-t", template_sdf, "-q", FLEXIBLE, "-o", tmp_path / "pose.sdf"]
    proc = _start([*argv, "-n", SLOW_CONFORMERS, "-w", 2], tmp_path)

    def started() -> bool:
        return _workers(proc.pid) >= 2 if command == "screen" else _sigint_unblocked(proc.pid)[0] >= 3

    def once_started() -> tuple[int, list[int]]:  # under load the run may still be importing at first
        deadline = time.monotonic() + START_TIMEOUT
        while not started() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        return _sigint_unblocked(proc.pid)

    threads, open_to_sigint = _sigint_after(proc, tmp_path, EMBEDDING_SECONDS, once_started)
    assert len(open_to_sigint) == 1, f"{len(open_to_sigint)} of {threads} threads let SIGINT through"
    assert proc.returncode == 130, f"exit {proc.returncode}; {_stderr(tmp_path)[-2000:]!r}"


def _sigint_after(proc: subprocess.Popen, tmp_path: Path, delay: float, look: Callable[[], Any] = lambda: None
                  ) -> Any:
    """SIGINT to ``proc``'s group ``delay`` s after it catches SIGINT, then its exit; what ``look()`` saw just
    before the signal."""
    try:
        if (problem := wait_until_catches(proc, signal.SIGINT, START_TIMEOUT)) is not None:
            pytest.fail(f"{problem}; stderr {_stderr(tmp_path)[-2000:]!r}")
        time.sleep(delay)
        seen = look()
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=60)
        return seen
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


LIBRARY = Path(__file__).resolve().parent.parent / "benchmarks" / "data" / "polaris" / "train_sarsmols.sdf.gz"


@pytest.mark.parametrize("delay", [0.3, 0.9, 1.5, 2.5])
def test_sigint_at_any_point_of_a_library_run_exits_130_with_one_line_and_no_output(delay, tmp_path):
    # Reading the 770 templates, choosing them (RascalMCES in a helper thread), embedding: wherever the signal
    # lands. An interrupted MCS search once made interpreter finalization abort the process (exit 134).
    out = tmp_path / "pose.sdf"
    out.write_text("the previous answer\n")
    proc = _start(["select-best", "-t", LIBRARY, "-q", FLEXIBLE, "-n", "200", "-w", "2", "-o", out], tmp_path)
    _sigint_after(proc, tmp_path, delay)
    _one_interrupt_line(tmp_path)
    assert proc.returncode == 130, f"exit {proc.returncode}; {_stderr(tmp_path)[-2000:]!r}"
    assert out.read_text() == "the previous answer\n"
