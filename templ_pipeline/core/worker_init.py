"""How a process worker starts: without the ``templ`` CLI as its main module, then :func:`init_worker`.

A spawned worker first sets itself up from the parent's *preparation data*, and
the stdlib's tells it to run the parent's main module again; for the CLI that
is the whole command line stack (:func:`worker_preparation_data`), so pools are
made with :class:`WorkerSpawnContext`, whose workers leave the CLI out.

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
import signal
import sys
from multiprocessing import context as mp_context
from multiprocessing import popen_spawn_posix, spawn, util
from types import ModuleType

CLI_MODULE = "templ_pipeline.cli"


def main_is_cli(main: ModuleType) -> bool:
    """True when ``main`` (a process's ``__main__``) is the ``templ`` command line.

    That is ``python -m templ_pipeline.cli`` (the main module's spec names the CLI)
    or the ``templ`` console script, a launcher whose ``main`` is the CLI's.
    """
    if getattr(main.__spec__, "name", None) == CLI_MODULE:
        return True
    cli_main = getattr(sys.modules.get(CLI_MODULE), "main", None)
    return cli_main is not None and getattr(main, "main", None) is cli_main


def worker_preparation_data(name: str) -> dict:
    """What a spawned worker sets up before it runs: the stdlib's data, less a CLI main module.

    ``multiprocessing.spawn.get_preparation_data`` tells each child to run the
    parent's main module again (``init_main_from_name`` for ``python -m``,
    ``init_main_from_path`` for a script such as the ``templ`` launcher, which
    imports the CLI), so that functions defined there can be unpickled. An
    ``if __name__ == "__main__":`` guard stops only the main block, not the
    module-level imports. For the CLI those are typer, rich, structlog,
    prometheus_client and the OpenTelemetry SDK: they take an idle worker from
    142 modules to 668, and importing the CLI takes 0.4-0.6 s on 2 cores even
    with RDKit and numpy already loaded. Nothing a TEMPL worker runs is defined
    in the CLI (tasks are ``templ_pipeline.core.batch.score_batch``, the
    initializer is :func:`init_worker`), so its workers skip it. Any other main
    module is run again as multiprocessing always does: a script's own
    functions may be needed.
    """
    data = spawn.get_preparation_data(name)
    if main_is_cli(sys.modules["__main__"]):
        data.pop("init_main_from_name", None)
        data.pop("init_main_from_path", None)
    return data


class _WorkerPopen(popen_spawn_posix.Popen):
    """The stdlib spawn ``Popen`` with :func:`worker_preparation_data` for the child."""

    def _launch(self, process_obj: multiprocessing.process.BaseProcess) -> None:
        # popen_spawn_posix.Popen._launch (unchanged from Python 3.9 to 3.13) with one
        # difference: the preparation data. The stdlib offers no per-process hook for it.
        from multiprocessing import resource_tracker

        tracker_fd = resource_tracker.getfd()
        self._fds.append(tracker_fd)
        prep_data = worker_preparation_data(process_obj._name)
        fp = io.BytesIO()
        mp_context.set_spawning_popen(self)
        try:
            mp_context.reduction.dump(prep_data, fp)
            mp_context.reduction.dump(process_obj, fp)
        finally:
            mp_context.set_spawning_popen(None)
        parent_r = child_w = child_r = parent_w = None
        try:
            parent_r, child_w = os.pipe()
            child_r, parent_w = os.pipe()
            cmd = spawn.get_command_line(tracker_fd=tracker_fd, pipe_handle=child_r)
            self._fds.extend([child_r, child_w])
            self.pid = util.spawnv_passfds(spawn.get_executable(), cmd, self._fds)
            self.sentinel = parent_r
            with open(parent_w, "wb", closefd=False) as f:
                f.write(fp.getbuffer())
        finally:
            self.finalizer = util.Finalize(self, util.close_fds, [fd for fd in (parent_r, parent_w) if fd is not None])
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
    def _Popen(process_obj: multiprocessing.process.BaseProcess) -> _WorkerPopen:  # noqa: N802 (stdlib name)
        return _WorkerPopen(process_obj)


class WorkerSpawnContext(mp_context.SpawnContext):
    """Spawn, with workers that do not re-run the ``templ`` CLI (:func:`worker_preparation_data`)."""

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


def _arm_parent_death_signal() -> bool:
    """Ask the kernel for :func:`parent_death_signal` when the parent thread exits (Linux only)."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes  # only here: the worker needs ctypes for this one call

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, parent_death_signal(), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def init_worker(parent_pid: int) -> None:
    """Pool initializer: SIGINT is the parent's to handle; exit promptly once ``parent_pid`` is gone.

    A terminal's Ctrl-C reaches the whole process group; the parent decides what
    to do and ends its workers, so a worker does not die half-way with a traceback.
    """
    global _parent_pid
    _parent_pid = parent_pid
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(parent_death_signal(), _exit_if_orphaned)
    if _arm_parent_death_signal():
        _exit_if_orphaned()  # the parent may have died before the signal was armed
