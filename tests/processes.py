"""Ending the servers and helper processes that tests start, with bounded waits."""

from __future__ import annotations

import os
import select
import subprocess
import time


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
