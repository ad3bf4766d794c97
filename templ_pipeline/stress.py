"""``templ stress``: a bounded load that drives the executor into worker reductions and fallbacks.

Each round runs, while time remains:

1. ``normal``: bursts of ``select_best`` on ``workers`` process workers (bundled examples);
2. ``pids_cgroup`` (root and a writable pids hierarchy only): the process moves into a child
   pids cgroup with room for about half the workers. The grant is cut (reason
   ``pids_cgroup``) and the headroom gauge stays low for a few scrapes; then the grant is
   taken while there is headroom, the headroom is used up by idle threads, and the new
   pool fails to start for real (``thread_start_failed``, cause ``pids_cgroup``: the fork
   server lives outside the tight cgroup, so the first task the pool needs here is its
   manager thread); the executor falls back down to sequential. The process stays a few
   scrapes more, so the cgroup's refused forks (pids.events) are read, then always moves
   back and the cgroup is removed;
3. ``killed_worker``: a process worker is killed with SIGKILL mid-call (``broken_pool``).

The dashboard "TEMPL executor: thread exhaustion" lights up accordingly. Telemetry (the
``/metrics`` endpoint, logs, traces) is the caller's: the CLI sets it up.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from rdkit import Chem

from templ_pipeline.core.batch import BatchResult
from templ_pipeline.core.conformers import generate_conformers
from templ_pipeline.core.events import REFUSED_STARTS, WorkersGranted, WorkersReduced
from templ_pipeline.core.executor import shutdown_pools
from templ_pipeline.core.limits.cgroup import parse_pids_events
from templ_pipeline.core.limits.grant import RESERVE_TASKS
from templ_pipeline.core.limits.procfs import read_bytes
from templ_pipeline.core.limits.worker_cost import worker_cost
from templ_pipeline.core.scoring import Selection, select_best_with_report
from templ_pipeline.core.thread_manager import reset_thread_manager
from templ_pipeline.io import examples
from templ_pipeline.pids_cgroup import CgroupUnavailable, Hierarchy, find_hierarchy, tasks_in, tight_pids_cgroup

Log = Callable[[str], object]

SCENARIOS: tuple[str, ...] = ("normal", "pids_cgroup", "killed_worker")
EXAMPLES: tuple[str, ...] = ("nsaid", "coxib")  # the bundled pairs that embed fastest
CONFORMERS = 80  # per example: 16-20 batches, so a killed worker leaves batches to re-run
BURST_SECONDS = 1.0  # scoring per normal scenario
CGROUP_HOLD_SECONDS = 4.0  # in the tight cgroup, so 1-5 s scrapes see the low headroom
MAX_IDLE_THREADS = 4096  # the headroom eater stops here even if no limit binds
REFUSALS = 3  # the eater stops after this many refused starts in a row, SETTLE_SECONDS apart,
RACE_ATTEMPTS = 2  # a grant that finds the headroom already gone (tasks still exiting under load) races again
SETTLE_TIMEOUT = 10.0  # at most this long for a pool's workers to exit before the race
SETTLE_SECONDS = 0.02  # so tasks that were still exiting (joined pool threads) are eaten too
EXIT_SECONDS = 0.2  # a joined thread leaves the kernel's task count a moment after join() returns


@dataclass(frozen=True)
class Workload:
    """A template and conformers of its query, generated once per process."""

    name: str
    template: Chem.Mol
    conformers: Chem.Mol


@functools.cache
def workloads() -> tuple[Workload, ...]:
    """The bundled examples of :data:`EXAMPLES` with :data:`CONFORMERS` conformers each."""
    pairs = {pair.name: pair for pair in examples()}
    return tuple(Workload(name, pairs[name].template, generate_conformers(pairs[name].query_smiles, CONFORMERS))
                 for name in EXAMPLES)


@dataclass
class Tally:
    """What the run did, from the selection reports."""

    rounds: int = 0
    scenarios: Counter = field(default_factory=Counter)
    skipped: dict[str, str] = field(default_factory=dict)
    reductions: Counter = field(default_factory=Counter)
    fallbacks: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)
    conformers_scored: int = 0
    pids_refused_forks: int = 0  # the kernel's count of the tight cgroups (pids.events max), read before removal

    def add(self, selection: Selection) -> Selection:
        report = selection.report
        self.reductions.update(str(r.reason) for r in report.reductions)
        self.fallbacks.update(str(f.reason) for f in report.fallbacks)
        self.conformers_scored += report.n_scored
        return selection

    def summary(self, seconds: float) -> dict:
        return {
            "seconds": round(seconds, 1),
            "rounds": self.rounds,
            "scenarios": dict(self.scenarios),
            "skipped": dict(self.skipped),
            "reductions": dict(self.reductions),
            "fallbacks": dict(self.fallbacks),
            "errors": dict(self.errors),
            "conformers_scored": self.conformers_scored,
            "pids_refused_forks": self.pids_refused_forks,
        }


def describe(selection: Selection) -> str:
    """One line: conformers, workers, executor path and fallbacks of a call."""
    report = selection.report
    steps = "; ".join(f"{f.from_kind}->{f.to_kind} {f.reason} (cause {f.cause})" for f in report.fallbacks)
    cut = "".join(f", cut by {r.reason}" for r in report.reductions)
    return (f"{report.n_scored} scored, workers {report.workers_granted} of {report.workers_requested}{cut}, "
            f"executor {' -> '.join(report.executor_kinds)}" + (f"; fallbacks: {steps}" if steps else ""))


def normal(workers: int, tally: Tally) -> str:
    """Score the workloads back to back for :data:`BURST_SECONDS`."""
    end, calls = time.monotonic() + BURST_SECONDS, 0
    while calls == 0 or time.monotonic() < end:
        load = workloads()[calls % len(workloads())]
        last = tally.add(select_best_with_report(load.conformers, load.template, n_workers=workers, exact_workers=True))
        calls += 1
    return f"{calls} calls, last: {describe(last)}"


def killed_worker(workers: int, tally: Tally) -> str:
    """Kill one process worker with SIGKILL after the first batch comes back."""
    killed: list[int] = []

    def kill_one(_result: BatchResult) -> None:
        children = multiprocessing.active_children()
        pids = [child.pid for child in children if child.pid is not None]
        if not killed and pids:
            victim = max(pids)
            os.kill(victim, signal.SIGKILL)
            killed.append(victim)

    load = workloads()[0]
    selection = tally.add(select_best_with_report(load.conformers, load.template, n_workers=workers,
                                                  exact_workers=True, on_batch=kill_one))
    return f"killed worker {killed[0] if killed else 'none (no process pool)'}; {describe(selection)}"


@contextmanager
def idle_threads() -> Iterator[list[threading.Thread]]:
    """Start idle threads until the kernel keeps refusing them; they all end when the block does."""
    release = threading.Event()
    threads: list[threading.Thread] = []
    refused = 0
    try:
        while refused < REFUSALS and len(threads) < MAX_IDLE_THREADS:
            thread = threading.Thread(target=release.wait, name="templ-stress-idle", daemon=True)
            try:
                thread.start()
            except RuntimeError:  # "can't start new thread": no headroom, for now
                refused += 1
                time.sleep(SETTLE_SECONDS)
                continue
            refused = 0
            threads.append(thread)
        yield threads
    finally:
        release.set()
        for thread in threads:
            thread.join(timeout=5)  # each returns as soon as it sees the event


def hold(seconds: float) -> None:
    """Stay put in the tight cgroup, with nothing running: every scrape reads the low headroom itself."""
    time.sleep(seconds)


def wait_for_tasks(cgroup: Path, tasks: int, timeout: float) -> int:
    """Wait until the cgroup holds at most ``tasks`` (the workers of the last pool have exited); the count.

    Pool workers exit a while after ``shutdown_pools()`` returns: 0.2 s on an idle machine, over
    a second on a loaded one, when a grant taken meanwhile finds no headroom and the pool is
    never started. The wait is bounded: after ``timeout`` the race goes on as it is.
    """
    deadline = time.monotonic() + timeout
    while (current := tasks_in(cgroup)) > tasks and time.monotonic() < deadline:
        time.sleep(SETTLE_SECONDS)
    return current


def _refused_starts(tally: Tally) -> int:
    return sum(tally.fallbacks[reason] for reason in REFUSED_STARTS)


def start_failure_race(workers: int, tally: Tally) -> str:
    """Take the grant while there is headroom, use the headroom up, then start the pool.

    The grant is taken under the shared ledger's lock from a fresh reading, so the
    headroom is eaten right after it: by an observer of the grant event, which the
    executor emits before it starts its pool, so that start fails for real. An
    exception escaping ``select_best`` here is an executor bug: it is counted in the
    summary's ``errors`` and logged, and the run goes on.
    """
    shutdown_pools()  # a live pool would be reused and need no new task
    time.sleep(EXIT_SECONDS)
    load = workloads()[1]
    with ExitStack() as stack:
        eaten: list[threading.Thread] = []

        def eat_headroom(event: object) -> None:
            if isinstance(event, (WorkersGranted, WorkersReduced)) and not eaten:
                eaten.extend(stack.enter_context(idle_threads()))

        try:
            selection = tally.add(select_best_with_report(load.conformers, load.template, n_workers=workers,
                                                          exact_workers=True, observers=(eat_headroom,)))
        except Exception as exc:  # reported, not hidden: see the docstring
            tally.errors[type(exc).__name__] += 1
            return f"{len(eaten)} idle threads used the headroom up; select_best raised {type(exc).__name__}: {exc}"
    return f"{len(eaten)} idle threads used the headroom up; {describe(selection)}"


def pids_cgroup(workers: int, tally: Tally, hierarchy: Hierarchy, hold_seconds: float) -> str:
    """Reduced grant, low headroom held for a while, then a real start failure; all in a tight cgroup."""
    shutdown_pools()  # pool threads would otherwise count against the new cgroup
    cost = worker_cost("process")
    room_for = max(1, workers // 2)
    # one task of slack: a thread of the previous scenario may still be exiting when the race's
    # grant reads the headroom, and a grant of one worker starts no pool that could fail
    headroom = RESERVE_TASKS + cost.fixed_tasks + cost.per_worker * room_for + 1
    try:
        with tight_pids_cgroup(hierarchy, headroom) as cgroup:
            baseline = tasks_in(cgroup)
            reset_thread_manager()
            load = workloads()[0]
            reduced = describe(tally.add(select_best_with_report(load.conformers, load.template, n_workers=workers,
                                                                 exact_workers=True)))
            hold(hold_seconds)
            shutdown_pools()
            race = ""
            for _attempt in range(RACE_ATTEMPTS):
                wait_for_tasks(cgroup, baseline, SETTLE_TIMEOUT)
                refused = _refused_starts(tally)
                race = start_failure_race(workers, tally)
                if _refused_starts(tally) > refused:
                    break
            # the cgroup's refused forks are this process's only while it is in the cgroup: stay so that
            # scrapes read them (the race ends within a second of the refusals)
            hold(hold_seconds)
            tally.pids_refused_forks += parse_pids_events(read_bytes(str(cgroup / "pids.events"))) or 0
    finally:
        shutdown_pools()
        reset_thread_manager()
    return f"in {cgroup} (headroom {headroom}): {reduced}; held {hold_seconds:.1f} s twice; race: {race}"


def run(duration_seconds: float, workers: int, *, log: Log = print) -> dict:
    """Run rounds of the scenarios until ``duration_seconds`` have passed; return a summary.

    ``workers`` (at least 2) is what every ``select_best`` call asks for; with 4 or more the
    pids cgroup scenario ends in a real pool start failure. The summary has ``rounds``,
    ``scenarios`` (runs per scenario), ``skipped`` (scenario -> why), ``reductions`` and
    ``fallbacks`` (counts by reason), ``errors`` (exceptions that escaped ``select_best`` in
    the start-failure race, by type: executor bugs), ``conformers_scored`` and ``pids_refused_forks``
    (forks the tight cgroups refused, the kernel's count).
    """
    if workers < 2:
        raise ValueError(f"stress needs at least 2 workers to have pools to cut, got {workers}")
    started = time.monotonic()
    deadline = started + duration_seconds
    tally = Tally()
    log(f"stress: {duration_seconds:g} s, {workers} workers; preparing "
        f"{', '.join(EXAMPLES)} ({CONFORMERS} conformers each)")
    workloads()
    try:
        hierarchy: Hierarchy | None = find_hierarchy()
    except CgroupUnavailable as exc:
        hierarchy = None
        tally.skipped["pids_cgroup"] = str(exc)
        log(f"pids_cgroup scenario skipped: {exc}")
    while time.monotonic() < deadline:
        tally.rounds += 1
        for scenario in SCENARIOS:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if scenario == "normal":
                outcome = normal(workers, tally)
            elif scenario == "killed_worker":
                outcome = killed_worker(workers, tally)
            elif hierarchy is None:
                continue
            else:
                try:
                    outcome = pids_cgroup(workers, tally, hierarchy, min(CGROUP_HOLD_SECONDS, max(1.0, remaining)))
                except CgroupUnavailable as exc:
                    hierarchy = None
                    tally.skipped["pids_cgroup"] = str(exc)
                    log(f"pids_cgroup scenario skipped: {exc}")
                    continue
            tally.scenarios[scenario] += 1
            log(f"round {tally.rounds} {scenario}: {outcome}")
    summary = tally.summary(time.monotonic() - started)
    log(f"stress done: {summary}")
    return summary
