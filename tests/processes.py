"""Ending the servers and helper processes that tests start, with bounded waits."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import termios
import time
from collections.abc import Iterable
from pathlib import Path

import psutil
from templ_runs import templ_env


def stop(process: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM ``process``, wait up to ``grace`` seconds, then SIGKILL it and reap it."""
    process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=30)


def read_pty_until_exit(master: int, proc: subprocess.Popen, timeout: float) -> tuple[bytes, bool]:
    """Drain the pty master until ``proc`` exits and the slave side is closed; (output, finished in time)."""
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        readable, _, _ = select.select([master], [], [], 0.2)
        if readable:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every slave descriptor is closed, the child is gone
                data = b""
            if data:
                chunks.append(data)
                continue
            if proc.poll() is not None:
                return b"".join(chunks), True
        elif proc.poll() is not None:
            return b"".join(chunks), True
    return b"".join(chunks), False


def catches(pid: int, signum: signal.Signals) -> bool:
    """Whether ``pid`` has a handler for ``signum``: the SigCgt mask of /proc/PID/status (bit N-1)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(caught, 16) >> (signum - 1) & 1)


def wait_until_catches(proc: subprocess.Popen, signum: signal.Signals, timeout: float) -> str | None:
    """Wait until ``proc`` catches ``signum``; None then, else why not (it ended, or the time ran out)."""
    deadline = time.monotonic() + timeout
    while not catches(proc.pid, signum):
        if proc.poll() is not None:
            return f"the run ended (exit {proc.returncode}) before it caught {signum.name}"
        if time.monotonic() > deadline:
            return f"the run did not catch {signum.name} within {timeout:.0f} s"
        time.sleep(0.05)
    return None


def kill_quietly(processes: Iterable[psutil.Process]) -> None:
    """Cleanup: SIGKILL each of ``processes``; those already gone are skipped."""
    for process in processes:
        try:
            process.kill()
        except psutil.Error:
            pass


def descendants(pid: int) -> list[psutil.Process]:
    """Every process below ``pid`` (none once it is gone)."""
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def run_on_a_terminal(argv: list[str], columns: int, timeout: float = 300) -> tuple[int, bytes]:
    """Run ``argv`` with stdin, stdout and stderr on a pty ``columns`` wide; (exit code, raw output).

    ``COLUMNS`` and ``LINES`` are left out of its environment (pytest's own would win over the pty's size).
    """
    master, slave = pty.openpty()
    termios.tcsetwinsize(slave, (50, columns))
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, close_fds=True,
                            env=templ_env(("COLUMNS", "LINES")))
    os.close(slave)
    try:
        output, finished = read_pty_until_exit(master, proc, timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        os.close(master)
    assert finished, output[-3000:]
    return proc.returncode, output
