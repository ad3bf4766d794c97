"""Work-aware sizing: no more CPU-bound workers than CPUs, no cold pool for small work, each cut recorded."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from templ_runs import templ_env

from templ_pipeline.core.conformers import generate_conformers
from templ_pipeline.core.events import ReductionReason, TaskType, WorkersReduced
from templ_pipeline.core.executor import shutdown_pools
from templ_pipeline.core.limits.cpu import read_cpu_budget
from templ_pipeline.core.recent_work import SCORING_HISTORY
from templ_pipeline.core.scoring import select_best_with_report
from templ_pipeline.core.sizing import (
    ALIGN_SECONDS_PER_CONFORMER,
    COLD_POOL_SECONDS,
    EXACT_WORKERS_ENV,
    plan_workers,
)

pytestmark = pytest.mark.fast

CPUS = read_cpu_budget().cpus


@pytest.fixture
def sized(monkeypatch):
    """Sizing on: the suite insists on its worker counts (conftest), these tests do not; each call is sized
    without the calls of earlier tests (a loop's history is tests/test_warm_pools.py's)."""
    monkeypatch.delenv(EXACT_WORKERS_ENV, raising=False)
    SCORING_HISTORY.forget()


def test_plan_caps_cpu_bound_work_at_the_cpus():
    plan = plan_workers(16, TaskType.SCORING, cpu_budget=(2, "2 CPUs in the affinity mask"))
    assert plan.workers == 2
    assert [(r.requested, r.granted, r.reason) for r in plan.reductions] == [(16, 2, ReductionReason.CPU_LIMIT)]
    assert "2 CPUs in the affinity mask" in plan.reductions[0].detail


def test_plan_runs_small_scoring_work_here_unless_a_pool_is_warm():
    small = plan_workers(2, TaskType.SCORING, conformers=60, cpu_budget=(2, ""))
    assert small.workers == 1 and small.reductions[0].reason == ReductionReason.SMALL_WORK
    warm = plan_workers(2, TaskType.SCORING, conformers=60, warm=(2,), cpu_budget=(2, ""))
    assert warm.workers == 2 and not warm.reductions
    # the break-even point follows from the two measured constants
    big = int(2 * COLD_POOL_SECONDS / ALIGN_SECONDS_PER_CONFORMER) + 1
    assert plan_workers(2, TaskType.SCORING, conformers=big, cpu_budget=(2, "")).workers == 2


def test_plan_caps_a_campaign_at_its_queries_and_exact_skips_every_cut():
    plan = plan_workers(8, TaskType.SCREENING, queries=3, cpu_budget=(16, ""))
    assert plan.workers == 3 and plan.reductions[0].reason == ReductionReason.SMALL_WORK
    assert plan_workers(16, TaskType.SCORING, exact=True, conformers=10, cpu_budget=(2, "")).workers == 16


def test_two_workers_for_60_conformers_and_no_warm_pool_run_sequentially(sized, template):
    shutdown_pools()
    confs = generate_conformers("O=C(Nc1cccnc1)c1ccc(F)cc1OC", 60, seed=3)
    selection = select_best_with_report(confs, template, n_workers=2)
    report = selection.report
    assert report.executor_kinds == ["sequential"] and not report.fallbacks
    assert [(r.requested, r.granted, r.reason) for r in report.reductions] == [(2, 1, ReductionReason.SMALL_WORK)]
    # the same call on a warm pool uses it, and scores the same
    warmed = select_best_with_report(confs, template, n_workers=2, exact_workers=True)
    assert warmed.report.executor_kinds == ["process"]
    again = select_best_with_report(confs, template, n_workers=2)
    assert again.report.executor_kinds == ["process"] and not again.report.reductions
    assert [(s.conf_id, s.shape, s.color) for s in again.ordered] == [(s.conf_id, s.shape, s.color)
                                                                       for s in selection.ordered]
    shutdown_pools()


def test_sixteen_workers_are_granted_the_cpus_this_process_may_use(sized, template, query_confs):
    selection = select_best_with_report(query_confs, template, n_workers=16)
    first = selection.report.reductions[0]
    assert (first.requested, first.granted, first.reason) == (16, CPUS, ReductionReason.CPU_LIMIT)
    assert f"this process may use {CPUS} CPUs" in first.detail


def test_conformer_threads_are_capped_at_the_cpus(sized):
    seen: list[WorkersReduced] = []
    generate_conformers("CCOc1ccccc1", 4, n_workers=16, observers=(seen.append,))
    cuts = [event for event in seen if isinstance(event, WorkersReduced)]
    assert cuts and (cuts[0].task_type, cuts[0].granted, cuts[0].reason) == (
        TaskType.CONFORMERS, CPUS, ReductionReason.CPU_LIMIT)


def test_exact_workers_keeps_the_request(template, query_confs, sized):
    selection = select_best_with_report(query_confs, template, n_workers=4, exact_workers=True)
    assert not [r for r in selection.report.reductions if r.reason in (ReductionReason.CPU_LIMIT,
                                                                      ReductionReason.SMALL_WORK)]
    shutdown_pools()


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs an affinity mask of 2 CPUs or more to pin a child to one")
def test_a_process_pinned_to_one_cpu_plans_one_worker():
    code = ("import json, os; os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]});"
            "from templ_pipeline.core.sizing import plan_workers; from templ_pipeline.core.events import TaskType;"
            "p = plan_workers(2, TaskType.SCREENING);"
            "print(json.dumps([p.workers, [str(r.reason) for r in p.reductions]]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env=templ_env([EXACT_WORKERS_ENV]))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [1, ["cpu_limit"]]
