"""Scrape latency of the full /metrics exposition while a real run scores (goal: p99 under 20 ms).

Starts ``templ select-best`` with 2 workers on a free loopback port and scrapes
it back to back, in text and OpenMetrics form, for as long as the run lasts.
"""

from __future__ import annotations

import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from rdkit import Chem

from benchmarks.common import sized
from benchmarks.goals import Comparison, Goal
from templ_pipeline.io import examples

OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _scrape(url: str, accept: str | None) -> float:
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()
    return time.perf_counter() - started


GOAL_MS = 20.0


def run(n_conformers: int | None = None, workers: int = 2) -> dict:
    n_conformers = n_conformers or sized(600, 60)
    with tempfile.TemporaryDirectory() as tmp:
        template = Path(tmp) / "template.sdf"
        with Chem.SDWriter(str(template)) as writer:
            writer.write(examples()[0].template)
        port = _free_port()
        url = f"http://127.0.0.1:{port}/metrics"
        proc = subprocess.Popen(
            [sys.executable, "-m", "templ_pipeline.cli", "select-best", "-t", str(template),
             "-q", examples()[0].query_smiles, "-n", str(n_conformers), "-w", str(workers), "--exact-workers",
             "-o", str(Path(tmp) / "out.sdf"), "--metrics-addr", f"127.0.0.1:{port}", "--log-file",
             str(Path(tmp) / "log.jsonl")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        samples: dict[str, list[float]] = {"text": [], "openmetrics": []}
        try:
            while proc.poll() is None:
                try:
                    samples["text"].append(_scrape(url, None))
                    samples["openmetrics"].append(_scrape(url, OPENMETRICS))
                except (urllib.error.URLError, ConnectionError):
                    time.sleep(0.01)  # not up yet, or already gone
        finally:
            proc.kill()
            proc.wait(timeout=30)
    report: dict = {"conformers": n_conformers, "workers": workers, "goals": []}
    for kind, values in samples.items():
        values.sort()
        if values:
            report[kind] = {
                "scrapes": len(values),
                "p50_ms": round(1000 * statistics.median(values), 2),
                "p99_ms": round(1000 * values[min(len(values) - 1, int(0.99 * len(values)))], 2),
                "max_ms": round(1000 * values[-1], 2),
            }
        report["goals"].append(Goal(
            f"p99_{kind}", f"/metrics scraped back to back ({kind}) while templ select-best -w {workers} scores "
            f"{n_conformers} conformers (absolute)", report[kind]["p99_ms"] if values else None, Comparison.BELOW,
            GOAL_MS, "ms").as_dict())
    return report


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
