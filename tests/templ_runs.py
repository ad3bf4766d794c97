"""Running ``templ`` as a user does: a real subprocess, with the environment the tests give it.

``TEMPL`` is the one command line every test starts ``templ`` with (``python -m templ_pipeline.cli``: the
interpreter of this virtualenv, so no ``PATH`` lookup); ``TEMPL_SCRIPT`` is the console script, for the tests
that start ``templ`` as a batch scheduler or a shell would. ``templ_env`` is the one place an environment for a
child process is built from this one.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterable
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

TEMPL = [sys.executable, "-m", "templ_pipeline.cli"]
TEMPL_SCRIPT = Path(sys.executable).with_name("templ")
TESTS = Path(__file__).resolve().parent
#: The variables that size native thread pools (BLAS, OpenMP...): a run without them limits its own.
THREAD_VARIABLES = (
    "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
    "BLIS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_THREAD_LIMIT", "RAYON_NUM_THREADS",
)


def templ_env(without: Iterable[str] = (), *, tests_importable: bool = False, **extra: str) -> dict[str, str]:
    """This process's environment less the variables ``without`` names (shell patterns: ``"OTEL_*"``), plus ``extra``.

    ``tests_importable`` puts tests/ first on ``PYTHONPATH``, for children that import the tests' helper modules
    (the probes a worker runs, a seccomp launcher).
    """
    patterns = tuple(without)
    env = {key: value for key, value in os.environ.items()
           if not any(fnmatchcase(key, pattern) for pattern in patterns)}
    if tests_importable:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(TESTS), env.get("PYTHONPATH"))))
    return {**env, **extra}


def run_templ(*args: object, env: dict[str, str] | None = None, timeout: float = 300, cwd: Path | None = None,
              **popen: Any) -> subprocess.CompletedProcess[str]:
    """``templ ARGS`` to its end, its output captured as text, stdin closed (a run that prompts fails, not hangs).

    ``popen`` goes to ``subprocess.run`` (``umask``, ``input`` instead of the closed stdin...).
    """
    if "input" not in popen:
        popen.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.run([*TEMPL, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=cwd, **popen)
