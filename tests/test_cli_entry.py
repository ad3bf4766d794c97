"""Starting ``templ``: the parent's BLAS and OpenMP pools are limited before numpy is imported, by the entry
points only; importing the CLI as a library changes nothing in the environment.

Each case runs a fresh interpreter with none of the pool variables set. An import hook
records the variables at the moment numpy is first imported (numpy's OpenBLAS reads
them then, and only then).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap

import pytest
from templ_runs import templ_env

from templ_pipeline.parent_threads import PARENT_POOL_VARIABLES

pytestmark = pytest.mark.fast

PROBE = textwrap.dedent('''
    import atexit, json, os, sys

    seen = {}

    class NumpyWatch:
        """Records the pool variables when numpy is first looked for; finds nothing itself."""

        def find_spec(self, name, path=None, target=None):
            if name == "numpy" and not seen:
                seen.update({key: os.environ.get(key) for key in VARIABLES})
            return None

    def report():  # at exit: ``python -m templ_pipeline.cli`` leaves without returning here
        after = {key: os.environ.get(key) for key in VARIABLES}
        print(json.dumps({"at_numpy": seen, "after": after}))

    atexit.register(report)
    sys.meta_path.insert(0, NumpyWatch())
    start = sys.argv[1]
    sys.argv = ["templ", "--help"]  # builds every command: numpy is imported
    try:
        if start == "script":
            from templ_pipeline.entry import main
            main()
        elif start == "module":
            import runpy
            runpy.run_module("templ_pipeline.cli", run_name="__main__", alter_sys=True)
        else:
            from templ_pipeline.cli import app  # noqa: F401  every command's module
    except SystemExit:
        pass
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


def _telemetry(root, leave: bool, template, queries) -> dict:
    """A small campaign's log events, span names and metric series (ids left out), ``python -m templ_pipeline.cli``
    (``leave``: no interpreter teardown) or ``entry.main`` under ``sys.exit`` (the interpreter's whole exit)."""
    start = ["-m", "templ_pipeline.cli"] if leave else ["-c", "import sys; from templ_pipeline.entry import main; "
                                                               "sys.argv[0] = 'templ'; sys.exit(main())"]
    out = root / "out"
    done = subprocess.run([sys.executable, *start, "screen", "-t", template, "-q", queries, "-o", out, "-n", "6",
                           "-w", "2", "--no-metrics-server", "--log-file", root / "log.jsonl", "--log-level", "debug",
                           "--traces-file", root / "traces.jsonl", "--metrics-textfile", root / "metrics.prom"],
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    spans = sorted(span["name"] for line in (root / "traces.jsonl").read_text().splitlines()
                   for resource in json.loads(line)["resourceSpans"] for scope in resource["scopeSpans"]
                   for span in scope["spans"])
    series = sorted(re.sub(r'(job_id|run_id)="[^"]*"', "", line.rsplit(" ", 1)[0])
                    for line in (root / "metrics.prom").read_text().splitlines() if not line.startswith("#"))
    events = [re.sub(r"\d+", "N", json.loads(line)["event"]) for line in (root / "log.jsonl").read_text().splitlines()]
    return {"events": sorted(events), "last": events[-1],
            "spans": spans, "series": series, "scores": (out / "scores.csv").read_text().count("\n"),
            "stdout": done.stdout.count("\n"), "poses": (out / "poses.sdf").read_text().count("$$$$")}


@pytest.mark.slow
def test_python_m_leaves_without_teardown_yet_writes_every_log_line_span_and_metric(template_sdf, tmp_path):
    queries = tmp_path / "queries.smi"
    queries.write_text("CC(=O)Oc1ccccc1C(=O)O aspirin\nCC(C)Cc1ccc(cc1)C(C)C(=O)O ibuprofen\n")
    (tmp_path / "leave").mkdir()
    (tmp_path / "exit").mkdir()
    left = _telemetry(tmp_path / "leave", True, template_sdf, queries)
    assert left["spans"] and left["series"] and left["last"] == "campaign.done"
    assert left == _telemetry(tmp_path / "exit", False, template_sdf, queries)


LOADED = textwrap.dedent('''
    import atexit, json, sys

    atexit.register(lambda: print(json.dumps({name: name in sys.modules for name in NAMES}), file=sys.stderr))
    sys.argv = ["templ", *sys.argv[1:]]
    from templ_pipeline.entry import main

    sys.exit(main())
''').replace("NAMES", repr(("rdkit", "opentelemetry.sdk")))


def _loaded(*args: object) -> dict[str, bool]:
    done = subprocess.run([sys.executable, "-c", LOADED, *map(str, args)], capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stderr.splitlines()[-1])


def test_doctor_dashboards_export_and_version_import_neither_rdkit_nor_the_opentelemetry_sdk(tmp_path):
    assert _loaded("doctor", "--json") == {"rdkit": False, "opentelemetry.sdk": False}
    assert _loaded("--version") == {"rdkit": False, "opentelemetry.sdk": False}  # no command is built for it
    assert _loaded("dashboards", "export", tmp_path / "deployed") == {"rdkit": False, "opentelemetry.sdk": False}


def test_help_lists_every_command_without_the_opentelemetry_sdk():
    assert _loaded("--help")["opentelemetry.sdk"] is False
