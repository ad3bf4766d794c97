"""How a process worker starts: without the caller's main module, then :func:`init_worker`.

A spawned worker first sets itself up from the parent's *preparation data*, and
the stdlib's tells it to run the parent's main module again. TEMPL's workers run
package code only, so they leave it out (:func:`worker_preparation_data`): pools
are made with :class:`WorkerSpawnContext`, and a script that calls TEMPL needs
no ``if __name__ == "__main__":`` guard.

Then every worker runs :func:`init_worker`: leave SIGINT to its parent, and exit
when the parent is gone. Workers of a pool block on their call queue, and each
holds both ends of that pipe, so a parent killed without cleaning up (SIGKILL,
the OOM killer) leaves them waiting forever, holding tasks of the very budget
the thread manager shares out. ``PR_SET_PDEATHSIG`` makes the kernel signal the
worker instead. The kernel sends that signal when the *thread* that started the
worker exits, not only when the process does (prctl(2); a pool started from a
short-lived thread would otherwise lose its workers with that thread), so the
signal chosen is a harmless real-time one whose handler exits only when the
parent process really is gone: the worker has then been re-parented, and
``getppid()`` no longer names it. The handler runs between bytecodes, so at most
one batch (well under a second) delays the exit.

Workers import this module (the initializer and the process class live here), so
it uses the standard library only.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import pickle
import signal
import sys
from multiprocessing import context as mp_context, popen_spawn_posix, reduction, spawn, util
from typing import Any

MAIN_KEYS = ("init_main_from_name", "init_main_from_path")
"""The preparation data that makes a spawned child run the parent's main module again."""


def worker_preparation_data(name: str) -> dict[str, Any]:
    """What a spawned worker sets up before it runs: the stdlib's data, less the parent's main module.

    ``multiprocessing.spawn.get_preparation_data`` tells each child to run the
    parent's main module again (``init_main_from_name`` for ``python -m``,
    ``init_main_from_path`` for a script), as ``__mp_main__``, so that functions
    defined there can be unpickled. Only an ``if __name__ == "__main__":`` guard
    stops that from running the whole script, and most scripts have none:
    measured here, a script calling ``select_best(..., n_workers=2)`` at top
    level ran three times, its output printed three times: once in the parent,
    and once in each worker before it served a batch (the worker's own
    ``select_best`` fell back to sequential, since a process still bootstrapping
    may not start processes). Even with the guard, the module-level imports run
    again: for the ``templ`` CLI (the launcher script imports it) those are
    typer, rich, structlog, prometheus_client and the OpenTelemetry SDK, which
    take an idle worker from 142 modules to 668 and cost 0.4-0.6 s on 2 cores.

    Nothing a TEMPL worker runs is defined in ``__main__`` (tasks are
    ``templ_pipeline.core.batch.align_batch`` and
    ``templ_pipeline.campaign.worker.serve``, the initializer is
    :func:`init_worker`), so every worker skips it. The path entries, working
    directory and ``sys.argv`` are still the parent's, so modules next to the
    script import as before. What is defined in ``__main__`` cannot run on a
    worker, and is refused in the parent by name (:class:`MainModuleReference`)
    where TEMPL pickles it: the process object (a campaign worker's target and
    arguments, a pool worker's initializer) and a pool's task function
    (:func:`refuse_main_references`). Anything else of ``__main__`` that reaches a
    pool's queue (a task argument of a class defined there) ends the worker that
    unpickles it: measured, ``AttributeError: Can't get attribute 'f' on <module
    '__main__' (built-in)>`` on the worker's stderr and ``BrokenProcessPool`` in
    the parent at once, which the fallback ladder handles; nothing waits.
    """
    data = spawn.get_preparation_data(name)
    for key in MAIN_KEYS:
        data.pop(key, None)
    return data


class MainModuleReference(pickle.PicklingError):
    """Something sent to a TEMPL worker is defined in ``__main__``, which the worker does not import."""

    def __init__(self, qualname: str) -> None:
        super().__init__(
            f"{qualname} is defined in the main module (__main__), which TEMPL's worker processes do not "
            "import (so that scripts need no `if __name__ == \"__main__\":` guard); "
            "define it in an importable module instead")
        self.qualname = qualname


class MainPickler(reduction.ForkingPickler):
    """multiprocessing's pickler, refusing functions and classes of ``__main__`` (:class:`MainModuleReference`).

    Pickle stores them by reference (``__main__.name``); a worker without the
    parent's main module could not resolve the reference, and its unpickling
    error would surface only as a worker that died. Refused here, the error is
    raised in the caller's thread, naming what to move. ``reducer_override`` sees
    every object except ints, floats, strings, bytes and the built-in containers,
    so the check costs one Python call per other object pickled.
    """

    def reducer_override(self, obj: Any) -> Any:
        named = isinstance(obj, type) or (callable(obj) and hasattr(obj, "__qualname__"))
        if named and getattr(obj, "__module__", None) == "__main__":
            raise MainModuleReference(f"__main__.{obj.__qualname__}")
        return NotImplemented


class _NullSink:
    def write(self, data: bytes) -> int:
        return len(data)


def refuse_main_references(obj: object) -> None:
    """Raise :class:`MainModuleReference` when pickling ``obj`` would need the caller's ``__main__``.

    For what goes to workers through a queue, which the pool pickles with the
    stdlib's pickler (the process pools' task function): pickling it once more
    costs microseconds, since functions and classes pickle by name.
    """
    MainPickler(_NullSink(), pickle.HIGHEST_PROTOCOL).dump(obj)


