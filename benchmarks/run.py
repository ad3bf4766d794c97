"""Run every benchmark and write one JSON report (``make bench``), ending with one table of every goal.

Each benchmark's goals (what is compared, measured, goal, met) are printed as it finishes; the
table of all of them goes to stdout at the end and into the report as ``"table"``. The report is
written after each benchmark, so a failure keeps what ran before it; a benchmark that raises is
recorded with its error and the others still run (exit status 1). ``TEMPL_BENCH_QUICK=1`` runs
every benchmark at a size of seconds, to check the code paths (see :mod:`benchmarks.common`).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

from benchmarks.common import quick
from benchmarks.goals import rows, table

BENCHMARKS = ("bench_templates",
              "bench_select_best", "bench_select_best_loop", "bench_telemetry_overhead", "bench_snapshot",
              "bench_scrape", "bench_dask", "bench_worker_start", "bench_screen", "bench_preparation",
              "bench_dask_screen")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", type=Path, default=Path("bench_report.json"))
    parser.add_argument("--only", nargs="*", default=list(BENCHMARKS), help="benchmarks to run")
    args = parser.parse_args(argv)
    report: dict = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "quick": quick(),
        "results": {},
        "table": [],
    }
    lines: list[tuple[str, ...]] = []
    failed = False
    for name in args.only:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        started = time.perf_counter()
        try:
            result = importlib.import_module(f"benchmarks.{name}").run()
        except Exception as error:  # one broken benchmark must not lose the others' numbers
            failed = True
            traceback.print_exc()
            result = {"error": f"{type(error).__name__}: {error}",
                      "goals": [{"name": "ran", "compared": "the benchmark raised", "measured": None, "goal": "-",
                                 "unit": "", "met": False}]}
        result["wall_seconds"] = round(time.perf_counter() - started, 1)
        report["results"][name] = result
        goals = result.get("goals", [])
        report["table"].extend({"benchmark": name, **goal} for goal in goals)
        found = rows(name, goals)
        lines.extend(found)
        args.output.write_text(json.dumps(report, indent=2) + "\n")
        for line in found:
            print(f"  {line[1]}: {line[3]} (goal {line[4]}, met: {line[5]}) - {line[2]}", file=sys.stderr, flush=True)
    print(table(lines), flush=True)
    print(f"report written to {args.output}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
