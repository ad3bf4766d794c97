"""Starting ``templ``: the parent's BLAS and OpenMP pools are limited before numpy is imported, by the entry
points only; importing the CLI as a library changes nothing in the environment.

Each case runs a fresh interpreter with none of the pool variables set. An import hook
records the variables at the moment numpy is first imported (numpy's OpenBLAS reads
them then, and only then).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from templ_runs import templ_env

from templ_pipeline.parent_threads import PARENT_POOL_VARIABLES

pytestmark = pytest.mark.fast

PROBE = textwrap.dedent('''
    import json, os, sys

    seen = {}

    class NumpyWatch:
        """Records the pool variables when numpy is first looked for; finds nothing itself."""

        def find_spec(self, name, path=None, target=None):
            if name == "numpy" and not seen:
                seen.update({key: os.environ.get(key) for key in VARIABLES})
            return None

    sys.meta_path.insert(0, NumpyWatch())
    start = sys.argv[1]
    sys.argv = ["templ", "--version"]
    try:
        if start == "script":
            from templ_pipeline.entry import main
            main()
        elif start == "module":
            import runpy
            runpy.run_module("templ_pipeline.cli", run_name="__main__", alter_sys=True)
        else:
            import templ_pipeline.cli.root
    except SystemExit:
        pass
    after = {key: os.environ.get(key) for key in VARIABLES}
    print(json.dumps({"at_numpy": seen, "after": after}))
''').replace("VARIABLES", repr(PARENT_POOL_VARIABLES))


def _probe(start: str, **extra: str) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE, start], capture_output=True, text=True, timeout=120,
                          env=templ_env(PARENT_POOL_VARIABLES, **extra))
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.parametrize("start", ["script", "module"])
def test_the_templ_script_and_python_m_set_one_pool_thread_before_numpy_is_imported(start):
    report = _probe(start)
    assert report["at_numpy"] == dict.fromkeys(PARENT_POOL_VARIABLES, "1"), "numpy was imported first, or never"


def test_importing_the_cli_as_a_library_leaves_the_environment_alone():
    report = _probe("library")
    assert report["at_numpy"], "importing the CLI did not import numpy: the probe saw nothing"
    assert report["after"] == dict.fromkeys(PARENT_POOL_VARIABLES)


def test_a_pool_variable_the_user_set_is_kept():
    assert _probe("script", OPENBLAS_NUM_THREADS="3")["at_numpy"]["OPENBLAS_NUM_THREADS"] == "3"