class _WorkerPopen(popen_spawn_posix.Popen):
    """The stdlib spawn ``Popen`` with :func:`worker_preparation_data` and :class:`MainPickler` for the child."""

    _fds: list[int]  # the stdlib's, undeclared in its stubs

    def _launch(self, process_obj: multiprocessing.process.BaseProcess) -> None:
        # popen_spawn_posix.Popen._launch (unchanged from Python 3.9 to 3.13) with two
        # differences: the preparation data, and the pickler that refuses __main__ references.
        # The stdlib offers no per-process hook for either.
        from multiprocessing import resource_tracker

        tracker_fd = resource_tracker.getfd()
        self._fds.append(tracker_fd)  # type: ignore[arg-type]  # an int on POSIX
        prep_data = worker_preparation_data(process_obj.name)
        fp = io.BytesIO()
        mp_context.set_spawning_popen(self)
        try:
            mp_context.reduction.dump(prep_data, fp)  # type: ignore[attr-defined]  # the reducer in force
            MainPickler(fp).dump(process_obj)
        finally:
            mp_context.set_spawning_popen(None)
        parent_r = child_w = child_r = parent_w = None
        try:
            parent_r, child_w = os.pipe()
            child_r, parent_w = os.pipe()
            cmd = spawn.get_command_line(tracker_fd=tracker_fd, pipe_handle=child_r)
            self._fds.extend([child_r, child_w])
            self.pid = util.spawnv_passfds(spawn.get_executable(), cmd, self._fds)  # type: ignore[arg-type]  # str, as the stdlib passes
            self.sentinel = parent_r
            with open(parent_w, "wb", closefd=False) as f:
                f.write(fp.getbuffer())
        finally:
            opened = [fd for fd in (parent_r, parent_w) if fd is not None]
            self.finalizer = util.Finalize(self, util.close_fds, opened)  # type: ignore[attr-defined]  # not in its stubs
            for fd in (child_r, child_w):
                if fd is not None:
                    os.close(fd)


class _WorkerProcess(mp_context.SpawnProcess):
    """A spawn process started by :class:`_WorkerPopen`.

    The child unpickles its process object, so it imports the module of this
    class: here, one every worker imports anyway (a class in ``pools`` would put
    the pool registry in every worker).
    """

    @staticmethod
    def _Popen(process_obj: multiprocessing.process.BaseProcess) -> _WorkerPopen:  # the name the stdlib calls
        return _WorkerPopen(process_obj)


class WorkerSpawnContext(mp_context.SpawnContext):
    """Spawn, with workers that do not run the caller's main module again (:func:`worker_preparation_data`)."""

    Process = _WorkerProcess


PR_SET_PDEATHSIG = 1
EXIT_PARENT_GONE = 70  # EX_SOFTWARE: the worker ended itself, its parent had died

_parent_pid = 0


def parent_death_signal() -> int:
    """The signal a worker receives when the thread that started it exits."""
    return signal.SIGRTMIN + 2


def _exit_if_orphaned(signum: int = 0, frame: object = None) -> None:
    if os.getppid() != _parent_pid:
        os._exit(EXIT_PARENT_GONE)


def _started_by(parent_pid: int) -> int:
    """The process whose end orphans this worker: ``parent_pid``, or the fork server it started.

    A forkserver worker (``TEMPL_MP_START_METHOD=forkserver``) is the child of the pool owner's fork server,
    which ends when its owner does (:mod:`templ_pipeline.core.forkserver_guard`); taken for an orphan, every
    such worker ended itself at start and no pool ever came up.
    """
    parent = os.getppid()
    if parent == parent_pid:
        return parent_pid
    try:
        with open(f"/proc/{parent}/stat") as handle:
            stat = handle.read()
    except OSError:  # the parent is gone already, or no /proc (then nothing checks for orphans)
        return parent_pid
    grandparent = int(stat.rsplit(")", 1)[1].split()[1])  # the field after the name, which may hold spaces
    return parent if grandparent == parent_pid else parent_pid


def _arm_parent_death_signal() -> bool:
    """Ask the kernel for :func:`parent_death_signal` when the parent thread exits (Linux only)."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes  # only here: the worker needs ctypes for this one call

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(PR_SET_PDEATHSIG, parent_death_signal(), 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def init_worker(parent_pid: int) -> None:
    """Pool initializer: SIGINT is the parent's to handle; exit promptly once ``parent_pid`` is gone.

    A terminal's Ctrl-C reaches the whole process group; the parent decides what
    to do and ends its workers, so a worker does not die half-way with a traceback.
    SIGINT is blocked as well as ignored: RDKit installs its own SIGINT handler for
    the length of an embedding or MCS search (over the ignored disposition) and, on
    Ctrl-C, returns no conformer as if embedding had failed. A blocked signal reaches
    no handler; the threads the worker starts later inherit the block.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    exit_with_parent(_started_by(parent_pid))


def exit_with_parent(parent_pid: int) -> None:
    """End this process (exit 70) once ``parent_pid``, its parent process, is gone (Linux; nothing elsewhere)."""
    global _parent_pid
    _parent_pid = parent_pid
    signal.signal(parent_death_signal(), _exit_if_orphaned)
    if _arm_parent_death_signal():
        _exit_if_orphaned()  # the parent may have died before the signal was armed
