"""Ending the servers and helper processes that tests start, with bounded waits."""

from __future__ import annotations

import subprocess


def stop(process: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM ``process``, wait up to ``grace`` seconds, then SIGKILL it and reap it."""
    process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=30)
