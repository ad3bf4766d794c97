"""Spare campaign workers: started while ``templ screen`` is still importing, adopted by the campaign's pool.

A campaign worker spends about 0.2 s importing RDKit and the query code before it
can prepare the templates, and the parent spends about 0.45 s importing the CLI
before it knows the campaign's settings. A spare does its imports while the parent
does its own: :func:`templ_pipeline.entry.main` starts spares for a ``screen``
command line (:func:`start`), each then waits for the campaign's settings as its
first message (:func:`templ_pipeline.campaign.worker.serve`). The campaign's
:class:`~templ_pipeline.campaign.pool.QueryPool` adopts as many as it was granted
(:func:`take`) and starts the rest of its workers itself; every other spare is
ended at once (:func:`end`): beyond the grant, and all of them when the campaign
runs on Dask or in the parent.

The grant stays the limits' to decide. A spare counts as a running task when the
campaign asks for its grant, so spares start only where the limits leave room
for twice as many workers: there, counting them cannot cut the grant.

Otherwise a spare is a pool worker: the same spawn context and environment
(:func:`~templ_pipeline.core.pools.pool_context`,
:func:`~templ_pipeline.core.pools.worker_environment`), SIGINT left to the parent
from its first statement (:func:`~templ_pipeline.core.worker_init.init_worker`,
before its heavy imports), and an exit once the parent closes its pipe or is gone.
A spare that cannot start is nothing: the pool's own start reports what it would.
This module imports the standard library only (spares import it first).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import NoReturn

from templ_pipeline.campaign.import_turns import ImportTurns, turns_for
from templ_pipeline.core.worker_init import init_worker

WORKER_NAME = "templ-campaign-worker"



@dataclass(eq=False, slots=True)
class Spare:
    """A started worker waiting for its settings: its process, the parent's end of its pipe, when it started."""

    process: BaseProcess
    connection: Connection
    started: float


_spares: list[Spare] = []


def start_worker(context: BaseContext, target: Callable[..., None], *args: object) -> tuple[BaseProcess, Connection]:
    """Start ``target(child_end, parent_pid, *args)`` in a campaign worker process; the process and the parent's end.

    ``OSError`` or ``RuntimeError`` when the process cannot start.
    """
    from templ_pipeline.core.pools import worker_environment

    parent_end, child_end = context.Pipe(duplex=True)
    process = context.Process(  # type: ignore[attr-defined]  # every concrete context has Process
        target=target, args=(child_end, os.getpid(), *args), name=WORKER_NAME, daemon=True)
    try:
        with worker_environment():
            process.start()
    except BaseException:
        parent_end.close()
        raise
    finally:
        child_end.close()
    return process, parent_end


def serve_spare(connection: Connection, parent_pid: int, turns: ImportTurns | None = None) -> NoReturn:
    """A spare's main function: leave SIGINT to the parent, import what a worker needs (in its turn), then serve."""
    init_worker(parent_pid)
    if turns is None:
        from templ_pipeline.campaign.worker import serve
    else:
        with turns:
            from templ_pipeline.campaign.worker import serve

    serve(connection, parent_pid)


def start(count: int) -> int:
    """Start up to ``count`` spares (no more than the CPUs, and only with room under the limits); how many started."""
    cpus = _cpus()
    count = min(count, cpus)
    if count < 1 or not _room_for(2 * count):
        return 0
    from templ_pipeline.core.pools import pool_context

    context = pool_context()
    turns = turns_for(context, count, cpus)  # the parent keeps a CPU for its own imports
    try:
        for _ in range(count):
            try:
                process, connection = start_worker(context, serve_spare, turns)
            except (OSError, RuntimeError):  # a spare is an optimisation: the pool starts its workers itself
                break
            _spares.append(Spare(process, connection, time.monotonic()))
    finally:
        if turns is not None:
            turns.close()
    return len(_spares)


def take(count: int) -> list[Spare]:
    """Up to ``count`` live spares, now the caller's; those that died are ended."""
    taken: list[Spare] = []
    while _spares and len(taken) < count:
        spare = _spares.pop(0)
        if spare.process.is_alive():
            taken.append(spare)
        else:
            _end([spare])
    return taken


def end() -> None:
    """End every spare not taken, at once."""
    spares = list(_spares)
    _spares.clear()
    _end(spares)


def waiting() -> int:
    """Spares started and not taken."""
    return len(_spares)


def _end(spares: list[Spare]) -> None:
    for spare in spares:
        if spare.process.is_alive():
            spare.process.terminate()
    for spare in spares:
        spare.process.join(1.0)
        if spare.process.is_alive():
            spare.process.kill()
            spare.process.join(1.0)
        spare.connection.close()


def _cpus() -> int:
    from templ_pipeline.core.limits.cpu import read_cpu_budget

    return read_cpu_budget().cpus or len(os.sched_getaffinity(0))


def _room_for(workers: int) -> bool:
    """Whether the limits allow ``workers`` campaign workers now (a manager that cannot say: no)."""
    try:
        from templ_pipeline.core.events import ExecutorKind, TaskType
        from templ_pipeline.core.thread_manager import get_thread_manager

        manager = get_thread_manager()
        if manager.threads_blocked() is not None:
            return False
        allowed = manager.max_workers(TaskType.SCREENING, executor_kind=ExecutorKind.PROCESS)
    except Exception:
        return False
    return allowed is None or allowed >= workers
