"""select_best wall time with telemetry on against no-op telemetry, same run (goal: under 3%).

"On" is what the CLI runs: the recorder subscribed to the process's events, batch span export (to an
exporter that drops the spans, so no network is measured), metrics, and JSON log lines at info level
written to /dev/null. "Off" is no recorder at all: the chemistry's events go to no observer. Runs
alternate so drift on a shared machine hits both.

Wall time on two shared cores is noisy (a few percent between identical runs),
so the report also gives the CPU time the parent process spends (all its
threads: instrumentation, span export, orchestration), on against off: the
instrumentation's own cost, measured rather than inferred from noisy wall time.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Sequence

from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from benchmarks.common import median_seconds, pairs, sized
from benchmarks.goals import Comparison, Goal
from templ_pipeline import telemetry
from templ_pipeline.core import events
from templ_pipeline.core.scoring import select_best
from templ_pipeline.telemetry.logs import unconfigure_logging


class DropSpans(SpanExporter):
    """Accepts spans and drops them."""

    def export(self, spans: Sequence) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def run(n_pairs: int | None = None, n_conformers: int | None = None, repeats: int | None = None,
        workers: int = 2) -> dict:
    n_pairs = n_pairs or sized(5, 1)
    n_conformers = n_conformers or sized(200, 20)
    repeats = repeats or sized(9, 1)
    inputs = pairs(n_pairs, n_conformers)
    devnull = open(os.devnull, "w")  # noqa: SIM115 - closed once the tracing has shut down
    telemetry.configure(span_exporter=DropSpans(), log_format="json", log_stream=devnull, log_level="INFO")

    def all_pairs() -> None:
        for pair in inputs:
            select_best(pair.confs, pair.template, n_workers=workers, exact_workers=True)

    def timed() -> tuple[float, float]:
        cpu = time.process_time()
        wall = median_seconds(all_pairs, 1)
        return wall, time.process_time() - cpu

    all_pairs()  # warm the pool
    on, off = [], []
    for _ in range(repeats):
        events.subscribe_process(telemetry.observe)
        try:
            on.append(timed())
        finally:
            events.unsubscribe_process(telemetry.observe)
        off.append(timed())
    telemetry.tracing.shutdown_tracing()
    unconfigure_logging()  # the benchmarks after this one log to stderr, not to a closed file
    devnull.close()
    on_s, off_s = statistics.median(w for w, _ in on), statistics.median(w for w, _ in off)
    cpu_on, cpu_off = statistics.median(c for _, c in on), statistics.median(c for _, c in off)
    paired = statistics.median(a[0] / b[0] for a, b in zip(on, off, strict=True))
    overhead = round(100 * (paired - 1), 2)
    return {
        "workers": workers,
        "pairs": len(inputs),
        "conformers_per_pair": n_conformers,
        "seconds_telemetry_on": round(on_s, 4),
        "seconds_telemetry_off": round(off_s, 4),
        "overhead_percent": overhead,
        "spread_percent_off": round(100 * (max(w for w, _ in off) - min(w for w, _ in off)) / off_s, 2),
        "parent_cpu_seconds_on": round(cpu_on, 4),
        "parent_cpu_seconds_off": round(cpu_off, 4),
        "instrumentation_cpu_percent_of_wall": round(100 * (cpu_on - cpu_off) / off_s, 2),
        "goals": [Goal("overhead_percent", f"select_best(n_workers={workers}) over the same {len(inputs)} pairs, "
                            f"telemetry on (recorder, spans, metrics, JSON logs) vs off, paired runs, median of "
                            f"{repeats}", overhead, Comparison.BELOW, 3.0, "%").as_dict()],
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
