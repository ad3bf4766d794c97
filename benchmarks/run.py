"""Run every benchmark and write one JSON report (``make bench``)."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
from pathlib import Path

BENCHMARKS = ("bench_templates",
              "bench_select_best", "bench_telemetry_overhead", "bench_snapshot", "bench_scrape", "bench_dask",
              "bench_worker_start", "bench_screen", "bench_preparation", "bench_dask_screen")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", type=Path, default=Path("bench_report.json"))
    parser.add_argument("--only", nargs="*", default=list(BENCHMARKS), help="benchmarks to run")
    args = parser.parse_args(argv)
    report: dict = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "results": {},
    }
    for name in args.only:
        module = importlib.import_module(f"benchmarks.{name}")
        print(f"running {name} ...", file=sys.stderr, flush=True)
        report["results"][name] = module.run()
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["results"], indent=2))
    print(f"report written to {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
