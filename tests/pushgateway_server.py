"""A real Pushgateway for the tests that push: on a free loopback port, always stopped."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from ports import free_port
from processes import stop

PUSHGATEWAY = shutil.which("prometheus-pushgateway") or "/usr/bin/prometheus-pushgateway"


@pytest.fixture
def pushgateway(tmp_path: Path) -> Iterator[str]:
    """The URL of a real Pushgateway on a free loopback port; skipped where none is installed."""
    if not os.access(PUSHGATEWAY, os.X_OK):
        pytest.skip(f"{PUSHGATEWAY} not found; install Debian package 'prometheus-pushgateway'")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "pushgateway.log"
    with open(log_path, "wb") as log:
        # Debian's default --persistence.file (/var/lib/prometheus/pushgateway.data) is shared by every
        # gateway started on the machine: an empty one keeps this gateway's groups in its memory only.
        proc = subprocess.Popen([PUSHGATEWAY, f"--web.listen-address=127.0.0.1:{port}", "--persistence.file="],
                                stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"pushgateway did not start: {log_path.read_text()}")
            time.sleep(0.05)
        yield url
    finally:
        stop(proc, grace=5)
