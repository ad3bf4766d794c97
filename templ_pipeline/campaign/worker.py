"""The main function of a campaign worker process: take a query, run it, send the outcome back.

A worker talks to its parent over one duplex pipe of its own. The protocol is
three messages: the worker sends ``READY`` once its imports are done and its
templates are prepared (a spare worker, started before the campaign knew its
settings, :mod:`~templ_pipeline.campaign.spares`, first receives them as a
message of their own), then, for every ``QueryTask`` it receives, in order, one
:class:`Finished` (the ``QueryOutcome`` and the worker's resident memory after it,
which the pool's :mod:`~templ_pipeline.campaign.recycling` policy reads); the
parent may send the next queries before one is done, and they wait in the pipe.
``None`` from the parent means stop, once the queries before it are done. One pipe per worker
(rather than a shared queue) is what lets the parent know which query each
worker holds, since when, and end exactly that worker when the query runs over
its time limit. It also starts no thread in either process: the pool needs no
feeder or manager thread that a full thread budget could refuse.

Workers start like the pools' workers: without the caller's main module
(:func:`~templ_pipeline.core.worker_init.worker_preparation_data`: a script that
runs a campaign needs no ``__main__`` guard), then
:func:`~templ_pipeline.core.worker_init.init_worker`: SIGINT is the parent's, and
a worker exits once its parent is gone.
"""

from __future__ import annotations

import os
import sys
import time
from multiprocessing.connection import Connection
from typing import Any, NamedTuple, NoReturn

from templ_pipeline.campaign.recycling import resident_bytes
from templ_pipeline.campaign.task import CampaignSettings, QueryOutcome, QueryRunner
from templ_pipeline.core.worker_init import init_worker

READY = "ready"

POLL_SECONDS = 1.0
"""How long a worker waits for its next query before it checks that its parent is still there."""


class Finished(NamedTuple):
    """One query's outcome, the bytes its worker holds resident once it is done, and when it was done
    (``time.monotonic()``: the system's clock, so the parent knows when the query waiting behind it started)."""

    outcome: QueryOutcome
    resident: int
    ended: float


def serve(connection: Connection, parent_pid: int, settings: CampaignSettings | None = None) -> NoReturn:
    """Run queries from ``connection`` until told to stop or the parent is gone, then end the process.

    Without ``settings`` (a spare), the first message is the settings.
    """
    init_worker(parent_pid)
    if settings is None:
        settings = _next_message(connection, parent_pid)
        if settings is None:
            _leave()
    runner = QueryRunner(settings)
    connection.send((READY, os.getpid()))
    while (task := _next_message(connection, parent_pid)) is not None:
        outcome = runner.run(task)
        try:
            connection.send(Finished(outcome, resident_bytes(), time.monotonic()))
        except (BrokenPipeError, OSError):
            break
    _leave()


def _leave() -> NoReturn:
    """End this worker process now, without the interpreter's teardown.

    Its outcomes are sent (``send`` returns once the pipe has them), it writes no
    file, has no child and configures no logging, so the teardown of RDKit's and
    numpy's modules would only delay the exit, 40 ms here, and the parent waits for
    the exit at the end of every campaign and whenever it recycles a worker.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed, or its reader is gone
            pass
    os._exit(0)


def _next_message(connection: Connection, parent_pid: int) -> Any:
    """The parent's next message; None when it says stop, closed its end or is gone."""
    while True:
        try:
            if connection.poll(POLL_SECONDS):
                return connection.recv()
        except (EOFError, OSError):  # the parent closed its end, or is gone
            return None
        if os.getppid() != parent_pid:
            return None
