"""Time a fresh and a cached limits snapshot (goals: fresh < 200 µs, cached < 5 µs).

``python benchmarks/bench_snapshot.py`` prints JSON; :func:`run` returns the same dict.
Also reported: a cached worker grant, the native probe, the RLIMIT_NPROC user-task
count (only paid when that limit is finite and enforced) and the measured tasks of a
process worker against the cost model.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable

from benchmarks.common import sized
from benchmarks.goals import Comparison, Goal
from templ_pipeline.core.limits.procfs import count_user_tasks
from templ_pipeline.core.limits.worker_cost import measure_process_worker_tasks, worker_cost
from templ_pipeline.core.thread_manager import ThreadResourceManager, probe_native_thread

FRESH_GOAL_US = 200.0
CACHED_GOAL_US = 5.0


def per_call_us(fn: Callable[[], object], number: int, repeat: int = 7) -> float:
    """Median over ``repeat`` rounds of the mean time of one call, in microseconds."""
    rounds = []
    for _ in range(repeat):
        start = time.perf_counter_ns()
        for _ in range(number):
            fn()
        rounds.append((time.perf_counter_ns() - start) / number / 1000)
    return round(statistics.median(rounds), 3)


def run(measure_worker: bool | None = None) -> dict:
    """Run the benchmark; ``measure_worker`` (default: not at the quick size) also starts a real process
    worker (~1 s)."""
    measure_worker = sized(True, False) if measure_worker is None else measure_worker
    scale = sized(1, 10)  # calls per round divided by this at the quick size
    manager = ThreadResourceManager()
    manager.snapshot()
    fresh = per_call_us(lambda: manager.snapshot(fresh=True), 500 // scale)
    cached = per_call_us(manager.snapshot, 100_000 // scale)
    result = {
        "snapshot_fresh_us": fresh,
        "snapshot_cached_us": cached,
        "fresh_goal_us": FRESH_GOAL_US,
        "cached_goal_us": CACHED_GOAL_US,
        "fresh_ok": fresh < FRESH_GOAL_US,
        "cached_ok": cached < CACHED_GOAL_US,
        "worker_grant_cached_us": per_call_us(
            lambda: manager.get_safe_worker_count(8, "scoring"), 20_000 // scale),
        "probe_native_thread_us": per_call_us(probe_native_thread, 200),
        "nproc_user_task_count_us": per_call_us(lambda: count_user_tasks(os.getuid()), 20),
        "tasks_on_system": manager.snapshot(fresh=True).limit("threads_max").used,
        "cpus": os.cpu_count(),
        "process_worker_tasks_model": worker_cost("process").per_worker,
        "goals": [Goal("snapshot_fresh", "one limits snapshot read fresh from /proc and cgroups (absolute)", fresh,
                       Comparison.BELOW, FRESH_GOAL_US, "us").as_dict(),
                  Goal("snapshot_cached", "one cached limits snapshot (absolute)", cached, Comparison.BELOW,
                       CACHED_GOAL_US, "us").as_dict()],
    }
    if measure_worker:
        result["process_worker_tasks_measured"] = measure_process_worker_tasks()
    return result


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
