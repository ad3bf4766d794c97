"""``templ doctor``: which limits can refuse a new thread here, and how many workers fit.

Run as ``templ doctor [--json] [--scheduler ADDRESS]`` or ``python -m templ_pipeline.doctor``.
With a Dask scheduler, each worker reports its own machine's binding limit and headroom.
Exit code 1 when the native-thread probe fails (under a seccomp profile that refuses
threads the binding is ``seccomp`` and the status ``degraded``), the binding limit (here
or on a Dask worker) is critical, or the scheduler cannot be reached.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import sys
from dataclasses import asdict

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from templ_pipeline.core.limits.cgroup import peak_path, read_pids_peak
from templ_pipeline.core.limits.classify import classify_errno, exhausted_limit
from templ_pipeline.core.limits.collect import fmt_bytes
from templ_pipeline.core.limits.cpu import read_cpu_budget
from templ_pipeline.core.limits.model import (
    LIMIT_NAMES,
    PID_MAX,
    PIDS_CGROUP,
    RLIMIT_NPROC,
    STACK_MEMORY,
    TASK_LIMITS,
    THREADS_MAX,
    Snapshot,
    WorkerGrant,
)
from templ_pipeline.core.limits.worker_cost import worker_blas_threads, worker_cost
from templ_pipeline.core.thread_manager import (
    ThreadResourceManager,
    get_thread_manager,
    probe_native_thread,
    thread_status,
)

RECOMMENDATIONS = (("scoring", "process"), ("conformers", "thread"))
LARGE_STACK = 64 << 20
"""Thread stacks from this size up get a warning (glibc's usual default is 8 MiB)."""

_FIXES = {
    PIDS_CGROUP: "ask for a larger pids limit (docker --pids-limit, systemd TasksMax, "
                 "Kubernetes podPidsLimit)",
    RLIMIT_NPROC: "raise `ulimit -u` (limits.conf nproc)",
    THREADS_MAX: "raise sysctl kernel.threads-max",
    PID_MAX: "raise sysctl kernel.pid_max",
    STACK_MEMORY: "lower `ulimit -s` or raise `ulimit -v`/the memory limit",
}


def _finite(value: int) -> int | None:
    return None if value == resource.RLIM_INFINITY else value


def _privilege_warnings(snap: Snapshot) -> list[str]:
    nproc = snap.limit(RLIMIT_NPROC)
    if nproc.enforced is not False or nproc.limit is None:
        return []
    who = "running as root (uid 0)" if snap.uid == 0 else "CAP_SYS_RESOURCE/CAP_SYS_ADMIN"
    return [f"{who}, so RLIMIT_NPROC ({nproc.limit}) is not enforced here; "
            "the same job under a normal user would be limited by it"]


def _cut_warnings(snap: Snapshot, grants: dict[str, WorkerGrant]) -> list[str]:
    """One warning per limit that cut a recommendation below the CPU count."""
    cuts: dict[str, list[str]] = {}
    for task_type, grant in grants.items():
        if grant.reason in LIMIT_NAMES:  # seccomp is said by the probe's warning
            cuts.setdefault(grant.reason, []).append(
                f"{task_type} {grant.granted}/{grant.requested}")
    warnings = []
    for name, tasks in cuts.items():
        lim = snap.limit(name)
        if name == PIDS_CGROUP:
            what = f"pids cgroup is set to {lim.limit} tasks ({lim.used} in use)"
        else:
            what = f"{name} leaves {lim.headroom} of headroom"
        warnings.append(f"{what}: workers cut to {', '.join(tasks)}; {_FIXES[name]}")
    if any(name in TASK_LIMITS for name in cuts) and worker_blas_threads() > 1:
        warnings.append(f"each process worker also runs {worker_blas_threads() - 1} OpenBLAS threads "
                        "(OPENBLAS_NUM_THREADS is set above 1); with 1 a worker costs 1 task")
    return warnings


def _stack_warnings(snap: Snapshot) -> list[str]:
    """Very large stacks, or an unlimited/large stack limit under an RLIMIT_AS cap."""
    stack = snap.stack
    rlimit_as, rlimit_stack = _finite(stack.rlimit_as), _finite(stack.rlimit_stack)
    few_fit = stack.as_fit is not None and stack.as_fit < (os.cpu_count() or 1)
    capped = rlimit_as is not None and (rlimit_stack is None or few_fit)
    if stack.stack_bytes < LARGE_STACK and not capped:
        return []
    limit = "unlimited" if rlimit_stack is None else fmt_bytes(rlimit_stack)
    cap = f"under an RLIMIT_AS cap of {fmt_bytes(rlimit_as)}" if rlimit_as else "without RLIMIT_AS"
    headroom = snap.limit(STACK_MEMORY).headroom
    fit = f"so {headroom} more threads fit" if headroom is not None else "which binds once memory is limited"
    return [f"stack limit {limit} {cap}: each thread reserves {fmt_bytes(stack.stack_bytes)}, {fit}; "
            "`ulimit -s 8192` is the usual setting"]


def _pids_evidence(snap: Snapshot) -> dict:
    """What the pids controller itself recorded: forks it refused (pids.events ``max``,
    summed over this process's pids levels) and the most tasks the binding level held
    (its pids.peak). Both outlast the moment of pressure; None where there is no such file."""
    source = snap.limit(PIDS_CGROUP).source
    peak = read_pids_peak(source)
    return {"refused_forks": snap.pids_refusals, "peak_tasks": peak,
            "peak_source": None if peak is None else peak_path(source)}


def _refusal_warnings(evidence: dict) -> list[str]:
    refused = evidence["refused_forks"]
    if not refused:
        return []
    return [f"the pids cgroup has refused {refused} forks since it was created (pids.events max): threads or "
            f"processes in this cgroup failed to start, whatever the headroom shows now; {_FIXES[PIDS_CGROUP]}"]


def _warnings(snap: Snapshot, grants: dict[str, WorkerGrant], probe_errno: int,
              reserve: int) -> list[str]:
    warnings = _privilege_warnings(snap) + _refusal_warnings(_pids_evidence(snap))
    warnings += [f"{lim.name} is unknown: {lim.note} ({lim.source})"
                 for lim in snap.limits if lim.enforced is None]
    warnings += _cut_warnings(snap, grants) + _stack_warnings(snap)
    binding = snap.binding
    if binding is not None and binding.headroom is not None and binding.headroom <= reserve:
        warnings.append(f"only {binding.headroom} headroom left under {binding.name}: "
                        "new threads and processes will fail")
    if probe_errno:
        found = classify_errno(probe_errno, exhausted_limit(snap))
        warnings.append(f"a native test thread could not start ({os.strerror(probe_errno)}): "
                        f"{found.cause}: {found.detail}")
    return warnings


def _probe_process() -> dict:
    """Start and reap one child process (``fork``; no thread needed): can process workers start here?

    Under a seccomp profile that rejects only ``clone3``, processes still start (fork
    uses ``clone``) while threads do not; a process pool still cannot run, because it
    needs threads of its own in the parent, so the grants stay at 0 there.
    """
    try:
        pid = os.fork()
    except OSError as error:
        return {"ok": False, "errno": error.errno, "error": error.strerror}
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return {"ok": True, "errno": None, "error": None}


def build_report(manager: ThreadResourceManager | None = None) -> dict:
    """The doctor report as JSON-ready data (unknown values are None)."""
    manager = manager or get_thread_manager()
    snap = manager.snapshot(fresh=True)
    requested = os.cpu_count() or 1
    grants = {
        task: manager.get_safe_worker_count(requested, task, executor_kind=kind, snapshot=snap)
        for task, kind in RECOMMENDATIONS
    }
    probe_errno = probe_native_thread()  # after the snapshot: the probe thread is transient
    blocked = manager.threads_blocked()
    binding = snap.binding
    process_cost = worker_cost("process")
    return {
        # a seccomp profile that refuses every thread binds before any headroom
        "binding_limit": blocked or (binding.name if binding else None),
        "status": "degraded" if blocked else thread_status(snap, manager.reserve),
        "limits": [lim.as_dict(lim is binding) for lim in snap.limits],
        "threads": snap.threads,
        "cpus": asdict(read_cpu_budget()),
        "pids_cgroup_evidence": _pids_evidence(snap),
        "requested_workers": requested,
        "recommended_workers": {task: grant.granted for task, grant in grants.items()},
        "max_workers": {
            task: manager.max_workers(task, executor_kind=kind, snapshot=snap)
            for task, kind in RECOMMENDATIONS
        },
        "grants": {
            task: {"executor_kind": kind, **asdict(grants[task])} for task, kind in RECOMMENDATIONS
        },
        "worker_cost": {"process_worker_tasks": process_cost.per_worker,
                        "process_pool_helper_tasks": process_cost.fixed_tasks,
                        "thread_worker_tasks": 1, "reserve": manager.reserve},
        "stack": {"thread_stack_bytes": snap.stack.stack_bytes,
                  "rlimit_stack": _finite(snap.stack.rlimit_stack),
                  "rlimit_as": _finite(snap.stack.rlimit_as)},
        "probe": {"ok": probe_errno == 0, "errno": probe_errno or None,
                  "error": os.strerror(probe_errno) if probe_errno else None},
        "process_probe": _probe_process(),
        "warnings": _warnings(snap, grants, probe_errno, manager.reserve),
    }


def worker_limits() -> dict:
    """Run on a Dask worker: its machine's binding limit and headroom, and the scoring workers they allow."""
    manager = get_thread_manager()
    snap = manager.snapshot(fresh=True)
    binding = snap.binding
    cpus = os.cpu_count() or 1
    grant = manager.get_safe_worker_count(cpus, "scoring", executor_kind="process", snapshot=snap)
    return {
        "host": socket.gethostname(), "pid": os.getpid(), "cpus": cpus, "threads": snap.threads,
        "binding_limit": binding.name if binding else None,
        "limit": binding.limit if binding else None,
        "headroom": binding.headroom if binding else None,
        "status": thread_status(snap, manager.reserve),
        "recommended_scoring_workers": grant.granted,
    }


def _dask_warnings(workers: list[dict]) -> list[str]:
    warnings = [] if workers else ["the dask scheduler has no workers"]
    for worker in workers:
        name = f"dask worker {worker['address']} ({worker['host']})"
        if (worker["nthreads"] or 1) > 1:
            warnings.append(f"{name} runs {worker['nthreads']} threads, but AlignMol holds the GIL so one "
                            "scores at a time: start workers with --nthreads 1 and more --nworkers")
        if worker["status"] == "critical":
            warnings.append(f"{name}: only {worker['headroom']} headroom left under {worker['binding_limit']}")
    return warnings


def add_dask_workers(report: dict, address: str) -> None:
    """Add ``dask_scheduler`` and ``dask_workers`` (None when the scheduler cannot be reached) to ``report``."""
    from templ_pipeline.core.dask_backend import DaskFailure, run_on_workers

    report["dask_scheduler"] = address
    try:
        workers = run_on_workers(address, worker_limits)
    except DaskFailure as failure:
        report["dask_workers"] = None
        report["warnings"].append(f"dask scheduler {address} unreachable: {failure.error}")
        return
    report["dask_workers"] = workers
    report["warnings"] += _dask_warnings(workers)


def _cell(value: int | None, entry: dict) -> str:
    if value is not None:
        return str(value)
    return "?" if entry["enforced"] is None else "-"


def render_table(report: dict, console: Console) -> None:
    """Print the report as rich tables."""
    title = f"Limits that can refuse a new thread ({report['threads']} OS threads here)"
    limits = Table(title=title)
    sources = Table("limit", "source / note", title="Where the numbers come from")
    for column in ("limit", "max", "used", "headroom", "binding", "enforced"):
        limits.add_column(column, no_wrap=True,
                          justify="right" if column in ("max", "used", "headroom") else "left")
    for entry in report["limits"]:
        enforced = {True: "yes", False: "no", None: "?"}[entry["enforced"]]
        limits.add_row(entry["name"], _cell(entry["limit"], entry), _cell(entry["used"], entry),
                       _cell(entry["headroom"], entry), "<- binding" if entry["binding"] else "",
                       enforced)
        note = f" ({entry['note']})" if entry["note"] else ""
        sources.add_row(entry["name"], escape(entry["source"] + note))
    console.print(limits)
    console.print(sources)
    render_pids_evidence(report, console)
    workers = Table(title=f"Recommended workers (requested: {report['requested_workers']} = CPUs)")
    for column in ("task", "executor", "recommended", "limits allow at most"):
        workers.add_column(column, no_wrap=True)
    for task, grant in report["grants"].items():
        at_most = report["max_workers"][task]
        workers.add_row(task, grant["executor_kind"], str(grant["granted"]),
                        "no limit" if at_most is None else str(at_most))
    console.print(workers)
    cpus = report["cpus"]
    console.print(f"CPUs for CPU-bound work: {cpus['cpus']} ({escape(cpus['detail'])})", highlight=False)
    for task, grant in report["grants"].items():
        console.print(f"  {task}: {escape(grant['detail'])}", highlight=False)
    if report.get("dask_workers"):
        render_dask_workers(report, console)
    probe, process = report["probe"], report["process_probe"]
    console.print("native thread probe: " + ("[green]ok[/green]" if probe["ok"]
                  else f"[red]failed: errno {probe['errno']} ({probe['error']})[/red]"))
    console.print("process probe: " + ("[green]ok[/green]" if process["ok"]
                  else f"[red]failed: errno {process['errno']} ({process['error']})[/red]"))
    if report["binding_limit"] == "seccomp":
        console.print("[red]binding: seccomp[/red] (no thread can start here; runs are sequential)")
    for warning in report["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {escape(warning)}", highlight=False)


def render_pids_evidence(report: dict, console: Console) -> None:
    """The pids controller's own counts: they keep what the headroom above has forgotten."""
    evidence = report["pids_cgroup_evidence"]
    pids = next(entry for entry in report["limits"] if entry["name"] == PIDS_CGROUP)
    table = Table("reading", "value", "from", title="What the pids controller recorded (since the cgroup was made)")
    table.columns[1].justify = "right"
    table.add_row("forks refused", _cell(evidence["refused_forks"], pids),
                  "pids.events max, summed over this process's pids levels")
    table.add_row("peak tasks", _cell(evidence["peak_tasks"], pids),
                  escape(evidence["peak_source"] or pids["note"] or f"no pids.peak next to {pids['source']}"))
    console.print(table)


def render_dask_workers(report: dict, console: Console) -> None:
    """The Dask workers' own limits, one row per worker."""
    table = Table(title=f"Dask workers of {report['dask_scheduler']} (limits on each worker's machine)")
    for column in ("worker (host, pid)", "threads", "binding limit", "headroom", "status", "scoring workers"):
        table.add_column(column, justify="right" if column in ("threads", "headroom") else "left", overflow="fold")
    for worker in report["dask_workers"]:
        table.add_row(f"{worker['address']}\n{worker['host']}, pid {worker['pid']}", str(worker["nthreads"]),
                      worker["binding_limit"] or "-", "-" if worker["headroom"] is None else str(worker["headroom"]),
                      worker["status"], f"{worker['recommended_scoring_workers']} of {worker['cpus']} CPUs")
    console.print(table)


def _healthy(report: dict) -> bool:
    workers = report.get("dask_workers", [])
    return (report["probe"]["ok"] and report["status"] not in ("critical", "degraded") and workers is not None
            and all(worker["status"] != "critical" for worker in workers))


def run(json_output: bool, scheduler: str | None = None) -> int:
    """Print the report (JSON or tables); 1 when the probe failed, a status is critical
    or the scheduler cannot be reached."""
    report = build_report()
    if scheduler:
        add_dask_workers(report, scheduler)
    if json_output:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    else:
        render_table(report, Console())
    return 0 if _healthy(report) else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="templ doctor", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--scheduler", help="also report the limits of every worker of this Dask scheduler")
    arguments = parser.parse_args()
    sys.exit(run(arguments.json, arguments.scheduler))
